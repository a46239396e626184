"""The embedded state store: one SQLite file, ``<state_dir>/godel.db``, in WAL mode.

Durability: ``synchronous=FULL`` in WAL mode, so a commit is fsynced to the WAL before the write
returns; a power loss cannot undo a committed migration (with ``NORMAL`` it could).
Privacy: the state dir is made 0700 and the database with its ``-wal`` and ``-shm`` files 0600,
also when they existed before with wider modes (the database names every site's credential files
and holds agents' env values). SQLite creates the ``-wal`` and ``-shm`` files with the database
file's mode, which is why the database file is created 0600 before SQLite opens it.

The CLI opens the file read-only (``StateStore.reader``) and never needs Ray.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from godel_ray.control.store.protocol import Retention
from godel_ray.control.store.schema import SQLITE, check_not_newer, current_version, migrate
from godel_ray.control.store.sql import SqlStore
from godel_ray.errors import ControlPlaneNotRunning

DB_FILE = "godel.db"
BUSY_TIMEOUT_MS = 5_000
DIR_MODE = 0o700
FILE_MODE = 0o600
_SIDE_FILES = ("", "-wal", "-shm")


def _private(path: Path) -> None:
    """The state dir 0700; the database and its side files 0600 (those that exist)."""
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path.parent, DIR_MODE)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE))
    for suffix in _SIDE_FILES:
        side = Path(f"{path}{suffix}")
        if side.exists():
            os.chmod(side, FILE_MODE)


class StateStore(SqlStore):
    """``Store`` on SQLite. One writer (the balancer); readers open with ``reader()``.

    Every write commits (and is fsynced) before the method returns.
    """

    dialect = SQLITE

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False,
                 retention: Retention | None = None) -> None:
        super().__init__(readonly=readonly, retention=retention)
        self.path = Path(path)
        if readonly:
            if not self.path.exists():
                raise ControlPlaneNotRunning(
                    f"no control plane state at {self.path.parent}: run `swarmctl up` first")
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None,
                                       check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
        else:
            _private(self.path)
            self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                                       timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            if readonly:
                if self._has_version_table():
                    check_not_newer(current_version(self._raw))
                return
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            with self._tx():
                migrate(self._raw, self.dialect)
            _private(self.path)  # the -wal and -shm files exist now
            self.apply_retention()
        except BaseException:
            self._db.close()
            raise

    @classmethod
    def for_state_dir(cls, state_dir: str | os.PathLike[str], *, retention: Retention | None = None) -> StateStore:
        return cls(Path(state_dir) / DB_FILE, retention=retention)

    @classmethod
    def reader(cls, state_dir_or_path: str | os.PathLike[str]) -> StateStore:
        """Open read-only; ``ControlPlaneNotRunning`` when there is no state file."""
        path = Path(state_dir_or_path)
        if path.is_dir() or path.suffix != ".db":
            path = path / DB_FILE
        return cls(path, readonly=True)

    def _has_version_table(self) -> bool:
        rows = self._raw("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'").fetchall()
        return bool(rows)

    # --- the backend's part of SqlStore -----------------------------------------------------------

    def _raw(self, sql: str, args: Sequence[object] = ()) -> Any:
        return self._db.execute(sql, tuple(args))

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")  # take the write lock now, not at the first write
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _insert_event(self, agent_id: str, type_: str, body: str) -> int:
        cur = self._db.execute("INSERT INTO events (agent_id, type, json) VALUES (?, ?, ?)", (agent_id, type_, body))
        return int(cur.lastrowid or 0)

    def _close(self) -> None:
        self._db.close()

    def _where(self) -> str:
        return str(self.path)


SQLiteStore = StateStore

__all__ = ["BUSY_TIMEOUT_MS", "DB_FILE", "SQLiteStore", "StateStore"]
