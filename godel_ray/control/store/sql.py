"""``SqlStore``: the ``Store`` contract written once in SQL, for every SQL backend.

Rows hold the JSON of the pydantic models, keyed by id, plus the few columns the store filters or
compares on (an agent's cluster, status and epoch; a migration's finish time; an event's type).
A backend supplies a connection: how to run one statement (``_raw``), how to bracket a transaction
(``_transaction``) and how to append an event row and learn its seq (``_insert_event``). Statements
use ``?`` placeholders; a backend with another paramstyle translates them.

Failure semantics: a write either commits before it returns or raises with nothing written; an
unreadable row is logged (table and id, never the row's contents: it may hold secrets) and skipped.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from enum import Enum
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from godel_ray.control.store.protocol import (
    EVENT_CURSOR_PREFIX,
    MIGRATION_ATTEMPT_PREFIX,
    SECONDS_PER_DAY,
    SITE_CURSOR_PREFIX,
    CheckpointRecord,
    Lease,
    Retention,
    RetentionResult,
)
from godel_ray.control.store.schema import Dialect, current_version
from godel_ray.core.views import agent_matches, status_filter
from godel_ray.errors import AgentNotFound, FailedPrecondition, InvalidArgument, LeaseLost
from godel_ray.models import (
    Agent,
    AgentStatus,
    Cluster,
    ClusterHealthState,
    FederationEvent,
    Migration,
    PlacementDecision,
)

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

_FINAL_STATUSES = tuple(s.value for s in AgentStatus if s.is_final)
LEASE_NAME = "control-plane"


def _text(value: object) -> str:
    """A plain ``str`` for a parameter (drivers may refuse str-based enums)."""
    return str(value.value) if isinstance(value, Enum) else str(value)


def _why(exc: Exception) -> str:
    """Why a row did not parse, without the row's values (they may be secrets)."""
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'row'}: {e['msg']}"
                         for e in exc.errors(include_input=False, include_url=False))
    return type(exc).__name__


