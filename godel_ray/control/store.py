"""The federation's durable state: one SQLite file, ``<state_dir>/godel.db`` (WAL mode).

Rows hold the JSON of the pydantic models, keyed by id: clusters, their last health, agents
(with ``cluster_id`` and ``status`` as columns for filtering), placement decisions, migrations,
the merged event log (one global, autoincrementing ``seq``), idempotency keys, checkpoint
metadata, and small cursors (``meta``). The BalancerActor is the single writer; the CLI opens the
file read-only with ``StateStore.reader`` and never needs Ray.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from godel_ray.errors import AgentNotFound, ControlPlaneNotRunning
from godel_ray.models import (
    Agent,
    AgentStatus,
    Cluster,
    ClusterHealthState,
    FederationEvent,
    Migration,
    PlacementDecision,
)

DB_FILE = "godel.db"
BUSY_TIMEOUT_MS = 5_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS clusters (id TEXT PRIMARY KEY, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS health (cluster_id TEXT PRIMARY KEY, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY, cluster_id TEXT NOT NULL, status TEXT NOT NULL, json TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS agents_by_cluster ON agents (cluster_id, status);
CREATE TABLE IF NOT EXISTS decisions (agent_id TEXT PRIMARY KEY, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS migrations (id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, agent_id TEXT NOT NULL, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (key TEXT PRIMARY KEY, agent_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
    agent_id TEXT PRIMARY KEY, epoch INTEGER NOT NULL, taken_at REAL NOT NULL, archive_path TEXT NOT NULL,
    meta_path TEXT NOT NULL, sha256 TEXT NOT NULL, size_bytes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class CheckpointRecord:
    """Where an agent's latest checkpoint lies (the blobs are files beside the database)."""

    agent_id: str
    epoch: int
    taken_at: float
    archive_path: str
    meta_path: str
    sha256: str
    size_bytes: int


