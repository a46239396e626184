"""MigrationExecutor against fake clusters (no Ray): the shell carries out protocol v2's actions
(prepare, pre-copy, freeze, delta, activate, commit, kill source), writes the commit to the real
state store, rolls back (resuming a frozen source on every path, a store error included), and
records cooldown, phases and events."""

from __future__ import annotations

import asyncio
import sqlite3
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
    TransferMode,
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
                                          cooldown_s=30.0, clock=self.clock)
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


V2_PHASES = [MigrationPhase.VALIDATING, MigrationPhase.PREPARING, MigrationPhase.PRECOPYING, MigrationPhase.FREEZING,
             MigrationPhase.DELTA, MigrationPhase.ACTIVATING, MigrationPhase.COMMITTING, MigrationPhase.CLEANING_UP,
             MigrationPhase.COMPLETED]


def _methods(h: Harness, cluster: str) -> list[str]:
    return [m for m, _ in h.clusters[cluster].calls]


def test_happy_path_commits_the_new_location_and_kills_the_source(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    done = h.migrate()
    assert done.phase is MigrationPhase.COMPLETED and done.error == ""
    assert (done.epoch_from, done.epoch_to, done.bytes_moved) == (3, 4, 200)  # the pre-copy and the delta
    assert [s.phase for s in done.phases] == V2_PHASES
    assert done.downtime_s is not None and done.downtime_s > 0
    frozen_at = next(s.at for s in done.phases if s.phase is MigrationPhase.FREEZING)
    precopy_at = next(s.at for s in done.phases if s.phase is MigrationPhase.PRECOPYING)
    assert done.downtime_s < done.phases[-1].at - precopy_at and frozen_at > precopy_at  # the copy ran first
    row = h.store.agent("ag-1")
    assert row is not None and (row.cluster_id, row.epoch, row.status) == ("dst", 4, AgentStatus.RUNNING)
    assert row.config.labels == {"k": "v"}
    assert "ag-1" not in h.clusters["src"].agents and h.clusters["dst"].agents["ag-1"].epoch == 4
    # the target is prepared before anything moves; the source runs until its freeze, after the pre-copy
    assert _methods(h, "src") == ["send", "freeze", "send", "kill"]
    assert [kw["mode"] for m, kw in h.clusters["src"].calls if m == "send"] == [TransferMode.FULL, TransferMode.FINAL]
    assert _methods(h, "dst") == ["prepare", "receive_open", "push", "push", "push", "receive_close",
                                  "receive_open", "push", "push", "push", "receive_close", "activate"]
    kill = [kw for m, kw in h.clusters["src"].calls if m == "kill"]
    assert kill == [{"epoch": 3, "reason": KILL_REASON_MIGRATED}]
    assert h.store.migrations("ag-1")[-1] == done
    types = [t for _, t, *_ in h.events]
    assert types[0] == "migration.started" and types[-1] == "migration.completed"
    assert "migration.precopying" in types and "migration.delta" in types
    assert h.store.migration_attempt("ag-1") == 1000.0
    assert not h.executor.in_progress


def test_a_pre_copy_failure_rolls_back_deletes_the_target_and_never_froze_the_source(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.clusters["dst"].fail["push"] = ClusterUnavailable("site died")
    done = h.migrate()
    assert done.phase is MigrationPhase.ROLLED_BACK and "pre_copy failed" in done.error
    assert _methods(h, "dst")[0] == "prepare" and _methods(h, "dst")[-1] == "kill"  # DeleteTarget at epoch_to
    assert h.clusters["dst"].calls[-1][1]["epoch"] == 4
    assert "freeze" not in _methods(h, "src") and h.clusters["src"].agents["ag-1"].status is AgentStatus.RUNNING
    assert h.store.agent("ag-1") == h.agent  # the row is back as it was
    assert [t for _, t, *_ in h.events][-1] == "migration.rolled_back"


def test_a_delta_failure_after_the_freeze_resumes_the_source(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.clusters["dst"].fail["receive_close"] = ClusterUnavailable("site died")
    done = h.migrate()
    assert done.phase is MigrationPhase.ROLLED_BACK and "pre_copy failed" in done.error
    h2 = Harness(tmp_path / "second")
    original = h2.clusters["dst"].handle

    async def fail_second_close(method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "receive_close" and _methods(h2, "dst").count("receive_close") == 1:
            h2.clusters["dst"].calls.append((method, kwargs))
            raise ClusterUnavailable("site died during the delta")
        return await original(method, *args, **kwargs)

    h2.clusters["dst"].handle = fail_second_close  # type: ignore[method-assign]
    done = h2.migrate()
    assert done.phase is MigrationPhase.ROLLED_BACK and "delta failed" in done.error
    assert _methods(h2, "src") == ["send", "freeze", "send", "resume"]
    assert h2.clusters["src"].agents["ag-1"].status is AgentStatus.RUNNING
    assert h2.store.agent("ag-1") == h2.agent


def test_freeze_failure_rolls_back_and_deletes_the_prepared_target(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.clusters["src"].fail["freeze"] = ClusterUnavailable("source died")
    h.clusters["src"].fail["resume"] = ClusterUnavailable("source died")
    done = h.migrate()
    assert done.phase is MigrationPhase.ROLLED_BACK
    assert "freeze failed" in done.error and "resume failed during rollback" in done.error
    assert _methods(h, "dst")[-1] == "kill" and "ag-1" not in h.clusters["dst"].agents
    assert h.store.agent("ag-1") == h.agent


@pytest.mark.parametrize("where", ["commit", "persist"])
def test_a_store_error_before_the_commit_rolls_back_and_resumes_the_source(tmp_path: Path, where: str) -> None:
    """sqlite3.OperationalError at the commit's compare-and-set, or while persisting the record
    after the freeze: the move rolls back like a failed step; the source never stays frozen."""
    h = Harness(tmp_path)
    store: Any = h.store
    if where == "commit":
        real_replace = store.replace_agent

        def replace_agent(expected: Agent, new: Agent) -> bool:
            if new.cluster_id == "dst":
                raise sqlite3.OperationalError("database is locked")
            return bool(real_replace(expected, new))

        store.replace_agent = replace_agent
    else:
        real_put = store.put_migration

        def put_migration(migration: Migration) -> None:
            if migration.phase is MigrationPhase.DELTA:
                raise sqlite3.OperationalError("disk I/O error")
            real_put(migration)

        store.put_migration = put_migration
    done = h.migrate()
    assert done.phase is MigrationPhase.ROLLED_BACK, done
    assert "OperationalError" in done.error
    assert "resume" in _methods(h, "src") and "kill" not in _methods(h, "src")
    assert h.clusters["src"].agents["ag-1"].status is AgentStatus.RUNNING  # resumed, not left frozen
    assert "ag-1" not in h.clusters["dst"].agents  # the prepared copy is gone
    row = h.control.table.get("ag-1")
    assert row is not None and (row.cluster_id, row.epoch, row.status) == ("src", 3, AgentStatus.RUNNING)
    assert (h.control.ledger.holds("src"), h.control.ledger.holds("dst")) == (1, 0)
    assert not h.executor.in_progress


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
    h.clusters["dst"].fail["activate"] = AssertionError("never reached")  # nothing but rollback may run
    migration = h.executor.begin(h.agent, "dst")
    migration.phases = [PhaseStamp(phase=MigrationPhase.VALIDATING, at=1.0),
                        PhaseStamp(phase=MigrationPhase.PREPARING, at=2.0),
                        PhaseStamp(phase=MigrationPhase.PRECOPYING, at=3.0),
                        PhaseStamp(phase=MigrationPhase.FREEZING, at=4.0),
                        PhaseStamp(phase=MigrationPhase.DELTA, at=5.0)]
    migration.phase = MigrationPhase.DELTA
    h.store.put_migration(migration)
    h.executor.in_progress.clear()  # a new balancer knows nothing
    done = asyncio.run(h.executor.recover_unfinished())
    assert [m.phase for m in done] == [MigrationPhase.ROLLED_BACK]
    assert "balancer restarted during delta" in done[0].error
    assert [m for m, _ in h.clusters["dst"].calls] == ["kill"] and [m for m, _ in h.clusters["src"].calls] == ["resume"]
    row = h.store.agent("ag-1")
    assert row is not None and (row.cluster_id, row.epoch, row.status) == ("src", 3, AgentStatus.RUNNING)


def _no_copy_anywhere(h: Harness) -> bool:
    return all("ag-1" not in fake.agents for fake in h.clusters.values())


def test_kill_during_the_move_wins_the_commit_is_refused_and_no_copy_survives(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    ops = AgentOps(h.control.gateway, h.control.table, h.store, clock=h.clock)

    async def scenario() -> tuple[Agent, Migration]:
        verify = h.clusters["dst"].gate("activate")  # the move waits with its copy staged on dst
        task = h.executor.start(h.executor.begin(h.agent, "dst"), h.agent)
        await h.clusters["dst"].reached("activate")
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
        verify = h.clusters["dst"].gate("activate")
        source_kill = h.clusters["src"].gate("kill")
        task = h.executor.start(h.executor.begin(h.agent, "dst"), h.agent)
        await h.clusters["dst"].reached("activate")
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
    h.clusters["dst"].fail["push"] = ClusterUnavailable("site died")
    h.migrate()
    assert (h.control.ledger.holds("src"), h.control.ledger.holds("dst")) == (1, 0)
    h.clusters["dst"].fail.clear()
    h.now += 60  # past the cooldown
    h.migrate()
    assert (h.control.ledger.holds("src"), h.control.ledger.holds("dst")) == (0, 1)
