"""MigrationExecutor against fake clusters (no Ray): the shell carries out the machine's actions,
writes the commit to the real state store, rolls back, and records cooldown, phases and events."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from godel_ray.control.agent_ops import AgentOps
from godel_ray.control.migrator import MigrationExecutor
from godel_ray.core.cluster_client import KILL_REASON_MIGRATED
from godel_ray.core.placement import ClusterView
from godel_ray.errors import ClusterUnavailable, CooldownActive, MigrationInProgress
from godel_ray.models import (
    Agent,
    AgentStatus,
    Cluster,
    ClusterHealthState,
    EventKind,
    Migration,
    MigrationPhase,
    PhaseStamp,
    SpawnConfig,
)
from tests.fakes import Control


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.control = Control(tmp_path)
        self.store = self.control.store
        self.clusters = self.control.fakes
        self.events: list[tuple[EventKind, str, str, str, dict[str, str]]] = []
        self.executor = MigrationExecutor(self.store, self.control.table, self.gateway, self.emit,
                                          ledger=self.control.ledger, views=self.control.clusters.view,
                                          cooldown_s=30.0, clock=self.clock, put=lambda value: value)
        self.agent = self.control.put_agent(Agent(id="ag-1", config=SpawnConfig(labels={"k": "v"}), cluster_id="src",
                                                  status=AgentStatus.RUNNING, epoch=3))

    @property
    def now(self) -> float:
        return self.control.now

    @now.setter
    def now(self, value: float) -> None:
        self.control.now = value

    def clock(self) -> float:
        return self.control.now

    def gateway(self, cluster_id: str) -> Any:
        self.control.now += 0.5  # every cluster call takes a while
        return self.control.gateway(cluster_id)

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
    assert h.store.migration_attempt("ag-1") == 1000.0
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


def _no_copy_anywhere(h: Harness) -> bool:
    return all("ag-1" not in fake.agents for fake in h.clusters.values())


def test_kill_during_the_move_wins_the_commit_is_refused_and_no_copy_survives(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    ops = AgentOps(h.control.gateway, h.control.table, h.store, clock=h.clock)

    async def scenario() -> tuple[Agent, Migration]:
        verify = h.clusters["dst"].gate("status")  # the move waits with its copy imported on dst
        task = h.executor.start(h.executor.begin(h.agent, "dst"), h.agent)
        await h.clusters["dst"].reached("status")
        killed = await ops.kill("ag-1")  # swarmctl agent kill, mid-move
        verify.set()
        return killed, await task

    killed, done = asyncio.run(scenario())
    assert killed.status is AgentStatus.TERMINATED
    assert done.phase is MigrationPhase.ROLLED_BACK and "commit failed" in done.error
    row = h.store.agent("ag-1")
    assert row is not None and (row.cluster_id, row.epoch, row.status) == ("src", 3, AgentStatus.TERMINATED)
    assert h.control.table.get("ag-1") == row
    assert _no_copy_anywhere(h)
    assert (h.control.ledger.holds("src"), h.control.ledger.holds("dst")) == (0, 0)


def test_kill_that_read_the_row_before_the_commit_kills_the_moved_agent_too(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    ops = AgentOps(h.control.gateway, h.control.table, h.store, clock=h.clock)

    async def scenario() -> tuple[Agent, Migration]:
        verify = h.clusters["dst"].gate("status")
        source_kill = h.clusters["src"].gate("kill")
        task = h.executor.start(h.executor.begin(h.agent, "dst"), h.agent)
        await h.clusters["dst"].reached("status")
        kill = asyncio.create_task(ops.kill("ag-1"))  # reads the migrating row, then waits on src
        await h.clusters["src"].reached("kill")
        verify.set()  # the move commits meanwhile and its KillSource waits on src too
        await h.clusters["src"].reached("kill", 2)
        source_kill.set()
        return await kill, await task

    killed, done = asyncio.run(scenario())
    assert done.phase is MigrationPhase.COMPLETED  # it committed first ...
    assert killed.status is AgentStatus.TERMINATED  # ... and the kill still won, where the agent lived then
    row = h.store.agent("ag-1")
    assert row is not None and (row.cluster_id, row.epoch, row.status) == ("dst", 4, AgentStatus.TERMINATED)
    assert _no_copy_anywhere(h)
    assert (h.control.ledger.holds("src"), h.control.ledger.holds("dst")) == (0, 0)


def test_rollback_releases_the_targets_reservation_and_commit_moves_the_hold(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.clusters["dst"].fail["import_"] = ClusterUnavailable("site died")
    h.migrate()
    assert (h.control.ledger.holds("src"), h.control.ledger.holds("dst")) == (1, 0)
    h.clusters["dst"].fail.clear()
    h.now += 60  # past the cooldown
    h.migrate()
    assert (h.control.ledger.holds("src"), h.control.ledger.holds("dst")) == (0, 1)
