"""The ``Store`` contract: every backend passes every test here (SQLite, and PostgreSQL on a real
server these tests start themselves with ``pgserver``).

Where PostgreSQL cannot start on this machine its tests skip, saying why; under ``CI=true`` they
fail instead. No Ray: this suite belongs to the pure stage (``-m "not ray"``).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from godel_ray.control.store import CheckpointRecord, Retention, StateStore, Store, open_store
from godel_ray.control.store.schema import LATEST_VERSION
from godel_ray.errors import (
    AgentNotFound,
    ControlPlaneNotRunning,
    FailedPrecondition,
    InvalidArgument,
    LeaseLost,
)
from godel_ray.models import (
    Agent,
    AgentStatus,
    CandidateScore,
    Cluster,
    ClusterHealthState,
    ClusterStatus,
    EventKind,
    EventType,
    FederationEvent,
    Migration,
    MigrationPhase,
    PlacementDecision,
    SiteCapacity,
    SpawnConfig,
)

DAY_S = 86_400.0
Opener = Callable[..., Store]  # open(readonly=False, retention=None) -> a store on the same state


# --- backends ------------------------------------------------------------------------------------

@pytest.fixture()
def pg_url(pg_server: Any) -> Iterator[str]:
    """A fresh schema on the session's server (its own namespace, cheap to make), dropped after."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_server.get_uri(), autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {name}")
    yield f"{pg_server.get_uri()}&options=-csearch_path%3D{name}"
    with psycopg.connect(pg_server.get_uri(), autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA {name} CASCADE")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def opener(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Opener]:
    """Opens stores on one state: a state dir (SQLite) or one database (PostgreSQL)."""
    monkeypatch.delenv("GODEL_STATE_URL", raising=False)
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else ""
    opened: list[Store] = []

    def open_(*, readonly: bool = False, retention: Retention | None = None) -> Store:
        store = open_store(tmp_path / "state", readonly=readonly, url=url, retention=retention)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture()
def store(opener: Opener) -> Store:
    return opener()


def _agent(agent_id: str, cluster_id: str = "local", status: AgentStatus = AgentStatus.RUNNING,
           model: str = "m", **labels: str) -> Agent:
    return Agent(id=agent_id, cluster_id=cluster_id, status=status,
                 config=SpawnConfig(model=model, labels=labels, env={"SECRET": "hunter2"}))


def _event(agent_id: str, type_: EventType = EventType.AGENT_SPAWNED, **data: str) -> FederationEvent:
    return FederationEvent(kind=EventKind.AGENT, type=type_.value, cluster_id="c1", agent_id=agent_id, data=data)


# --- round trips ---------------------------------------------------------------------------------

def test_opens_at_the_latest_schema_version_and_reopens(opener: Opener) -> None:
    first = opener()
    assert first.schema_version() == LATEST_VERSION
    first.put_cluster(Cluster(id="local"))
    first.close()
    again = opener()  # migrations are idempotent; the committed row survived the close
    assert again.schema_version() == LATEST_VERSION
    assert [c.id for c in again.clusters()] == ["local"]


def test_clusters_and_health_round_trip(store: Store) -> None:
    east = Cluster(id="gpu-east", endpoint="127.0.0.1:5000", region="us-east", max_agents=7, auth_token_file="/t")
    store.put_cluster(east)
    store.put_cluster(Cluster(id="a-first"))
    assert store.cluster("gpu-east") == east
    assert [c.id for c in store.clusters()] == ["a-first", "gpu-east"]
    store.put_cluster(east.model_copy(update={"maintenance": True}))
    assert store.cluster("gpu-east") == east.model_copy(update={"maintenance": True})
    health = ClusterHealthState(cluster_id="gpu-east", status=ClusterStatus.DEGRADED, rtt_ms=3.5,
                                capacity=SiteCapacity(max_agents=7, gpu_types=["nvidia-a100"], free_cpus=1.25))
    store.put_health(health)
    store.put_health(ClusterHealthState(cluster_id="a-first"))
    assert store.health("gpu-east") == health
    assert [h.cluster_id for h in store.all_health()] == ["a-first", "gpu-east"]
    store.delete_cluster("gpu-east")
    assert store.cluster("gpu-east") is None and store.health("gpu-east") is None
    assert store.cluster("never") is None and store.health("never") is None


def test_agents_filters_counts_and_spawn_order(store: Store) -> None:
    store.put_agent(_agent("a1", team="x"))
    store.put_agent(_agent("a2", "remote", model="big", team="y"))
    store.put_agent(_agent("a3", "remote", AgentStatus.TERMINATED, team="x"))
    store.put_agent(_agent("a1", "local", AgentStatus.MIGRATING, team="x"))  # an update keeps a1 first
    assert store.agent("a2") == _agent("a2", "remote", model="big", team="y").model_copy(
        update={"created_at": store.require_agent("a2").created_at})
    assert [a.id for a in store.agents()] == ["a1", "a2", "a3"]
    assert [a.id for a in store.agents(cluster_id="remote")] == ["a2", "a3"]
    assert [a.id for a in store.agents(status=AgentStatus.TERMINATED)] == ["a3"]
    assert [a.id for a in store.agents(status="migrating")] == ["a1"]
    assert [a.id for a in store.agents(labels={"team": "x"})] == ["a1", "a3"]
    assert [a.id for a in store.agents(model="big")] == ["a2"]
    assert [a.id for a in store.agents(cluster_id="remote", labels={"team": "x"})] == ["a3"]
    with pytest.raises(InvalidArgument, match="unknown agent status 'sleeping'"):  # the balancer's words
        store.agents(status="sleeping")
    assert store.active_counts() == {"local": 1, "remote": 1}
    assert store.counts_by_status("remote") == {"running": 1, "terminated": 1}
    assert store.agent("missing") is None
    with pytest.raises(AgentNotFound, match="swarmctl agent list"):
        store.require_agent("missing")


def test_spawn_commit_point_is_atomic_and_keyed(store: Store) -> None:
    decision = PlacementDecision(agent_id="a1", chosen="local", rule="local-under-threshold",
                                 candidates=[CandidateScore(cluster_id="local", score=87.5, factors={"rtt": 1.0})],
                                 rejections={"gpu": "no GPUs"})
    store.put_spawn(_agent("a1"), decision, "key-1")
    assert store.idempotent_agent("key-1") == "a1"
    assert store.decision("a1") == decision
    assert store.idempotent_agent("other") is None
    store.put_spawn(_agent("a2"), decision.model_copy(update={"agent_id": "a2"}), None)
    assert store.agent("a2") is not None
    # A failure inside the commit point leaves nothing of it behind.
    store._PUT_DECISION = "INSERT INTO no_such_table (a, b) VALUES (?, ?)"  # type: ignore[attr-defined]
    with pytest.raises(Exception, match="no_such_table"):
        store.put_spawn(_agent("a3"), decision, "key-3")
    assert store.agent("a3") is None and store.idempotent_agent("key-3") is None
    del store._PUT_DECISION  # type: ignore[attr-defined]
    store.delete_decision("a1")
    assert store.decision("a1") is None


def test_events_get_a_global_rising_seq_in_order(store: Store) -> None:
    stored = store.append_events([
        _event("a1"),
        _event("a2", EventType.COMMAND_STARTED, command="ls"),
        _event("a2", EventType.COMMAND_FINISHED, exit_code="0"),
    ])
    assert [e.seq for e in stored] == [1, 2, 3]
    more = store.append_events([_event("a1", EventType.AGENT_STATUS)])
    assert [e.seq for e in more] == [4]
    assert store.events() == [*stored, *more]
    assert store.events(1) == [*stored[1:], *more]
    assert store.events(0, 2) == stored[:2]
    assert store.events(agent_id="a2") == stored[1:]
    assert store.events(types=(EventType.COMMAND_FINISHED.value, EventType.COMMAND_STARTED.value)) == stored[1:]
    assert store.events(agent_id="a2", types=(EventType.COMMAND_STARTED,), limit=1) == stored[1:2]
    assert store.events(types=()) == []
    assert store.last_event_seq() == 4
    assert store.append_events([]) == []


def test_migrations_round_trip_in_start_order(store: Store) -> None:
    first = Migration(agent_id="a1", source="local", target="gpu")
    second = Migration(agent_id="a2", source="gpu", target="local")
    store.put_migration(first)
    store.put_migration(second)
    done = first.model_copy(update={"phase": MigrationPhase.COMPLETED, "finished_at": first.started_at + 1.5,
                                    "downtime_s": 0.25, "bytes_moved": 4096})
    store.put_migration(done)
    assert store.migration(first.id) == done
    assert store.migrations() == [done, second]
    assert store.migrations("a2") == [second]
    assert store.migrations("nobody") == [] and store.migration("mig-none") is None


def test_checkpoint_records_round_trip_exactly(store: Store) -> None:
    record = CheckpointRecord("a1", 2, 1_712_345_678.123456, "/x.tar.gz", "/x.json", "abc", 5 * 2**32)
    store.put_checkpoint(record)
    assert store.checkpoint("a1") == record  # full float precision, 64-bit sizes
    newer = CheckpointRecord("a1", 3, 1_712_345_999.5, "/y.tar.gz", "/y.json", "def", 42)
    store.put_checkpoint(newer)
    assert store.checkpoint("a1") == newer
    store.delete_checkpoint("a1")
    assert store.checkpoint("a1") is None


def test_cursors_are_typed_and_read_the_meta_keys(store: Store) -> None:
    assert store.event_cursor("c1") == 0 and store.site_cursor("c1") == 0
    assert store.migration_attempt("a1") is None
    store.put_event_cursor("c1", 7)
    store.put_site_cursor("c1", 17)
    store.put_migration_attempt("a1", 1000.5)
    assert (store.event_cursor("c1"), store.site_cursor("c1"), store.migration_attempt("a1")) == (7, 17, 1000.5)
    # The same keys the control plane wrote as free-form meta before the typed methods existed.
    assert store.meta_int("buffer_seq:c1") == 7 and store.meta("site_seq:c1") == 17
    store.put_meta("migration_attempt:a2", 12)
    assert store.migration_attempt("a2") == 12.0
    store.put_meta("free", {"a": [1, 2]})
    assert store.meta("free") == {"a": [1, 2]} and store.meta("nope", 0) == 0 and store.meta_int("free", 3) == 3


# --- the commit point of a move: compare-and-set -----------------------------------------------------

def test_replace_agent_writes_only_over_the_expected_row(store: Store) -> None:
    running = _agent("a1", "local")
    store.put_agent(running)
    moved = running.model_copy(update={"cluster_id": "gpu", "epoch": 2})
    assert store.replace_agent(running, moved) is True
    assert store.require_agent("a1") == moved
    # The row changed underneath: every stale expectation loses and writes nothing.
    assert store.replace_agent(running, running.model_copy(update={"status_reason": "x"})) is False
    assert store.replace_agent(moved.model_copy(update={"epoch": 1}), moved) is False
    assert store.replace_agent(moved.model_copy(update={"cluster_id": "local"}), moved) is False
    assert store.require_agent("a1") == moved
    assert store.replace_agent(_agent("ghost"), _agent("ghost")) is False and store.agent("ghost") is None
    with pytest.raises(InvalidArgument):
        store.replace_agent(moved, _agent("a2"))


def test_a_racing_kill_wins_over_the_commit(store: Store) -> None:
    before = _agent("a1", "local", AgentStatus.MIGRATING)
    store.put_agent(before)
    store.put_agent(before.model_copy(update={"status": AgentStatus.TERMINATED}))  # the kill lands first
    committed = store.replace_agent(before, before.model_copy(update={"cluster_id": "gpu", "epoch": 2,
                                                                       "status": AgentStatus.RUNNING}))
    assert committed is False
    assert store.require_agent("a1").status is AgentStatus.TERMINATED


def test_concurrent_replacements_of_one_row_let_exactly_one_win(store: Store) -> None:
    base = _agent("a1")
    store.put_agent(base)
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def attempt(n: int) -> None:
        barrier.wait()
        results.append(store.replace_agent(base, base.model_copy(update={"epoch": 2, "node_id": str(n)})))

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]


