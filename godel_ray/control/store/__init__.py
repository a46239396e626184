"""The federation's durable state, behind the ``Store`` protocol; ``open_store`` is the one way in.

    protocol.py   Store (the contract), CheckpointRecord, Retention
    schema.py     the schema, written once, and its versioned migrations (``schema_version``)
    sql.py        SqlStore: the contract in SQL, shared by the backends
    sqlite.py     StateStore: SQLite in the state dir (the embedded default)
    postgres.py   PostgresStore: PostgreSQL at ``GODEL_STATE_URL`` (psycopg 3, an optional extra)

The BalancerActor is the single writer; everything else (the CLI's fast path, a ClusterActor
resuming its cursor, ``swarmctl up`` counting what is there) opens the store ``readonly``.

To add a backend: implement ``Store`` (a SQL one subclasses ``SqlStore`` and supplies a
connection), add it to ``open_store``, and add it to the contract suite's parameters.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from godel_ray import settings
from godel_ray.control.store.protocol import (
    RETAIN_EVENTS_ENV,
    RETAIN_MIGRATION_DAYS_ENV,
    CheckpointRecord,
    Lease,
    Retention,
    RetentionResult,
    Store,
)
from godel_ray.control.store.sqlite import DB_FILE, SQLiteStore, StateStore
from godel_ray.errors import InvalidArgument

STATE_URL_ENV = "GODEL_STATE_URL"
FORWARDED_ENV = (STATE_URL_ENV, RETAIN_EVENTS_ENV, RETAIN_MIGRATION_DAYS_ENV)


def forwarded_env() -> dict[str, str]:
    """The settings of the store that the control-plane actors must see as this process does
    (``GODEL_STATE_URL``, ``GODEL_RETAIN_*``): those set here, for their ``runtime_env``."""
    return {key: os.environ[key] for key in FORWARDED_ENV if os.environ.get(key, "").strip()}


def describe_store(state_dir: str | os.PathLike[str] | None = None) -> str:
    """Where the store is, for people: the URL without its password, or the SQLite file."""
    url = os.environ.get(STATE_URL_ENV, "").strip()
    if url:
        from godel_ray.control.store.postgres import redact

        return redact(url)
    return str(settings.state_dir(state_dir) / DB_FILE)


def open_store(state_dir: str | os.PathLike[str] | None = None, *, readonly: bool = False,
               url: str | None = None, retention: Retention | None = None) -> Store:
    """The control plane's store: PostgreSQL when ``url`` (default ``$GODEL_STATE_URL``) is a
    ``postgresql://`` URL, otherwise SQLite in ``state_dir`` (``settings.state_dir`` rules).

    ``readonly``: for readers; raises ``ControlPlaneNotRunning`` when there is no state yet.
    ``retention``: defaults to ``Retention.from_env()`` (``GODEL_RETAIN_*``).
    """
    url = (os.environ.get(STATE_URL_ENV, "") if url is None else url).strip()
    retention = retention or Retention.from_env()
    if url:
        scheme = urlsplit(url).scheme
        from godel_ray.control.store.postgres import SCHEMES, PostgresStore, redact

        if scheme not in SCHEMES:
            raise InvalidArgument(f"{STATE_URL_ENV}={redact(url)!r}: unsupported scheme {scheme!r}; use "
                                  "postgresql://user@host/db, or leave it unset for SQLite in the state dir")
        return PostgresStore(url, readonly=readonly, retention=retention)
    root = settings.state_dir(state_dir)
    if readonly:
        return StateStore.reader(root)
    return StateStore.for_state_dir(root, retention=retention)


__all__ = [
    "DB_FILE",
    "FORWARDED_ENV",
    "STATE_URL_ENV",
    "CheckpointRecord",
    "Lease",
    "Retention",
    "RetentionResult",
    "SQLiteStore",
    "StateStore",
    "Store",
    "describe_store",
    "forwarded_env",
    "open_store",
]