class SqlStore:
    """The ``Store`` contract over a DB-API connection. Single writer; thread-safe through one lock.

    Invariants: every public write commits before it returns; a readonly store never writes;
    event seqs only rise; retention never removes idempotency keys, agents or checkpoints; once
    this store acquired the lease, each write transaction first reads the lease row (on PostgreSQL
    ``FOR SHARE``, so a takeover waits for it) and writes nothing unless the token is still ours.
    """

    dialect: Dialect
    readonly: bool
    retention: Retention

    def __init__(self, *, readonly: bool, retention: Retention | None) -> None:
        self.readonly = readonly
        self.retention = retention or Retention()
        self._lock = threading.Lock()
        self._appended_since_retention = 0
        self._fence: tuple[str, int] | None = None  # (holder, token) once this store acquired the lease

    # --- what a backend supplies ------------------------------------------------------------------

    def _raw(self, sql: str, args: Sequence[object] = ()) -> Any:
        """Run one statement on the connection (the caller holds the lock); a DB-API cursor."""
        raise NotImplementedError

    def _transaction(self) -> AbstractContextManager[None]:
        """Begin; commit on exit, roll back on an exception (the caller holds the lock)."""
        raise NotImplementedError

    def _insert_event(self, agent_id: str, type_: str, body: str) -> int:
        """Insert one event row; its new seq (inside a transaction, lock held)."""
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _where(self) -> str:
        """How to name this store in a message (no credentials)."""
        raise NotImplementedError

    # --- plumbing -------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._close()

    def _check_writable(self) -> None:
        if self.readonly:
            raise FailedPrecondition(f"the state store at {self._where()} is open readonly: "
                                     "only the balancer writes it")

    def _rows(self, sql: str, args: Iterable[object] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._raw(sql, tuple(args)).fetchall())

    def _write(self, sql: str, args: Iterable[object] = ()) -> int:
        """One statement in its own (fenced) transaction; the number of rows it changed."""
        with self._tx():
            return int(self._raw(sql, tuple(args)).rowcount)

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """Several statements, atomically (use ``self._raw`` inside), fenced by the lease if held."""
        self._check_writable()
        with self._lock, self._transaction():
            self._check_fence()
            yield

    def _check_fence(self) -> None:
        """Inside a write transaction: raise ``LeaseLost`` unless the lease still carries our token."""
        if self._fence is None:
            return
        holder, token = self._fence
        rows = self._raw(f"SELECT holder, token FROM lease WHERE name = ?{self.dialect.share_lock}",
                         (LEASE_NAME,)).fetchall()
        if rows and (str(rows[0][0]), int(rows[0][1])) == (holder, token):
            return
        now = f"{rows[0][0]!r} with token {rows[0][1]}" if rows else "nobody"
        raise LeaseLost(f"{holder!r} no longer holds the control-plane lease (its token {token}; now {now}): "
                        "it was deposed, and writes nothing", holder=holder, token=token)

    def _decode(self, model: type[M], table: str, key: object, body: object) -> M | None:
        try:
            return model.model_validate_json(str(body))
        except (ValidationError, ValueError) as exc:
            log.warning("state store: skipping unreadable %s row %r: %s", table, key, _why(exc))
            return None

    def _decode_all(self, model: type[M], table: str, rows: Iterable[tuple[Any, ...]]) -> list[M]:
        """Rows of (key, json): the readable ones, in order."""
        out = [self._decode(model, table, key, body) for key, body in rows]
        return [m for m in out if m is not None]

    def schema_version(self) -> int:
        with self._lock:
            return current_version(self._raw)

    # --- clusters and health ----------------------------------------------------------------------

    def put_cluster(self, cluster: Cluster) -> None:
        self._write("INSERT INTO clusters (id, json) VALUES (?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET json = excluded.json", (cluster.id, cluster.model_dump_json()))

    def delete_cluster(self, cluster_id: str) -> None:
        with self._tx():
            self._raw("DELETE FROM clusters WHERE id = ?", (cluster_id,))
            self._raw("DELETE FROM health WHERE cluster_id = ?", (cluster_id,))

    def cluster(self, cluster_id: str) -> Cluster | None:
        rows = self._rows("SELECT id, json FROM clusters WHERE id = ?", (cluster_id,))
        return self._decode(Cluster, "clusters", *rows[0]) if rows else None

    def clusters(self) -> list[Cluster]:
        return self._decode_all(Cluster, "clusters", self._rows("SELECT id, json FROM clusters ORDER BY id"))

    def put_health(self, state: ClusterHealthState) -> None:
        self._write("INSERT INTO health (cluster_id, json) VALUES (?, ?) "
                    "ON CONFLICT (cluster_id) DO UPDATE SET json = excluded.json",
                    (state.cluster_id, state.model_dump_json()))

    def health(self, cluster_id: str) -> ClusterHealthState | None:
        rows = self._rows("SELECT cluster_id, json FROM health WHERE cluster_id = ?", (cluster_id,))
        return self._decode(ClusterHealthState, "health", *rows[0]) if rows else None

    def all_health(self) -> list[ClusterHealthState]:
        return self._decode_all(ClusterHealthState, "health",
                                self._rows("SELECT cluster_id, json FROM health ORDER BY cluster_id"))

    # --- agents ---------------------------------------------------------------------------------

    _PUT_AGENT = ("INSERT INTO agents (id, cluster_id, status, epoch, json) VALUES (?, ?, ?, ?, ?) "
                  "ON CONFLICT (id) DO UPDATE SET cluster_id = excluded.cluster_id, status = excluded.status, "
                  "epoch = excluded.epoch, json = excluded.json")

    @staticmethod
    def _agent_args(agent: Agent) -> tuple[object, ...]:
        return (agent.id, agent.cluster_id, _text(agent.status), agent.epoch, agent.model_dump_json())

    def put_agent(self, agent: Agent) -> None:
        self._write(self._PUT_AGENT, self._agent_args(agent))

    def replace_agent(self, expected: Agent, new: Agent) -> bool:
        if new.id != expected.id:
            raise InvalidArgument(f"replace_agent: {new.id!r} cannot replace {expected.id!r}",
                                  agent_id=expected.id)
        changed = self._write(
            "UPDATE agents SET cluster_id = ?, status = ?, epoch = ?, json = ? "
            "WHERE id = ? AND cluster_id = ? AND epoch = ? AND status = ?",
            (new.cluster_id, _text(new.status), new.epoch, new.model_dump_json(),
             expected.id, expected.cluster_id, expected.epoch, _text(expected.status)))
        return changed == 1

    def agent(self, agent_id: str) -> Agent | None:
        rows = self._rows("SELECT id, json FROM agents WHERE id = ?", (agent_id,))
        return self._decode(Agent, "agents", *rows[0]) if rows else None

    def require_agent(self, agent_id: str) -> Agent:
        agent = self.agent(agent_id)
        if agent is None:
            raise AgentNotFound(f"agent {agent_id!r} is not known to the federation; see `swarmctl agent list`",
                                agent_id=agent_id)
        return agent

    def agents(self, *, cluster_id: str | None = None, status: AgentStatus | str | None = None,
               labels: dict[str, str] | None = None, model: str | None = None) -> list[Agent]:
        wanted = status_filter(status)
        sql, args = "SELECT id, json FROM agents WHERE 1=1", list[object]()
        if cluster_id is not None:  # narrowed by the indexed columns first; ``agent_matches`` decides
            sql += " AND cluster_id = ?"
            args.append(cluster_id)
        if wanted is not None:
            sql += " AND status = ?"
            args.append(wanted.value)
        rows = self._rows(f"{sql} ORDER BY {self.dialect.order_column}", args)
        return [a for a in self._decode_all(Agent, "agents", rows)
                if agent_matches(a, cluster_id=cluster_id, status=wanted, labels=labels, model=model)]

    def active_counts(self) -> dict[str, int]:
        marks = ",".join("?" * len(_FINAL_STATUSES))
        rows = self._rows(f"SELECT cluster_id, COUNT(*) FROM agents WHERE status NOT IN ({marks}) "
                          "GROUP BY cluster_id", _FINAL_STATUSES)
        return {str(r[0]): int(r[1]) for r in rows}

    def counts_by_status(self, cluster_id: str) -> dict[str, int]:
        rows = self._rows("SELECT status, COUNT(*) FROM agents WHERE cluster_id = ? GROUP BY status", (cluster_id,))
        return {str(r[0]): int(r[1]) for r in rows}

    # --- placement decisions and the spawn commit point -------------------------------------------

    _PUT_DECISION = ("INSERT INTO decisions (agent_id, json) VALUES (?, ?) "
                     "ON CONFLICT (agent_id) DO UPDATE SET json = excluded.json")

    def put_decision(self, decision: PlacementDecision) -> None:
        self._write(self._PUT_DECISION, (decision.agent_id, decision.model_dump_json()))

    def delete_decision(self, agent_id: str) -> None:
        self._write("DELETE FROM decisions WHERE agent_id = ?", (agent_id,))

    def decision(self, agent_id: str) -> PlacementDecision | None:
        rows = self._rows("SELECT agent_id, json FROM decisions WHERE agent_id = ?", (agent_id,))
        return self._decode(PlacementDecision, "decisions", *rows[0]) if rows else None

    def put_spawn(self, agent: Agent, decision: PlacementDecision, idempotency_key: str | None) -> None:
        with self._tx():
            self._raw(self._PUT_AGENT, self._agent_args(agent))
            self._raw(self._PUT_DECISION, (agent.id, decision.model_dump_json()))
            if idempotency_key:
                self._raw("INSERT INTO idempotency (key, agent_id) VALUES (?, ?) "
                          "ON CONFLICT (key) DO UPDATE SET agent_id = excluded.agent_id", (idempotency_key, agent.id))

    def idempotent_agent(self, key: str) -> str | None:
        rows = self._rows("SELECT agent_id FROM idempotency WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    # --- migrations -----------------------------------------------------------------------------

    def put_migration(self, migration: Migration) -> None:
        self._write("INSERT INTO migrations (id, agent_id, finished_at, json) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET agent_id = excluded.agent_id, "
                    "finished_at = excluded.finished_at, json = excluded.json",
                    (migration.id, migration.agent_id, migration.finished_at, migration.model_dump_json()))

    def migration(self, migration_id: str) -> Migration | None:
        rows = self._rows("SELECT id, json FROM migrations WHERE id = ?", (migration_id,))
        return self._decode(Migration, "migrations", *rows[0]) if rows else None

    def migrations(self, agent_id: str | None = None) -> list[Migration]:
        order = self.dialect.order_column
        if agent_id is None:
            rows = self._rows(f"SELECT id, json FROM migrations ORDER BY {order}")
        else:
            rows = self._rows(f"SELECT id, json FROM migrations WHERE agent_id = ? ORDER BY {order}", (agent_id,))
        return self._decode_all(Migration, "migrations", rows)

    # --- events ---------------------------------------------------------------------------------

    def append_events(self, events: Iterable[FederationEvent]) -> list[FederationEvent]:
        stored: list[FederationEvent] = []
        with self._tx():
            for event in events:
                body = event.model_copy(update={"seq": 0}).model_dump_json()
                seq = self._insert_event(event.agent_id, _text(event.type), body)
                stored.append(event.model_copy(update={"seq": seq}))
        self._appended_since_retention += len(stored)
        if self._appended_since_retention >= self.retention.every_appends:
            self.apply_retention()
        return stored

    def events(self, since_seq: int = 0, limit: int = 1000, *, agent_id: str | None = None,
               types: tuple[str, ...] | None = None) -> list[FederationEvent]:
        sql, args = "SELECT seq, json FROM events WHERE seq > ?", list[object]([since_seq])
        if agent_id is not None:
            sql += " AND agent_id = ?"
            args.append(agent_id)
        if types is not None:
            if not types:
                return []
            sql += f" AND type IN ({','.join('?' * len(types))})"
            args.extend(_text(t) for t in types)
        rows = self._rows(sql + " ORDER BY seq LIMIT ?", [*args, max(0, limit)])
        out: list[FederationEvent] = []
        for seq, body in rows:
            event = self._decode(FederationEvent, "events", seq, body)
            if event is not None:
                out.append(event.model_copy(update={"seq": int(seq)}))  # the column is the truth
        return out

    def last_event_seq(self) -> int:
        rows = self._rows("SELECT MAX(seq) FROM events")
        return int(rows[0][0] or 0)

    # --- checkpoints ----------------------------------------------------------------------------

    def put_checkpoint(self, record: CheckpointRecord) -> None:
        self._write(
            "INSERT INTO checkpoints (agent_id, epoch, taken_at, archive_path, meta_path, sha256, size_bytes) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (agent_id) DO UPDATE SET epoch = excluded.epoch, "
            "taken_at = excluded.taken_at, archive_path = excluded.archive_path, meta_path = excluded.meta_path, "
            "sha256 = excluded.sha256, size_bytes = excluded.size_bytes",
            (record.agent_id, record.epoch, record.taken_at, record.archive_path, record.meta_path,
             record.sha256, record.size_bytes))

    def checkpoint(self, agent_id: str) -> CheckpointRecord | None:
        rows = self._rows("SELECT agent_id, epoch, taken_at, archive_path, meta_path, sha256, size_bytes "
                          "FROM checkpoints WHERE agent_id = ?", (agent_id,))
        if not rows:
            return None
        agent, epoch, taken_at, archive, meta, sha, size = rows[0]
        return CheckpointRecord(str(agent), int(epoch), float(taken_at), str(archive), str(meta), str(sha), int(size))

    def delete_checkpoint(self, agent_id: str) -> None:
        self._write("DELETE FROM checkpoints WHERE agent_id = ?", (agent_id,))

    # --- cursors and meta -----------------------------------------------------------------------

    def put_meta(self, key: str, value: object) -> None:
        self._write("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, json.dumps(value)))

    def meta(self, key: str, default: object = None) -> object:
        rows = self._rows("SELECT value FROM meta WHERE key = ?", (key,))
        if not rows:
            return default
        try:
            return json.loads(str(rows[0][0]))
        except ValueError:
            log.warning("state store: skipping unreadable meta row %r", key)
            return default

    def meta_int(self, key: str, default: int = 0) -> int:
        value = self.meta(key, default)
        return value if isinstance(value, int) and not isinstance(value, bool) else default

    def event_cursor(self, cluster_id: str) -> int:
        return self.meta_int(EVENT_CURSOR_PREFIX + cluster_id)

    def put_event_cursor(self, cluster_id: str, seq: int) -> None:
        self.put_meta(EVENT_CURSOR_PREFIX + cluster_id, int(seq))

    def site_cursor(self, cluster_id: str) -> int:
        return self.meta_int(SITE_CURSOR_PREFIX + cluster_id)

    def put_site_cursor(self, cluster_id: str, seq: int) -> None:
        self.put_meta(SITE_CURSOR_PREFIX + cluster_id, int(seq))

    def migration_attempt(self, agent_id: str) -> float | None:
        value = self.meta(MIGRATION_ATTEMPT_PREFIX + agent_id)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def put_migration_attempt(self, agent_id: str, at: float) -> None:
        self.put_meta(MIGRATION_ATTEMPT_PREFIX + agent_id, float(at))

    # --- the lease ------------------------------------------------------------------------------

    def acquire_lease(self, holder: str, ttl_s: float, *, address: str = "") -> int | None:
        if not holder:
            raise InvalidArgument("acquire_lease: the holder must be named")
        now = self.dialect.now_sql
        self._check_writable()
        with self._lock, self._transaction():
            # One conditional upsert: on PostgreSQL it takes the row lock, so it waits for fenced
            # writes in flight (they hold FOR SHARE) and re-checks the condition on the newest row.
            rows = self._raw(
                "INSERT INTO lease (name, holder, token, address, acquired_at, renewed_at, expires_at) "
                f"VALUES (?, ?, 1, ?, {now}, {now}, {now} + ?) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, token = lease.token + 1, "
                "address = excluded.address, acquired_at = excluded.acquired_at, "
                "renewed_at = excluded.renewed_at, expires_at = excluded.expires_at "
                "WHERE lease.expires_at <= excluded.acquired_at OR lease.holder = excluded.holder "
                "RETURNING token", (LEASE_NAME, holder, address, float(ttl_s))).fetchall()
        if not rows:
            return None
        token = int(rows[0][0])
        self._fence = (holder, token)
        return token

    def renew_lease(self, holder: str, token: int, ttl_s: float) -> bool:
        now = self.dialect.now_sql
        self._check_writable()
        with self._lock, self._transaction():
            changed = int(self._raw(f"UPDATE lease SET renewed_at = {now}, expires_at = {now} + ? "
                                    "WHERE name = ? AND holder = ? AND token = ?",
                                    (float(ttl_s), LEASE_NAME, holder, int(token))).rowcount)
        return changed == 1

    def release_lease(self, holder: str, token: int) -> bool:
        self._check_writable()
        with self._lock, self._transaction():
            changed = int(self._raw("UPDATE lease SET expires_at = 0 WHERE name = ? AND holder = ? AND token = ?",
                                    (LEASE_NAME, holder, int(token))).rowcount)
        return changed == 1

    def lease(self) -> Lease | None:
        rows = self._rows("SELECT holder, token, address, acquired_at, renewed_at, expires_at, "
                          f"{self.dialect.now_sql} FROM lease WHERE name = ?", (LEASE_NAME,))
        if not rows:
            return None
        holder, token, address, acquired, renewed, expires, now = rows[0]
        return Lease(str(holder), int(token), str(address), float(acquired), float(renewed), float(expires),
                     float(now))

    # --- retention ------------------------------------------------------------------------------

    def apply_retention(self, now: float | None = None) -> RetentionResult:
        cutoff = (time.time() if now is None else now) - self.retention.finished_migration_days * SECONDS_PER_DAY
        with self._tx():
            # The newest ``max_events`` rows stay: delete the one just past them and everything older.
            events = int(self._raw(
                "DELETE FROM events WHERE seq <= (SELECT seq FROM events ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (self.retention.max_events,)).rowcount)
            migrations = int(self._raw(
                "DELETE FROM migrations WHERE finished_at IS NOT NULL AND finished_at < ?", (cutoff,)).rowcount)
        self._appended_since_retention = 0
        if events or migrations:
            log.info("state store: retention removed %d events and %d finished migrations", events, migrations)
        return RetentionResult(events_deleted=max(0, events), migrations_deleted=max(0, migrations))


__all__ = ["LEASE_NAME", "SqlStore"]