class StateStore:
    """Typed access to ``godel.db``. One writer (the balancer); readers open with ``reader()``.

    Every write commits before the method returns: the balancer answers only after its write is
    durable. Thread-safe through one lock (the balancer's event loop is the only real user).
    """

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if readonly:
            if not self.path.exists():
                raise ControlPlaneNotRunning(
                    f"no control plane state at {self.path.parent}: run `swarmctl up` first")
            uri = f"file:{self.path}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False,
                                       timeout=BUSY_TIMEOUT_MS / 1000)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                                       timeout=BUSY_TIMEOUT_MS / 1000)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        self._lock = threading.Lock()

    @classmethod
    def for_state_dir(cls, state_dir: str | os.PathLike[str]) -> StateStore:
        return cls(Path(state_dir) / DB_FILE)

    @classmethod
    def reader(cls, state_dir_or_path: str | os.PathLike[str]) -> StateStore:
        """Open read-only; ``ControlPlaneNotRunning`` when there is no state file."""
        path = Path(state_dir_or_path)
        if path.is_dir() or path.suffix != ".db":
            path = path / DB_FILE
        return cls(path, readonly=True)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- plumbing -------------------------------------------------------------------------------

    def _rows(self, sql: str, args: Iterable[object] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._db.execute(sql, tuple(args)).fetchall())

    def _write(self, sql: str, args: Iterable[object] = ()) -> int:
        with self._lock:
            cur = self._db.execute(sql, tuple(args))
            return int(cur.lastrowid or 0)

    # --- clusters -------------------------------------------------------------------------------

    def put_cluster(self, cluster: Cluster) -> None:
        self._write("INSERT OR REPLACE INTO clusters (id, json) VALUES (?, ?)",
                    (cluster.id, cluster.model_dump_json()))

    def delete_cluster(self, cluster_id: str) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM clusters WHERE id = ?", (cluster_id,))
            self._db.execute("DELETE FROM health WHERE cluster_id = ?", (cluster_id,))
            self._db.execute("COMMIT")

    def cluster(self, cluster_id: str) -> Cluster | None:
        rows = self._rows("SELECT json FROM clusters WHERE id = ?", (cluster_id,))
        return Cluster.model_validate_json(str(rows[0][0])) if rows else None

    def clusters(self) -> list[Cluster]:
        rows = self._rows("SELECT json FROM clusters ORDER BY id")
        return [Cluster.model_validate_json(str(r[0])) for r in rows]

    # --- health ---------------------------------------------------------------------------------

    def put_health(self, state: ClusterHealthState) -> None:
        self._write("INSERT OR REPLACE INTO health (cluster_id, json) VALUES (?, ?)",
                    (state.cluster_id, state.model_dump_json()))

    def health(self, cluster_id: str) -> ClusterHealthState | None:
        rows = self._rows("SELECT json FROM health WHERE cluster_id = ?", (cluster_id,))
        return ClusterHealthState.model_validate_json(str(rows[0][0])) if rows else None

    def all_health(self) -> list[ClusterHealthState]:
        rows = self._rows("SELECT json FROM health ORDER BY cluster_id")
        return [ClusterHealthState.model_validate_json(str(r[0])) for r in rows]

    # --- agents ---------------------------------------------------------------------------------

    def put_agent(self, agent: Agent) -> None:
        self._write("INSERT OR REPLACE INTO agents (id, cluster_id, status, json) VALUES (?, ?, ?, ?)",
                    (agent.id, agent.cluster_id, agent.status.value, agent.model_dump_json()))

    def agent(self, agent_id: str) -> Agent | None:
        rows = self._rows("SELECT json FROM agents WHERE id = ?", (agent_id,))
        return Agent.model_validate_json(str(rows[0][0])) if rows else None

    def require_agent(self, agent_id: str) -> Agent:
        """The agent, or ``AgentNotFound`` with what to do."""
        agent = self.agent(agent_id)
        if agent is None:
            raise AgentNotFound(f"agent {agent_id!r} is not known to the federation; see `swarmctl agent list`",
                                agent_id=agent_id)
        return agent

    def agents(self, *, cluster_id: str | None = None, status: AgentStatus | str | None = None,
               labels: dict[str, str] | None = None, model: str | None = None) -> list[Agent]:
        """Agents in spawn order, filtered (every label must match)."""
        sql, args = "SELECT json FROM agents WHERE 1=1", list[object]()
        if cluster_id is not None:
            sql += " AND cluster_id = ?"
            args.append(cluster_id)
        if status is not None:
            sql += " AND status = ?"
            args.append(AgentStatus(status).value)
        rows = self._rows(sql + " ORDER BY rowid", args)
        agents = [Agent.model_validate_json(str(r[0])) for r in rows]
        return [a for a in agents if (model is None or a.config.model == model)
                and all(a.config.labels.get(k) == v for k, v in (labels or {}).items())]

    def active_counts(self) -> dict[str, int]:
        """Non-final agents per cluster id."""
        final = tuple(s.value for s in AgentStatus if s.is_final)
        rows = self._rows(
            f"SELECT cluster_id, COUNT(*) FROM agents WHERE status NOT IN ({','.join('?' * len(final))}) "
            "GROUP BY cluster_id", final)
        return {str(r[0]): int(r[1]) for r in rows}

    def counts_by_status(self, cluster_id: str) -> dict[str, int]:
        rows = self._rows("SELECT status, COUNT(*) FROM agents WHERE cluster_id = ? GROUP BY status",
                          (cluster_id,))
        return {str(r[0]): int(r[1]) for r in rows}

    # --- placement decisions --------------------------------------------------------------------

    def put_decision(self, decision: PlacementDecision) -> None:
        self._write("INSERT OR REPLACE INTO decisions (agent_id, json) VALUES (?, ?)",
                    (decision.agent_id, decision.model_dump_json()))

    def delete_decision(self, agent_id: str) -> None:
        self._write("DELETE FROM decisions WHERE agent_id = ?", (agent_id,))

    def decision(self, agent_id: str) -> PlacementDecision | None:
        rows = self._rows("SELECT json FROM decisions WHERE agent_id = ?", (agent_id,))
        return PlacementDecision.model_validate_json(str(rows[0][0])) if rows else None

    # --- migrations -----------------------------------------------------------------------------

    def put_migration(self, migration: Migration) -> None:
        self._write("INSERT OR REPLACE INTO migrations (id, agent_id, json) VALUES (?, ?, ?)",
                    (migration.id, migration.agent_id, migration.model_dump_json()))

    def migration(self, migration_id: str) -> Migration | None:
        rows = self._rows("SELECT json FROM migrations WHERE id = ?", (migration_id,))
        return Migration.model_validate_json(str(rows[0][0])) if rows else None

    def migrations(self, agent_id: str | None = None) -> list[Migration]:
        if agent_id is None:
            rows = self._rows("SELECT json FROM migrations ORDER BY rowid")
        else:
            rows = self._rows("SELECT json FROM migrations WHERE agent_id = ? ORDER BY rowid", (agent_id,))
        return [Migration.model_validate_json(str(r[0])) for r in rows]

    # --- events ---------------------------------------------------------------------------------

    def append_events(self, events: Iterable[FederationEvent]) -> list[FederationEvent]:
        """Append to the merged log; each stored event gets the next global ``seq``."""
        stored: list[FederationEvent] = []
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for event in events:
                    cur = self._db.execute("INSERT INTO events (agent_id, json) VALUES (?, '')",
                                           (event.agent_id,))
                    seq = int(cur.lastrowid or 0)
                    out = event.model_copy(update={"seq": seq})
                    self._db.execute("UPDATE events SET json = ? WHERE seq = ?", (out.model_dump_json(), seq))
                    stored.append(out)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return stored

    def events(self, since_seq: int = 0, limit: int = 1000, *, agent_id: str | None = None,
               types: tuple[str, ...] | None = None) -> list[FederationEvent]:
        sql, args = "SELECT json FROM events WHERE seq > ?", list[object]([since_seq])
        if agent_id is not None:
            sql += " AND agent_id = ?"
            args.append(agent_id)
        rows = self._rows(sql + " ORDER BY seq LIMIT ?", [*args, limit if types is None else -1])
        out = [FederationEvent.model_validate_json(str(r[0])) for r in rows]
        if types is not None:
            out = [e for e in out if e.type in types][:limit]
        return out

    def last_event_seq(self) -> int:
        rows = self._rows("SELECT MAX(seq) FROM events")
        return int(rows[0][0] or 0)

    # --- idempotency ----------------------------------------------------------------------------

    def idempotent_agent(self, key: str) -> str | None:
        rows = self._rows("SELECT agent_id FROM idempotency WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def put_spawn(self, agent: Agent, decision: PlacementDecision, idempotency_key: str | None) -> None:
        """The spawn commit point: agent row, its decision and its idempotency key, atomically."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO agents (id, cluster_id, status, json) VALUES (?, ?, ?, ?)",
                    (agent.id, agent.cluster_id, agent.status.value, agent.model_dump_json()))
                self._db.execute("INSERT OR REPLACE INTO decisions (agent_id, json) VALUES (?, ?)",
                                 (agent.id, decision.model_dump_json()))
                if idempotency_key:
                    self._db.execute("INSERT OR REPLACE INTO idempotency (key, agent_id) VALUES (?, ?)",
                                     (idempotency_key, agent.id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # --- checkpoints ----------------------------------------------------------------------------

    def put_checkpoint(self, record: CheckpointRecord) -> None:
        self._write(
            "INSERT OR REPLACE INTO checkpoints (agent_id, epoch, taken_at, archive_path, meta_path, sha256, "
            "size_bytes) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (record.agent_id, record.epoch, record.taken_at, record.archive_path, record.meta_path,
             record.sha256, record.size_bytes))

    def checkpoint(self, agent_id: str) -> CheckpointRecord | None:
        rows = self._rows("SELECT agent_id, epoch, taken_at, archive_path, meta_path, sha256, size_bytes "
                          "FROM checkpoints WHERE agent_id = ?", (agent_id,))
        return CheckpointRecord(*rows[0]) if rows else None

    def delete_checkpoint(self, agent_id: str) -> None:
        self._write("DELETE FROM checkpoints WHERE agent_id = ?", (agent_id,))

    # --- meta -----------------------------------------------------------------------------------

    def put_meta(self, key: str, value: object) -> None:
        self._write("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def meta(self, key: str, default: object = None) -> object:
        rows = self._rows("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(str(rows[0][0])) if rows else default

    def meta_int(self, key: str, default: int = 0) -> int:
        value = self.meta(key, default)
        return value if isinstance(value, int) else default


    # --- compare-and-set (appended; the store's owner reconciles) --------------------------------

    def replace_agent(self, expected: Agent, new: Agent) -> bool:
        """Write ``new`` only if the stored row still equals ``expected`` on cluster_id, epoch and
        status (a compare-and-set: a racing kill or move wins); False, and nothing written, otherwise."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute("SELECT json FROM agents WHERE id = ?", (expected.id,)).fetchall()
                current = Agent.model_validate_json(str(rows[0][0])) if rows else None
                if current is None or (current.cluster_id, current.epoch, current.status) != (
                        expected.cluster_id, expected.epoch, expected.status):
                    self._db.execute("ROLLBACK")
                    return False
                self._db.execute(
                    "INSERT OR REPLACE INTO agents (id, cluster_id, status, json) VALUES (?, ?, ?, ?)",
                    (new.id, new.cluster_id, new.status.value, new.model_dump_json()))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return True

__all__ = ["DB_FILE", "CheckpointRecord", "StateStore"]
