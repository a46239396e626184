"""The ``Store`` protocol: everything the control plane keeps durably, and the values it speaks in.

Every backend (SQLite in the state dir, PostgreSQL at ``GODEL_STATE_URL``) implements ``Store`` and
passes one contract suite (``tests/unit/test_store_contract.py``). The semantics written here are
that contract:

- every write is durable when the method returns (the balancer answers only after its write);
- ``put_*`` upserts by id and keeps the row's first-insert order (agents list in spawn order,
  migrations in start order);
- ``append_events`` gives each event the next global ``seq``; seqs only rise, never reused, even
  after retention removed older events;
- idempotency keys are kept forever (retention never touches them);
- ``replace_agent`` is a compare-and-set on (cluster_id, epoch, status): the commit point of a
  migration or a restore, so a racing kill wins;
- one unreadable row (say a ``null`` where a number belongs) is logged with its id and skipped;
  it never makes a whole table unreadable;
- a store opened ``readonly`` refuses every write with ``FailedPrecondition``;
- the lease: ``acquire_lease`` succeeds when the lease is free, expired (by the database's clock)
  or already the caller's, and returns a fencing token one above every token handed out before;
  from then on every write through that store object carries the token, and is refused with
  ``LeaseLost`` (nothing written) once another holder has acquired the lease since. A store that
  never acquired the lease writes unfenced (a single control plane, tools, tests).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from godel_ray.errors import InvalidArgument
from godel_ray.models import (
    Agent,
    AgentStatus,
    Cluster,
    ClusterHealthState,
    FederationEvent,
    Migration,
    PlacementDecision,
)

RETAIN_EVENTS_ENV = "GODEL_RETAIN_EVENTS"
RETAIN_MIGRATION_DAYS_ENV = "GODEL_RETAIN_MIGRATION_DAYS"
SECONDS_PER_DAY = 86_400.0

# The ``meta`` keys behind the typed cursor methods: the same keys the control plane wrote before
# the methods existed, so a state dir written by either reads back through both.
EVENT_CURSOR_PREFIX = "buffer_seq:"  # last seq taken from a ClusterActor's event buffer
SITE_CURSOR_PREFIX = "site_seq:"  # last seq of a site's own event log that the balancer stored
MIGRATION_ATTEMPT_PREFIX = "migration_attempt:"  # when a migration of the agent was last tried


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


@dataclass(frozen=True)
class Lease:
    """The control-plane lease as stored: ``active`` when it had not expired at ``now`` (both by the
    database's clock). ``address`` tells clients how to reach the holder (its Ray head's address)."""

    holder: str
    token: int
    address: str
    acquired_at: float
    renewed_at: float
    expires_at: float
    now: float

    @property
    def active(self) -> bool:
        return self.expires_at > self.now


@dataclass(frozen=True)
class RetentionResult:
    """What one ``apply_retention`` removed."""

    events_deleted: int = 0
    migrations_deleted: int = 0


class Retention(BaseModel):
    """How much history the store keeps. Idempotency keys, agents and checkpoints are not history.

    ``max_events``: the newest events kept (older ones are deleted; seqs are never reused).
    ``finished_migration_days``: a migration finished longer ago than this is deleted.
    ``every_appends``: retention runs when the writer opens and after this many appended events,
    so its cost is one indexed DELETE per ``every_appends`` events.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_events: int = Field(default=100_000, ge=1)
    finished_migration_days: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    every_appends: int = Field(default=1_000, ge=1)

    @classmethod
    def from_env(cls) -> Retention:
        """Defaults, overridden by ``GODEL_RETAIN_EVENTS`` and ``GODEL_RETAIN_MIGRATION_DAYS``."""
        values: dict[str, float | int] = {}
        raw_events = os.environ.get(RETAIN_EVENTS_ENV, "").strip()
        if raw_events:
            if not raw_events.isdigit() or int(raw_events) < 1:
                raise InvalidArgument(f"{RETAIN_EVENTS_ENV}={raw_events!r}: expected a whole number >= 1")
            values["max_events"] = int(raw_events)
        raw_days = os.environ.get(RETAIN_MIGRATION_DAYS_ENV, "").strip()
        if raw_days:
            try:
                days = float(raw_days)
            except ValueError:
                days = math.nan
            if not math.isfinite(days) or days <= 0:
                raise InvalidArgument(f"{RETAIN_MIGRATION_DAYS_ENV}={raw_days!r}: expected a number of days > 0")
            values["finished_migration_days"] = days
        return cls.model_validate(values)


