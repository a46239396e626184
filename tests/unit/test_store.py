"""The state store: round trips of every row kind, and a read-only reader sees the writer's rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from godel_ray.control.store import CheckpointRecord, StateStore
from godel_ray.errors import ControlPlaneNotRunning
from godel_ray.models import (
    Agent,
    AgentStatus,
    Cluster,
    ClusterHealthState,
    ClusterStatus,
    EventKind,
    FederationEvent,
    Migration,
    PlacementDecision,
    SiteCapacity,
    SpawnConfig,
)


@pytest.fixture()
def store(tmp_path: Path) -> StateStore:
    return StateStore.for_state_dir(tmp_path)


def _agent(agent_id: str, cluster_id: str = "local", status: AgentStatus = AgentStatus.RUNNING, **labels: str
           ) -> Agent:
    return Agent(id=agent_id, cluster_id=cluster_id, status=status,
                 config=SpawnConfig(model="m", labels=labels, env={"SECRET": "x"}))


def test_cluster_and_health_round_trip(store: StateStore) -> None:
    cluster = Cluster(id="gpu-east", endpoint="127.0.0.1:5000", region="us-east", max_agents=7,
                      auth_token_file="/tmp/t")
    store.put_cluster(cluster)
    assert store.cluster("gpu-east") == cluster
    assert [c.id for c in store.clusters()] == ["gpu-east"]
    health = ClusterHealthState(cluster_id="gpu-east", status=ClusterStatus.DEGRADED, rtt_ms=3.5,
                                capacity=SiteCapacity(max_agents=7, gpu_types=["nvidia-a100"]))
    store.put_health(health)
    assert store.health("gpu-east") == health
    store.delete_cluster("gpu-east")
    assert store.cluster("gpu-east") is None and store.health("gpu-east") is None


def test_agents_filters_and_counts(store: StateStore) -> None:
    store.put_agent(_agent("a1"))
    store.put_agent(_agent("a2", "remote"))
    store.put_agent(_agent("a3", "remote", AgentStatus.TERMINATED))
    assert store.agent("a1") == _agent("a1").model_copy(update={"created_at": store.agent("a1").created_at})
    assert [a.id for a in store.agents(cluster_id="remote")] == ["a2", "a3"]
    assert [a.id for a in store.agents(status=AgentStatus.TERMINATED)] == ["a3"]
    assert store.active_counts() == {"local": 1, "remote": 1}
    assert store.counts_by_status("remote") == {"running": 1, "terminated": 1}
    assert store.agent("missing") is None


def test_spawn_commit_is_atomic_and_keyed(store: StateStore) -> None:
    agent = _agent("a1")
    decision = PlacementDecision(agent_id="a1", chosen="local", rule="local-under-threshold",
                                 rejections={"gpu": "no GPUs"})
    store.put_spawn(agent, decision, "key-1")
    assert store.idempotent_agent("key-1") == "a1"
    assert store.decision("a1") == decision
    assert store.idempotent_agent("other") is None


def test_events_get_global_rising_seq(store: StateStore) -> None:
    stored = store.append_events([
        FederationEvent(kind=EventKind.AGENT, type="agent.spawned", cluster_id="c1", agent_id="a1"),
        FederationEvent(kind=EventKind.COMMAND, type="command.finished", cluster_id="c2", agent_id="a2",
                        data={"exit_code": "0"}),
    ])
    assert [e.seq for e in stored] == [1, 2]
    assert store.events(1) == stored[1:]
    assert store.events(agent_id="a2") == stored[1:]
    assert store.events(types=("agent.spawned",)) == stored[:1]
    assert store.last_event_seq() == 2


def test_migrations_checkpoints_meta(store: StateStore) -> None:
    migration = Migration(agent_id="a1", source="local", target="gpu")
    store.put_migration(migration)
    assert store.migrations("a1") == [migration] and store.migration(migration.id) == migration
    record = CheckpointRecord("a1", 2, 10.0, "/x.tar.gz", "/x.json", "abc", 42)
    store.put_checkpoint(record)
    assert store.checkpoint("a1") == record
    store.delete_checkpoint("a1")
    assert store.checkpoint("a1") is None
    store.put_meta("site_seq:c1", 17)
    assert store.meta("site_seq:c1") == 17 and store.meta("nope", 0) == 0


def test_reader_sees_writer_rows_and_cannot_write(store: StateStore, tmp_path: Path) -> None:
    store.put_cluster(Cluster(id="local"))
    store.put_agent(_agent("a1"))
    reader = StateStore.reader(tmp_path)
    assert [c.id for c in reader.clusters()] == ["local"]
    store.put_agent(_agent("a2"))  # written after the reader opened: still visible
    assert [a.id for a in reader.agents()] == ["a1", "a2"]
    with pytest.raises(Exception, match="readonly"):
        reader.put_agent(_agent("a3"))


def test_reader_without_state_says_run_up(tmp_path: Path) -> None:
    with pytest.raises(ControlPlaneNotRunning, match="swarmctl up"):
        StateStore.reader(tmp_path / "nothing")


def test_replace_agent_is_a_compare_and_set_on_cluster_epoch_and_status(tmp_path: Path) -> None:
    store = StateStore.for_state_dir(tmp_path)
    row = Agent(id="ag-cas", config=SpawnConfig(), cluster_id="a", status=AgentStatus.MIGRATING, epoch=2)
    store.put_agent(row)
    moved = row.model_copy(update={"cluster_id": "b", "epoch": 3, "status": AgentStatus.RUNNING})
    killed = row.model_copy(update={"status": AgentStatus.TERMINATED})
    assert store.replace_agent(row, killed) is True  # the kill lands first
    assert store.replace_agent(row, moved) is False  # the commit sees a row it did not expect
    assert store.agent("ag-cas") == killed
    assert store.replace_agent(Agent(id="ag-none", config=SpawnConfig()), moved) is False