# --- retention ----------------------------------------------------------------------------------

def test_retention_keeps_the_newest_events_and_seqs_keep_rising(opener: Opener) -> None:
    store = opener(retention=Retention(max_events=5, every_appends=10_000))
    store.append_events([_event(f"a{i}") for i in range(12)])
    result = store.apply_retention()
    assert result.events_deleted == 7
    assert [e.seq for e in store.events()] == [8, 9, 10, 11, 12]
    assert [e.seq for e in store.append_events([_event("late")])] == [13]
    assert store.apply_retention().events_deleted == 1


def test_retention_runs_by_itself_every_k_appends(opener: Opener) -> None:
    store = opener(retention=Retention(max_events=4, every_appends=3))
    for i in range(20):
        store.append_events([_event(f"a{i}")])
    seqs = [e.seq for e in store.events()]
    assert seqs == list(range(seqs[0], 21)) and 4 <= len(seqs) < 4 + 3


def test_retention_drops_old_finished_migrations_and_keeps_keys_forever(opener: Opener) -> None:
    store = opener(retention=Retention(max_events=1, finished_migration_days=7))
    now = 1_000 * DAY_S
    old = Migration(agent_id="a1", source="local", target="gpu", started_at=now - 40 * DAY_S,
                    finished_at=now - 39 * DAY_S, phase=MigrationPhase.COMPLETED)
    recent = Migration(agent_id="a1", source="gpu", target="local", started_at=now - 2 * DAY_S,
                       finished_at=now - 1 * DAY_S, phase=MigrationPhase.ROLLED_BACK)
    running = Migration(agent_id="a2", source="local", target="gpu", started_at=now - 90 * DAY_S)
    for migration in (old, recent, running):
        store.put_migration(migration)
    store.put_spawn(_agent("a1"), PlacementDecision(agent_id="a1"), "key-forever")
    store.append_events([_event("a1"), _event("a1")])
    result = store.apply_retention(now=now)
    assert (result.events_deleted, result.migrations_deleted) == (1, 1)
    assert [m.id for m in store.migrations()] == [recent.id, running.id]
    assert store.idempotent_agent("key-forever") == "a1" and store.agent("a1") is not None


