"""The shared state store: PostgreSQL (psycopg 3), chosen with ``GODEL_STATE_URL=postgresql://...``.

The same schema and SQL as SQLite (``schema.py``, ``sql.py``); what differs lives here: the
connection (autocommit, one explicit transaction per write, reconnected when the server dropped
it between calls), ``%s`` placeholders, and event seqs from an identity column. Durability is the
server's: a COMMIT returns after its WAL record is flushed (``synchronous_commit=on``, the
default). A readonly store also sets ``default_transaction_read_only``, so the server itself
refuses its writes. The URL's password never appears in a message.

psycopg is an optional dependency (``pip install 'godel-ray[postgres]'``), imported only here.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from godel_ray.control.store.protocol import Retention
from godel_ray.control.store.schema import POSTGRES, check_not_newer, current_version, migrate
from godel_ray.control.store.sql import SqlStore
from godel_ray.errors import ControlPlaneNotRunning, FailedPrecondition

CONNECT_TIMEOUT_S = 10
SCHEMES = ("postgresql", "postgres")


def redact(url: str) -> str:
    """``url`` without its password (for messages and logs)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    except ValueError:  # a malformed port or netloc: say nothing of it
        return "<a malformed URL>"
    return urlunsplit(parts._replace(netloc=netloc))


@functools.lru_cache(maxsize=256)
def _paramstyle(sql: str) -> str:
    return sql.replace("?", "%s")


class PostgresStore(SqlStore):
    """``Store`` on PostgreSQL. Single writer (the balancer); thread-safe through one lock.

    Every write commits before the method returns. A connection the server dropped is replaced
    before the next call; a call that was cut off raises (it is not retried: it may have committed).
    """

    dialect = POSTGRES

    def __init__(self, url: str, *, readonly: bool = False, retention: Retention | None = None) -> None:
        super().__init__(readonly=readonly, retention=retention)
        try:
            import psycopg
        except ImportError as exc:
            raise FailedPrecondition("GODEL_STATE_URL names PostgreSQL but psycopg is not installed: "
                                     "pip install 'godel-ray[postgres]'") from exc
        self._psycopg = psycopg
        self.url = url
        self._in_tx = False
        self._conn = self._connect()
        try:
            if readonly:
                if self._raw("SELECT to_regclass('schema_version')").fetchone()[0] is None:
                    raise ControlPlaneNotRunning(
                        f"no control plane state in {redact(url)}: run `swarmctl up` first")
                check_not_newer(current_version(self._raw))
                return
            with self._tx():
                migrate(self._raw, self.dialect)
            self.apply_retention()
        except BaseException:
            self._close()
            raise

    def _connect(self) -> Any:
        try:
            conn = self._psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        except self._psycopg.Error as exc:
            raise FailedPrecondition(f"cannot reach the state store at {redact(self.url)}: {exc}") from exc
        if self.readonly:
            conn.execute("SET default_transaction_read_only = on")
        return conn

    # --- the backend's part of SqlStore -----------------------------------------------------------

    def _raw(self, sql: str, args: Sequence[object] = ()) -> Any:
        if self._conn.closed and not self._in_tx:
            self._conn = self._connect()
        return self._conn.execute(_paramstyle(sql), tuple(args))

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        if self._conn.closed:
            self._conn = self._connect()
        self._in_tx = True
        try:
            with self._conn.transaction():
                yield
        finally:
            self._in_tx = False

    def _insert_event(self, agent_id: str, type_: str, body: str) -> int:
        row = self._raw("INSERT INTO events (agent_id, type, json) VALUES (?, ?, ?) RETURNING seq",
                        (agent_id, type_, body)).fetchone()
        return int(row[0])

    def _close(self) -> None:
        self._conn.close()

    def _where(self) -> str:
        return redact(self.url)


__all__ = ["SCHEMES", "PostgresStore", "redact"]
