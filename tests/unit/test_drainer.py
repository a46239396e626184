"""Drainer over the real owners and fake clusters (no Ray): maintenance first, each agent placed
by the normal rules and moved live with reason ``drain``, an agent nothing else can take listed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from godel_ray.control.drainer import DRAIN_REASON, Drainer
from godel_ray.control.migrator import MigrationExecutor
from godel_ray.errors import ClusterNotFound
from godel_ray.models import Agent, AgentStatus, EventKind, MigrationPhase, SiteCapacity, SpawnConfig
from tests.fakes import Control


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.control = Control(tmp_path)
        self.events: list[tuple[str, str, dict[str, str]]] = []
        self.executor = MigrationExecutor(self.control.store, self.control.table, self.control.gateway, self.emit,
                                          ledger=self.control.ledger, views=self.control.clusters.view,
                                          cooldown_s=30.0, clock=self.control.clock)
        self.drainer = Drainer(self.control.clusters, self.control.table, self.executor, self.emit)
        cpus = SiteCapacity(max_agents=10, available_agents=10, total_cpus=8, free_cpus=8)
        self.control.report("src", cpus.model_copy(update={"gpu_types": ["nvidia-a100"], "total_gpus": 1,
                                                           "free_gpus": {"nvidia-a100": 1.0}}))
        self.control.report("dst", cpus)
        self.control.report("local", cpus)

    def emit(self, kind: EventKind, type_: str, cluster_id: str, agent_id: str = "", **data: str) -> None:
        self.events.append((type_, cluster_id, data))

    def agent(self, agent_id: str, **config: Any) -> Agent:
        return self.control.put_agent(Agent(id=agent_id, config=SpawnConfig(**config), cluster_id="src",
                                            status=AgentStatus.RUNNING, epoch=1))


def test_drain_moves_what_can_move_lists_what_cannot_and_leaves_maintenance(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.agent("ag-cpu", labels={"k": "v"})
    h.agent("ag-pinned", cluster="src")
    h.agent("ag-gpu", gpu_type="nvidia-a100")
    report = asyncio.run(h.drainer.drain("src", wait=True))

    assert report.cluster_id == "src" and report.maintenance
    assert h.control.clusters.require("src").maintenance  # what placement reads (the fake's health does not follow)
    assert h.control.store.cluster("src").maintenance  # type: ignore[union-attr]
    assert sorted(m.agent_id for m in report.migrations) == ["ag-cpu", "ag-pinned"]
    assert all(m.phase is MigrationPhase.COMPLETED and m.reason == DRAIN_REASON for m in report.migrations)
    for agent_id in ("ag-cpu", "ag-pinned"):
        row = h.control.store.agent(agent_id)
        assert row is not None and row.cluster_id in ("dst", "local") and row.status is AgentStatus.RUNNING
    assert list(report.unmovable) == ["ag-gpu"] and "gpu" in report.unmovable["ag-gpu"].lower()
    gpu = h.control.store.agent("ag-gpu")
    assert gpu is not None and (gpu.cluster_id, gpu.status) == ("src", AgentStatus.RUNNING)
    assert not report.complete
    types = [t for t, *_ in h.events]
    assert types[0] == "cluster.draining" and types[-1] == "cluster.drained"
    assert h.events[-1][2]["unmovable"] == "ag-gpu"
    started = [d for t, _, d in h.events if t == "migration.started"]
    assert {d["reason"] for d in started} == {DRAIN_REASON}


def test_drain_without_wait_returns_the_moves_as_started_and_a_second_drain_lists_them_as_moving(
        tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.agent("ag-cpu")

    async def scenario() -> tuple[Any, Any]:
        first = await h.drainer.drain("src")
        second = await h.drainer.drain("src")
        for task in list(h.executor._tasks.values()):
            await task
        return first, second

    first, second = asyncio.run(scenario())
    assert [m.phase for m in first.migrations] == [MigrationPhase.VALIDATING] and first.unmovable == {}
    assert second.migrations == [] and "already migrating" in second.unmovable["ag-cpu"]
    assert h.control.store.agent("ag-cpu").cluster_id != "src"  # type: ignore[union-attr]


def test_drain_of_an_unknown_cluster_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.agent("ag-cpu")
    with pytest.raises(ClusterNotFound):
        asyncio.run(h.drainer.drain("nowhere"))
    assert h.events == [] and h.control.store.agent("ag-cpu").cluster_id == "src"  # type: ignore[union-attr]