def test_retention_applies_when_the_writer_opens(opener: Opener) -> None:
    opener().append_events([_event(f"a{i}") for i in range(6)])
    reopened = opener(retention=Retention(max_events=2))
    assert [e.seq for e in reopened.events()] == [5, 6]


# --- robustness: one bad row never poisons a table ------------------------------------------------

def _poisoned(store: Store) -> dict[str, str]:
    """Write one good and one unreadable row (a non-finite number, stored as null) of each kind."""
    inf = float("inf")
    store.put_cluster(Cluster(id="good"))
    store.put_cluster(Cluster(id="bad-cluster").model_copy(update={"cost_per_hour": inf}))
    store.put_health(ClusterHealthState(cluster_id="good"))
    store.put_health(ClusterHealthState(cluster_id="bad-health").model_copy(
        update={"capacity": SiteCapacity().model_copy(update={"free_cpus": float("nan")})}))
    store.put_agent(_agent("good"))
    bad = _agent("bad-agent")
    store.put_agent(bad.model_copy(update={"config": bad.config.model_copy(update={"checkpoint_interval_s": inf})}))
    store.put_migration(Migration(id="mig-good", agent_id="good", source="a", target="b"))
    store.put_migration(Migration(id="mig-bad", agent_id="good", source="a", target="b").model_copy(
        update={"started_at": inf}))
    store.put_decision(PlacementDecision(agent_id="good"))
    store.put_decision(PlacementDecision(agent_id="bad-decision").model_copy(update={"decided_at": inf}))
    store.append_events([_event("good"), _event("bad-event").model_copy(update={"ts": inf}), _event("good")])
    return {"clusters": "bad-cluster", "health": "bad-health", "agents": "bad-agent", "migrations": "mig-bad",
            "decisions": "bad-decision", "events": "2"}


