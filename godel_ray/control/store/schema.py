"""The state store's schema and its versioned migrations, shared by every SQL backend.

The schema is written once, with a few dialect words filled in (``Dialect``). The
``schema_version`` table holds one row per step applied; opening a writer applies the missing
steps in one transaction (on PostgreSQL under an advisory lock, so two control planes starting
at once do not race). Step 1 is the schema as it was before versioning (``CREATE ... IF NOT
EXISTS``), so a state dir written by an older godel-ray is upgraded in place.

To change the schema: append a step (never edit one that shipped), and bump nothing else;
``LATEST_VERSION`` follows the list.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from godel_ray.errors import FailedPrecondition

log = logging.getLogger(__name__)

Raw = Callable[[str, Sequence[object]], Any]  # runs one statement, returns a DB-API cursor


@dataclass(frozen=True)
class Dialect:
    """The words that differ between SQL backends; everything else is shared SQL."""

    name: str
    serial_pk: str  # an integer primary key that only rises and is never reused
    float_type: str
    int64: str
    order_column: str  # the column that keeps first-insert order of agents and migrations
    order_column_def: str  # its definition, if it is not implicit
    lock_sql: str = ""  # serialises schema migrations between processes, run inside the transaction
    now_sql: str = ""  # the database's clock, in epoch seconds (leases expire by one clock: the server's)
    share_lock: str = ""  # appended to the fencing read, so a takeover waits for writes in flight


SQLITE = Dialect(name="sqlite", serial_pk="INTEGER PRIMARY KEY AUTOINCREMENT", float_type="REAL",
                 int64="INTEGER", order_column="rowid", order_column_def="",
                 now_sql="((julianday('now') - 2440587.5) * 86400.0)")
POSTGRES = Dialect(name="postgresql", serial_pk="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
                   float_type="DOUBLE PRECISION", int64="BIGINT", order_column="ord",
                   order_column_def=", ord BIGINT GENERATED ALWAYS AS IDENTITY",
                   lock_sql="SELECT pg_advisory_xact_lock(7319204118)",
                   now_sql="(EXTRACT(EPOCH FROM clock_timestamp())::DOUBLE PRECISION)", share_lock=" FOR SHARE")

_V1 = """
CREATE TABLE IF NOT EXISTS clusters (id TEXT PRIMARY KEY, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS health (cluster_id TEXT PRIMARY KEY, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY, cluster_id TEXT NOT NULL, status TEXT NOT NULL, json TEXT NOT NULL{order_column_def});
CREATE INDEX IF NOT EXISTS agents_by_cluster ON agents (cluster_id, status);
CREATE TABLE IF NOT EXISTS decisions (agent_id TEXT PRIMARY KEY, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS migrations (
    id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, json TEXT NOT NULL{order_column_def});
CREATE TABLE IF NOT EXISTS events (seq {serial_pk}, agent_id TEXT NOT NULL, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (key TEXT PRIMARY KEY, agent_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
    agent_id TEXT PRIMARY KEY, epoch INTEGER NOT NULL, taken_at {float_type} NOT NULL,
    archive_path TEXT NOT NULL, meta_path TEXT NOT NULL, sha256 TEXT NOT NULL, size_bytes {int64} NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)
"""

# Columns that let the store filter and compare in SQL: the agent's epoch (compare-and-set), a
# migration's finish time (retention), an event's type (journal reads); indexes for those reads.
_V2 = """
ALTER TABLE agents ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
ALTER TABLE migrations ADD COLUMN finished_at {float_type};
ALTER TABLE events ADD COLUMN type TEXT NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS events_by_agent ON events (agent_id, seq);
CREATE INDEX IF NOT EXISTS migrations_by_agent ON migrations (agent_id);
CREATE INDEX IF NOT EXISTS migrations_by_finish ON migrations (finished_at)
"""


# The control-plane lease (one row per lease name): who holds it, its fencing token (rises by one
# at every acquisition, never reused), and until when (the database's clock).
_V3 = """
CREATE TABLE IF NOT EXISTS lease (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, token {int64} NOT NULL, address TEXT NOT NULL,
    acquired_at {float_type} NOT NULL, renewed_at {float_type} NOT NULL, expires_at {float_type} NOT NULL)
"""


def _backfill_v2(raw: Raw) -> None:
    """Fill the v2 columns of rows written before them (a no-op on a new store)."""
    def field(text: object, name: str) -> Any:
        try:
            value = json.loads(str(text))
            return value.get(name) if isinstance(value, dict) else None
        except ValueError:
            return None

    for key, text in raw("SELECT id, json FROM agents", ()).fetchall():
        epoch = field(text, "epoch")
        if isinstance(epoch, int):
            raw("UPDATE agents SET epoch = ? WHERE id = ?", (epoch, key))
    for key, text in raw("SELECT id, json FROM migrations", ()).fetchall():
        finished = field(text, "finished_at")
        if isinstance(finished, (int, float)):
            raw("UPDATE migrations SET finished_at = ? WHERE id = ?", (float(finished), key))
    for seq, text in raw("SELECT seq, json FROM events", ()).fetchall():
        type_ = field(text, "type")
        if isinstance(type_, str):
            raw("UPDATE events SET type = ? WHERE seq = ?", (type_, seq))


@dataclass(frozen=True)
class Step:
    version: int
    ddl: str
    backfill: Callable[[Raw], None] | None = None


STEPS: tuple[Step, ...] = (
    Step(1, _V1),
    Step(2, _V2, _backfill_v2),
    Step(3, _V3),
)
LATEST_VERSION = STEPS[-1].version


def _statements(ddl: str, dialect: Dialect) -> list[str]:
    text = ddl.format(serial_pk=dialect.serial_pk, float_type=dialect.float_type, int64=dialect.int64,
                      order_column_def=dialect.order_column_def)
    return [s.strip() for s in text.split(";") if s.strip()]


def _version_table(dialect: Dialect) -> str:
    return (f"CREATE TABLE IF NOT EXISTS schema_version "
            f"(version INTEGER PRIMARY KEY, applied_at {dialect.float_type} NOT NULL)")


def current_version(raw: Raw) -> int:
    """The highest step applied (0 when the table is empty). The table must exist."""
    row = raw("SELECT MAX(version) FROM schema_version", ()).fetchone()
    return int(row[0] or 0) if row else 0


def check_not_newer(version: int) -> None:
    if version > LATEST_VERSION:
        raise FailedPrecondition(
            f"the state store is at schema version {version}, newer than this godel-ray knows "
            f"({LATEST_VERSION}): upgrade godel-ray on this machine")


def migrate(raw: Raw, dialect: Dialect) -> int:
    """Apply the missing steps; call inside one write transaction. Returns the version reached."""
    if dialect.lock_sql:
        raw(dialect.lock_sql, ())
    raw(_version_table(dialect), ())
    version = current_version(raw)
    check_not_newer(version)
    for step in STEPS:
        if step.version <= version:
            continue
        for statement in _statements(step.ddl, dialect):
            raw(statement, ())
        if step.backfill is not None:
            step.backfill(raw)
        raw("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (step.version, time.time()))
        log.info("state store (%s): schema migrated to version %d", dialect.name, step.version)
        version = step.version
    return version


__all__ = ["LATEST_VERSION", "POSTGRES", "SQLITE", "STEPS", "Dialect", "Step", "check_not_newer",
           "current_version", "migrate"]