@runtime_checkable
class Store(Protocol):
    """What the control plane keeps durably. The balancer is the single writer; readers (the CLI,
    ClusterActors resuming a cursor) open the store ``readonly``. See the module docstring for the
    contract every implementation passes."""

    readonly: bool
    retention: Retention

    def close(self) -> None: ...

    def schema_version(self) -> int:
        """The schema version the store is at (``schema_version`` table)."""
        ...

    # clusters and health
    def put_cluster(self, cluster: Cluster) -> None: ...
    def delete_cluster(self, cluster_id: str) -> None:
        """Delete the cluster and its health row, atomically."""
        ...
    def cluster(self, cluster_id: str) -> Cluster | None: ...
    def clusters(self) -> list[Cluster]:
        """Every readable cluster, by id."""
        ...
    def put_health(self, state: ClusterHealthState) -> None: ...
    def health(self, cluster_id: str) -> ClusterHealthState | None: ...
    def all_health(self) -> list[ClusterHealthState]: ...

    # agents
    def put_agent(self, agent: Agent) -> None: ...
    def replace_agent(self, expected: Agent, new: Agent) -> bool:
        """Write ``new`` only if the stored row still has ``expected``'s cluster_id, epoch and
        status; False (nothing written) otherwise, or when the row is gone."""
        ...
    def agent(self, agent_id: str) -> Agent | None: ...
    def require_agent(self, agent_id: str) -> Agent:
        """The agent, or ``AgentNotFound`` with what to do."""
        ...
    def agents(self, *, cluster_id: str | None = None, status: AgentStatus | str | None = None,
               labels: dict[str, str] | None = None, model: str | None = None) -> list[Agent]:
        """Agents in spawn order, filtered (every label must match)."""
        ...
    def active_counts(self) -> dict[str, int]:
        """Non-final agents per cluster id."""
        ...
    def counts_by_status(self, cluster_id: str) -> dict[str, int]: ...

    # placement decisions and the spawn commit point
    def put_decision(self, decision: PlacementDecision) -> None: ...
    def delete_decision(self, agent_id: str) -> None: ...
    def decision(self, agent_id: str) -> PlacementDecision | None: ...
    def put_spawn(self, agent: Agent, decision: PlacementDecision, idempotency_key: str | None) -> None:
        """The spawn commit point: agent row, its decision and its idempotency key, atomically."""
        ...
    def idempotent_agent(self, key: str) -> str | None: ...

    # migrations
    def put_migration(self, migration: Migration) -> None: ...
    def migration(self, migration_id: str) -> Migration | None: ...
    def migrations(self, agent_id: str | None = None) -> list[Migration]:
        """Migrations in start order, all or one agent's."""
        ...

    # events
    def append_events(self, events: Iterable[FederationEvent]) -> list[FederationEvent]:
        """Append to the merged log atomically; returns the events with their new ``seq``."""
        ...
    def events(self, since_seq: int = 0, limit: int = 1000, *, agent_id: str | None = None,
               types: tuple[str, ...] | None = None) -> list[FederationEvent]:
        """Events with ``seq > since_seq`` in seq order, at most ``limit``."""
        ...
    def last_event_seq(self) -> int: ...

    # checkpoints' metadata
    def put_checkpoint(self, record: CheckpointRecord) -> None: ...
    def checkpoint(self, agent_id: str) -> CheckpointRecord | None: ...
    def delete_checkpoint(self, agent_id: str) -> None: ...

    # cursors (typed) and free-form meta (kept for compatibility)
    def event_cursor(self, cluster_id: str) -> int:
        """The last seq the balancer took from ``cluster_id``'s ClusterActor event buffer (0: none)."""
        ...
    def put_event_cursor(self, cluster_id: str, seq: int) -> None: ...
    def site_cursor(self, cluster_id: str) -> int:
        """The last seq of the site's own event log that the balancer stored (0: none)."""
        ...
    def put_site_cursor(self, cluster_id: str, seq: int) -> None: ...
    def migration_attempt(self, agent_id: str) -> float | None:
        """When a migration of ``agent_id`` was last attempted (the cooldown's start), if ever."""
        ...
    def put_migration_attempt(self, agent_id: str, at: float) -> None: ...
    def put_meta(self, key: str, value: object) -> None: ...
    def meta(self, key: str, default: object = None) -> object: ...
    def meta_int(self, key: str, default: int = 0) -> int: ...

    # the control-plane lease and its fencing token
    def acquire_lease(self, holder: str, ttl_s: float, *, address: str = "") -> int | None:
        """Take the lease for ``ttl_s`` if it is free, expired or ``holder``'s own: the new fencing
        token (higher than any before), which this store's writes carry from now on; None if
        another holder has it."""
        ...
    def renew_lease(self, holder: str, token: int, ttl_s: float) -> bool:
        """Extend the lease by ``ttl_s`` from now; False if ``(holder, token)`` no longer holds it."""
        ...
    def release_lease(self, holder: str, token: int) -> bool:
        """Let the lease expire now (a clean shutdown, so a standby need not wait); False if not held."""
        ...
    def lease(self) -> Lease | None:
        """The lease row (None: never acquired)."""
        ...

    # retention
    def apply_retention(self, now: float | None = None) -> RetentionResult:
        """Delete events beyond ``max_events`` and migrations finished over the age limit."""
        ...

__all__ = [
    "EVENT_CURSOR_PREFIX",
    "MIGRATION_ATTEMPT_PREFIX",
    "SITE_CURSOR_PREFIX",
    "CheckpointRecord",
    "Lease",
    "Retention",
    "RetentionResult",
    "Store",
]