def test_an_unreadable_row_is_reported_and_skipped_never_the_table(store: Store,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    bad = _poisoned(store)
    with caplog.at_level(logging.WARNING):
        assert [c.id for c in store.clusters()] == ["good"]
        assert [h.cluster_id for h in store.all_health()] == ["good"]
        assert [a.id for a in store.agents()] == ["good"]
        assert [m.id for m in store.migrations()] == ["mig-good"]
        assert [e.seq for e in store.events()] == [1, 3]
        assert store.cluster("bad-cluster") is None and store.agent("bad-agent") is None
        assert store.health("bad-health") is None and store.decision("bad-decision") is None
        assert store.migration("mig-bad") is None and store.decision("good") is not None
    for table, key in bad.items():
        assert any(table in r.getMessage() and key in r.getMessage() for r in caplog.records), (table, key)
    assert "hunter2" not in caplog.text  # the row's values (an agent's env) never reach the log
    assert store.active_counts() == {"local": 2}  # counts come from columns, not the JSON


# --- the control-plane lease and its fencing token ------------------------------------------------

LIVE_S = 600.0  # a lease that cannot expire during a test
EXPIRED_S = 0.0  # a lease that has expired by the next statement (the database's clock only rises)


def test_the_lease_goes_to_one_holder_while_it_is_live(opener: Opener) -> None:
    a, b = opener(), opener()
    assert a.lease() is None
    token = a.acquire_lease("head-a", LIVE_S, address="10.0.0.1:6379")
    assert token is not None and token >= 1
    assert b.acquire_lease("head-b", LIVE_S) is None
    lease = b.lease()
    assert lease is not None and lease.active
    assert (lease.holder, lease.token, lease.address) == ("head-a", token, "10.0.0.1:6379")
    assert lease.acquired_at <= lease.renewed_at < lease.expires_at
    assert a.renew_lease("head-a", token, LIVE_S)
    assert not b.renew_lease("head-b", token, LIVE_S) and not b.renew_lease("head-a", token + 1, LIVE_S)
    b.put_cluster(Cluster(id="from-b"))  # b never acquired: it writes unfenced (one control plane, tools)
    a.put_cluster(Cluster(id="from-a"))
    assert [c.id for c in a.clusters()] == ["from-a", "from-b"]


def test_an_expired_lease_is_taken_with_a_higher_token_and_fences_the_old_holder(opener: Opener) -> None:
    old, new = opener(), opener()
    old_token = old.acquire_lease("head-a", EXPIRED_S)
    assert old_token is not None
    before = _agent("before")
    old.put_agent(before)  # still ours: nobody took it yet, even though it expired
    new_token = new.acquire_lease("head-b", LIVE_S, address="b:6379")
    assert new_token is not None and new_token > old_token
    # the deposed holder wakes up: it can neither renew nor write, and nothing it tried is there
    assert not old.renew_lease("head-a", old_token, LIVE_S)
    writes: list[Callable[[], object]] = [
        lambda: old.put_agent(_agent("after")),
        lambda: old.put_spawn(_agent("spawned"), PlacementDecision(agent_id="spawned"), "k1"),
        lambda: old.replace_agent(before, before.model_copy(update={"status": AgentStatus.FAILED})),
        lambda: old.append_events([_event("before")]),
        lambda: old.put_event_cursor("c1", 9),
        lambda: old.delete_cluster("local"),
    ]
    for write in writes:
        with pytest.raises(LeaseLost, match="head-a.*deposed"):
            write()
    assert [a.id for a in new.agents()] == ["before"] and new.agent("before") == before
    assert new.idempotent_agent("k1") is None and new.events() == [] and new.event_cursor("c1") == 0
    new.put_agent(_agent("after"))
    assert [a.id for a in new.agents()] == ["before", "after"]
    lease = old.lease()
    assert lease is not None and (lease.holder, lease.token, lease.address) == ("head-b", new_token, "b:6379")


def test_tokens_only_rise_across_release_and_reacquisition(opener: Opener) -> None:
    a, b = opener(), opener()
    first = a.acquire_lease("head-a", LIVE_S)
    assert first is not None
    again = a.acquire_lease("head-a", LIVE_S)  # the same holder restarted: a new token fences the old one
    assert again is not None and again > first
    assert not a.renew_lease("head-a", first, LIVE_S) and a.renew_lease("head-a", again, LIVE_S)
    assert b.release_lease("head-b", again) is False
    assert a.release_lease("head-a", again)
    lease = b.lease()
    assert lease is not None and not lease.active and lease.token == again
    taken = b.acquire_lease("head-b", LIVE_S)  # released: no need to wait for the expiry
    assert taken is not None and taken > again
    with pytest.raises(LeaseLost):
        a.put_meta("k", 1)


def test_concurrent_acquisitions_let_exactly_one_win(opener: Opener) -> None:
    stores = [opener() for _ in range(4)]
    won: list[int | None] = [None] * len(stores)

    def attempt(n: int) -> None:
        won[n] = stores[n].acquire_lease(f"head-{n}", LIVE_S)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [n for n, token in enumerate(won) if token is not None]
    assert len(winners) == 1
    lease = stores[0].lease()
    assert lease is not None and lease.holder == f"head-{winners[0]}" and lease.token == won[winners[0]]


def test_a_reader_sees_the_lease_and_cannot_take_it(opener: Opener) -> None:
    writer = opener()
    token = writer.acquire_lease("head-a", LIVE_S, address="a:6379")
    reader = opener(readonly=True)
    lease = reader.lease()
    assert lease is not None and lease.holder == "head-a" and lease.token == token
    with pytest.raises(FailedPrecondition, match="readonly"):
        reader.acquire_lease("head-r", LIVE_S)
    with pytest.raises(InvalidArgument):
        writer.acquire_lease("", LIVE_S)


# --- readers ------------------------------------------------------------------------------------

def test_a_reader_sees_the_writers_rows_and_cannot_write(opener: Opener) -> None:
    writer = opener()
    writer.put_cluster(Cluster(id="local"))
    writer.put_agent(_agent("a1"))
    reader = opener(readonly=True)
    assert reader.readonly and [c.id for c in reader.clusters()] == ["local"]
    writer.put_agent(_agent("a2"))  # written after the reader opened: still visible
    assert [a.id for a in reader.agents()] == ["a1", "a2"]
    writes: list[Callable[[], object]] = [
        lambda: reader.put_agent(_agent("a3")),
        lambda: reader.replace_agent(_agent("a1"), _agent("a1")),
        lambda: reader.append_events([_event("a1")]),
        lambda: reader.put_meta("k", 1),
        lambda: reader.put_site_cursor("local", 3),
        lambda: reader.delete_cluster("local"),
        lambda: reader.apply_retention(),
    ]
    for write in writes:
        with pytest.raises(FailedPrecondition, match="readonly"):
            write()
    assert [a.id for a in writer.agents()] == ["a1", "a2"] and writer.meta("k") is None


def test_a_reader_without_state_says_run_up(opener: Opener) -> None:
    with pytest.raises(ControlPlaneNotRunning, match="swarmctl up"):
        opener(readonly=True)


def test_sqlite_keeps_the_state_store_name(tmp_path: Path) -> None:
    assert isinstance(open_store(tmp_path, url=""), StateStore)


# --- PostgreSQL only: the connection and the URL -------------------------------------------------

@pytest.mark.postgres
def test_postgres_is_chosen_by_the_state_url(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from godel_ray.control.store.postgres import PostgresStore

    monkeypatch.setenv("GODEL_STATE_URL", pg_url)
    store = open_store(tmp_path)
    try:
        assert isinstance(store, PostgresStore) and not (tmp_path / "godel.db").exists()
    finally:
        store.close()


@pytest.mark.postgres
def test_postgres_replaces_a_connection_the_server_dropped(pg_url: str, pg_server: Any) -> None:
    import psycopg

    store = open_store(url=pg_url)
    try:
        store.put_cluster(Cluster(id="local"))
        backend_pid = store._conn.info.backend_pid  # type: ignore[attr-defined]
        with psycopg.connect(pg_server.get_uri(), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (backend_pid,))
        with pytest.raises(psycopg.OperationalError):
            store.clusters()  # the call that was cut off raises: it is never silently retried
        assert [c.id for c in store.clusters()] == ["local"]  # the next one reconnects
        store.put_cluster(Cluster(id="east"))
        assert [c.id for c in store.clusters()] == ["east", "local"]
    finally:
        store.close()


@pytest.mark.postgres
def test_postgres_writers_opening_at_once_migrate_once(pg_url: str) -> None:
    stores: list[Store] = []
    barrier = threading.Barrier(4)

    def open_one() -> None:
        barrier.wait()
        stores.append(open_store(url=pg_url))

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len(stores) == 4 and {s.schema_version() for s in stores} == {LATEST_VERSION}
    finally:
        for s in stores:
            s.close()


def test_an_unreachable_postgres_is_named_without_its_password() -> None:
    pytest.importorskip("psycopg")
    url = "postgresql://godel:s3cret-pw@127.0.0.1:1/godel?connect_timeout=2"
    with pytest.raises(FailedPrecondition, match="cannot reach the state store") as err:
        open_store(url=url)
    assert "s3cret-pw" not in str(err.value) and "godel:***@127.0.0.1:1" in str(err.value)


def test_an_unknown_state_url_scheme_is_refused_without_its_password(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="unsupported scheme 'mysql'") as err:
        open_store(tmp_path, url="mysql://root:hunter2@db/godel")
    assert "hunter2" not in str(err.value)
