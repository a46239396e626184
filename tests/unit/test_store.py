"""The SQLite store's own promises (the shared contract is ``test_store_contract.py``): private
files, durable commits, in-place upgrade of a state dir written before schema versions, and the
settings and paths that open it."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from godel_ray.control.store import DB_FILE, Retention, StateStore, open_store
from godel_ray.control.store.schema import _V1, LATEST_VERSION, SQLITE
from godel_ray.errors import FailedPrecondition, InvalidArgument
from godel_ray.models import (
    Agent,
    AgentStatus,
    EventKind,
    EventType,
    FederationEvent,
    Migration,
    MigrationPhase,
    SpawnConfig,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_dir_and_files_are_private_even_when_they_existed(tmp_path: Path) -> None:
    root = tmp_path / "state"
    root.mkdir(mode=0o755)
    (root / DB_FILE).touch(mode=0o644)
    (root / DB_FILE).chmod(0o644)  # touch's mode is filtered by the umask
    store = StateStore.for_state_dir(root)
    store.put_agent(Agent(id="a1", config=SpawnConfig(env={"SECRET": "x"})))
    assert _mode(root) == 0o700
    for name in (DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm"):
        assert _mode(root / name) == 0o600, name
    store.close()


def test_a_new_state_dir_is_private(tmp_path: Path) -> None:
    store = StateStore.for_state_dir(tmp_path / "a" / "b")
    assert _mode(tmp_path / "a" / "b") == 0o700 and _mode(tmp_path / "a" / "b" / DB_FILE) == 0o600
    store.close()


def test_commits_are_durable_wal_with_synchronous_full(tmp_path: Path) -> None:
    store = StateStore.for_state_dir(tmp_path)
    assert store._raw("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._raw("PRAGMA synchronous").fetchone()[0] == 2  # FULL: the WAL is fsynced at each commit
    store.close()


def _v1_state_dir(root: Path) -> None:
    """A state dir as godel-ray wrote it before schema versions (schema step 1, no version table)."""
    root.mkdir()
    db = sqlite3.connect(root / DB_FILE)
    db.executescript(_V1.format(serial_pk=SQLITE.serial_pk, float_type=SQLITE.float_type, int64=SQLITE.int64,
                                order_column_def=SQLITE.order_column_def))
    agent = Agent(id="a1", cluster_id="local", status=AgentStatus.RUNNING, epoch=3, config=SpawnConfig())
    db.execute("INSERT INTO agents (id, cluster_id, status, json) VALUES (?, ?, ?, ?)",
               (agent.id, agent.cluster_id, agent.status.value, agent.model_dump_json()))
    done = Migration(id="mig-old", agent_id="a1", source="x", target="local", phase=MigrationPhase.COMPLETED,
                     started_at=10.0, finished_at=20.0)
    db.execute("INSERT INTO migrations (id, agent_id, json) VALUES (?, ?, ?)",
               (done.id, done.agent_id, done.model_dump_json()))
    for seq, type_ in ((1, EventType.AGENT_SPAWNED), (2, EventType.COMMAND_STARTED)):
        event = FederationEvent(seq=seq, kind=EventKind.AGENT, type=type_.value, agent_id="a1")
        db.execute("INSERT INTO events (seq, agent_id, json) VALUES (?, ?, ?)", (seq, "a1", event.model_dump_json()))
    db.execute("INSERT INTO meta (key, value) VALUES ('site_seq:east', '41')")
    db.commit()
    db.close()


def test_a_state_dir_from_before_schema_versions_is_upgraded_in_place(tmp_path: Path) -> None:
    root = tmp_path / "old"
    _v1_state_dir(root)
    reader = StateStore.reader(root)  # a reader of the old file works before any upgrade
    assert [a.id for a in reader.agents()] == ["a1"]
    reader.close()
    store = StateStore.for_state_dir(root, retention=Retention(finished_migration_days=1))
    assert store.schema_version() == LATEST_VERSION
    agent = store.require_agent("a1")
    assert store.replace_agent(agent, agent.model_copy(update={"epoch": 4})) is True  # epoch backfilled
    assert [e.seq for e in store.events(types=(EventType.COMMAND_STARTED.value,))] == [2]  # type backfilled
    assert store.site_cursor("east") == 41
    assert store.migrations() == []  # finished_at backfilled: finished long ago, removed at open
    assert [e.seq for e in store.append_events([FederationEvent(kind=EventKind.AGENT, type="x")])] == [3]
    store.close()


def test_a_store_newer_than_this_code_is_refused(tmp_path: Path) -> None:
    store = StateStore.for_state_dir(tmp_path)
    store._raw("INSERT INTO schema_version (version, applied_at) VALUES (?, 0)", (LATEST_VERSION + 1,))
    store.close()
    for opening in (lambda: StateStore.reader(tmp_path), lambda: StateStore.for_state_dir(tmp_path)):
        with pytest.raises(FailedPrecondition, match="upgrade godel-ray"):
            opening()


def test_reader_takes_a_state_dir_or_the_file(tmp_path: Path) -> None:
    StateStore.for_state_dir(tmp_path).close()
    for where in (tmp_path, tmp_path / DB_FILE):
        reader = StateStore.reader(where)
        assert reader.readonly and reader.path == tmp_path / DB_FILE
        reader.close()


def test_open_store_defaults_to_sqlite_in_the_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GODEL_STATE_URL", raising=False)
    monkeypatch.setenv("GODEL_STATE_DIR", str(tmp_path / "env-dir"))
    store = open_store()
    assert isinstance(store, StateStore) and store.path == (tmp_path / "env-dir" / DB_FILE).resolve()
    store.close()
    reader = open_store(readonly=True)
    assert reader.readonly
    reader.close()


def test_retention_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Retention.from_env() == Retention()
    monkeypatch.setenv("GODEL_RETAIN_EVENTS", "500")
    monkeypatch.setenv("GODEL_RETAIN_MIGRATION_DAYS", "2.5")
    assert Retention.from_env() == Retention(max_events=500, finished_migration_days=2.5)
    for name, bad in (("GODEL_RETAIN_EVENTS", "0"), ("GODEL_RETAIN_EVENTS", "many"),
                      ("GODEL_RETAIN_MIGRATION_DAYS", "inf"), ("GODEL_RETAIN_MIGRATION_DAYS", "nan"),
                      ("GODEL_RETAIN_MIGRATION_DAYS", "-1")):
        monkeypatch.setenv(name, bad)
        with pytest.raises(InvalidArgument, match=name):
            Retention.from_env()
        monkeypatch.delenv(name)


def test_open_store_reads_retention_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GODEL_RETAIN_EVENTS", "7")
    store = open_store(tmp_path, url="")
    assert store.retention.max_events == 7  # type: ignore[attr-defined]
    store.close()
