"""MigrationExecutor against fake clusters (no Ray): the shell carries out the machine's actions,
writes the commit to the real state store, rolls back, and records cooldown, phases and events."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from godel_ray.control.migrator import COOLDOWN_KEY, MigrationExecutor
from godel_ray.control.store import StateStore
from godel_ray.core.cluster_client import KILL_REASON_MIGRATED
from godel_ray.core.placement import ClusterView
from godel_ray.errors import AgentNotFound, ClusterUnavailable, CooldownActive, MigrationInProgress
from godel_ray.models import (
    Agent,
    AgentSnapshot,
    AgentStatus,
    Cluster,
    ClusterHealthState,
    EventKind,
    MigrationPhase,
    PhaseStamp,
    SpawnConfig,
)


class FakeCluster:
    def __init__(self, cluster_id: str) -> None:
        self.id = cluster_id
        self.agents: dict[str, Agent] = {}
        self.fail: dict[str, Exception] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def handle(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((method, kwargs))
        if method in self.fail:
            raise self.fail[method]
        agent_id = args[0] if isinstance(args[0], str) else args[0].agent.id
        if method != "import_" and agent_id not in self.agents:
            raise AgentNotFound(f"agent {agent_id} is not on {self.id}", agent_id=agent_id)
        if method == "export":
            agent = self.agents[agent_id]
            self.agents[agent_id] = agent.model_copy(update={"status": AgentStatus.MIGRATING})
            return AgentSnapshot(agent=agent, archive=b"x" * 100, sha256="0" * 64)
        if method == "import_":
            snapshot: AgentSnapshot = args[0]
            self.agents[agent_id] = snapshot.agent.model_copy(update={"status": AgentStatus.RUNNING,
                                                                     "cluster_id": self.id})
            return self.agents[agent_id]
        if method == "status":
            return self.agents[agent_id]
        if method == "resume":
            self.agents[agent_id] = self.agents[agent_id].model_copy(update={"status": AgentStatus.RUNNING})
            return self.agents[agent_id]
        if method == "kill":
            agent = self.agents.pop(agent_id)
            return agent.model_copy(update={"status": AgentStatus.TERMINATED,
                                            "status_reason": kwargs.get("reason", "")})
        raise AssertionError(method)


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.store = StateStore.for_state_dir(tmp_path)
        self.clusters = {"src": FakeCluster("src"), "dst": FakeCluster("dst")}
        self.events: list[tuple[EventKind, str, str, str, dict[str, str]]] = []
        self.now = 1000.0
        self.executor = MigrationExecutor(self.store, self.call, self.emit, cooldown_s=30.0,
                                          clock=lambda: self.now, put=lambda value: value)
        self.agent = Agent(id="ag-1", config=SpawnConfig(labels={"k": "v"}), cluster_id="src",
                           status=AgentStatus.RUNNING, epoch=3)
        self.store.put_agent(self.agent)
        self.clusters["src"].agents["ag-1"] = self.agent

    async def call(self, cluster_id: str, method: str, *args: Any, timeout_s: float | None = None,
                   **kwargs: Any) -> Any:
        self.now += 0.5
        return await self.clusters[cluster_id].handle(method, *args, **kwargs)

    def emit(self, kind: EventKind, type_: str, cluster_id: str, agent_id: str = "", **data: str) -> None:
        self.events.append((kind, type_, cluster_id, agent_id, data))

    def migrate(self) -> Any:
        migration = self.executor.begin(self.agent, "dst")
        assert self.store.agent("ag-1").status is AgentStatus.MIGRATING  # type: ignore[union-attr]
        return asyncio.run(self.executor.run(migration, self.agent))

    def views(self) -> dict[str, ClusterView]:
        return {cid: ClusterView(cluster=Cluster(id=cid, endpoint=f"{cid}:1"),
                                 health=ClusterHealthState(cluster_id=cid), active_agents=0)
                for cid in self.clusters}


def test_happy_path_commits_the_new_location_and_kills_the_source(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    done = h.migrate()
    assert done.phase is MigrationPhase.COMPLETED and done.error == ""
    assert (done.epoch_from, done.epoch_to, done.bytes_moved) == (3, 4, 100)
    assert [s.phase for s in done.phases] == [
        MigrationPhase.VALIDATING, MigrationPhase.FREEZING, MigrationPhase.EXPORTING, MigrationPhase.TRANSFERRING,
        MigrationPhase.IMPORTING, MigrationPhase.VERIFYING, MigrationPhase.COMMITTING, MigrationPhase.CLEANING_UP,
        MigrationPhase.COMPLETED]
    assert done.downtime_s is not None and done.downtime_s > 0
    row = h.store.agent("ag-1")
    assert row is not None and (row.cluster_id, row.epoch, row.status) == ("dst", 4, AgentStatus.RUNNING)
    assert row.config.labels == {"k": "v"}
    assert "ag-1" not in h.clusters["src"].agents and h.clusters["dst"].agents["ag-1"].epoch == 4
    kill = [kw for m, kw in h.clusters["src"].calls if m == "kill"]
    assert kill == [{"epoch": 3, "reason": KILL_REASON_MIGRATED}]
    assert h.store.migrations("ag-1")[-1] == done
    types = [t for _, t, *_ in h.events]
    assert types[0] == "migration.started" and types[-1] == "migration.completed"
    assert h.store.meta(COOLDOWN_KEY + "ag-1") == 1000.0
    assert not h.executor.in_progress


def test_import_failure_rolls_back_deletes_target_and_resumes_source(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.clusters["dst"].fail["import_"] = ClusterUnavailable("site died")
    done = h.migrate()
    assert done.phase is MigrationPhase.ROLLED_BACK and "import failed" in done.error
    assert [m for m, _ in h.clusters["dst"].calls] == ["import_", "kill"]  # DeleteTarget at epoch_to
    assert h.clusters["dst"].calls[1][1]["epoch"] == 4
    assert h.clusters["src"].agents["ag-1"].status is AgentStatus.RUNNING  # resumed
    assert h.store.agent("ag-1") == h.agent  # the row is back as it was
    assert [t for _, t, *_ in h.events][-1] == "migration.rolled_back"


def test_export_failure_rolls_back_without_touching_the_target(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.clusters["src"].fail["export"] = ClusterUnavailable("source died")
    h.clusters["src"].fail["resume"] = ClusterUnavailable("source died")
    done = h.migrate()
    assert done.phase is MigrationPhase.ROLLED_BACK
    assert "freeze failed" in done.error and "resume failed during rollback" in done.error
    assert h.clusters["dst"].calls == []
    assert h.store.agent("ag-1") == h.agent


def test_failed_kill_source_after_commit_still_completes(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.clusters["src"].fail["kill"] = ClusterUnavailable("source gone")
    done = h.migrate()
    assert done.phase is MigrationPhase.COMPLETED and "kill_source" in done.error
    assert h.store.agent("ag-1").cluster_id == "dst"  # type: ignore[union-attr]


def test_validate_refuses_cooldown_with_time_left_and_a_second_migration(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    views = h.views()
    h.executor.validate(h.agent, views["src"], views["dst"], "dst")  # allowed
    h.executor.begin(h.agent, "dst")
    with pytest.raises(MigrationInProgress):
        h.executor.validate(h.agent, views["src"], views["dst"], "dst")
    h.executor.in_progress.clear()
    h.now += 10
    with pytest.raises(CooldownActive, match=r"retry in 20\.0s") as err:
        h.executor.validate(h.agent, views["src"], views["dst"], "dst")
    assert err.value.retry_after_s == pytest.approx(20.0)


def test_recover_unfinished_rolls_back_a_migration_cut_before_its_commit(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.clusters["src"].fail["import_"] = AssertionError("never reached")  # nothing but rollback may run
    migration = h.executor.begin(h.agent, "dst")
    migration.phases = [PhaseStamp(phase=MigrationPhase.VALIDATING, at=1.0),
                        PhaseStamp(phase=MigrationPhase.FREEZING, at=2.0),
                        PhaseStamp(phase=MigrationPhase.IMPORTING, at=3.0)]
    migration.phase = MigrationPhase.IMPORTING
    h.store.put_migration(migration)
    h.executor.in_progress.clear()  # a new balancer knows nothing
    done = asyncio.run(h.executor.recover_unfinished())
    assert [m.phase for m in done] == [MigrationPhase.ROLLED_BACK]
    assert "balancer restarted during importing" in done[0].error
    assert [m for m, _ in h.clusters["dst"].calls] == ["kill"] and [m for m, _ in h.clusters["src"].calls] == ["resume"]
    row = h.store.agent("ag-1")
    assert row is not None and (row.cluster_id, row.epoch, row.status) == ("src", 3, AgentStatus.RUNNING)
