"""The balancer's owners against fake clusters (no Ray) with the real store and ledger: spawning at
the capacity edge, the last slot under concurrency, the kill that races a restore, the checkpoint
write path, event ingestion's epoch check, the table's compare-and-set, a failover tick, and where
local agents' workdirs live."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from godel_ray.control.agent_ops import AgentOps
from godel_ray.control.checkpoints import CHECKPOINT_DIR, Checkpoints, read_checkpoint, write_checkpoint
from godel_ray.control.cluster_actor import local_workdir_root
from godel_ray.control.failover import Failover
from godel_ray.control.reconciler import Reconciler
from godel_ray.control.spawner import Spawner
from godel_ray.errors import ClusterUnavailable, NoPlacement
from godel_ray.models import (
    Agent,
    AgentSnapshot,
    AgentStatus,
    Cluster,
    ClusterHealthState,
    ClusterStatus,
    EventKind,
    EventType,
    FederationEvent,
    RestartPolicy,
    SpawnConfig,
)
from godel_ray.settings import WORK_DIR_ENV
from tests.fakes import Control, capacity


def _spawner(c: Control) -> Spawner:
    return Spawner(c.clusters, c.table, c.emitter, clock=c.clock)


def _ops(c: Control) -> AgentOps:
    return AgentOps(c.gateway, c.table, c.store, clock=c.clock)


def _checkpoints(c: Control, state_dir: Path) -> Checkpoints:
    return Checkpoints(c.store, state_dir, c.table, c.ledger, c.gateway, c.emitter, clock=c.clock)


def _reconciler(c: Control, tmp_path: Path) -> Reconciler:
    return Reconciler(c.clusters, c.table, _checkpoints(c, tmp_path), c.cursors, c.emitter,
                      spawning=lambda: set(), local_workdir_root=tmp_path / "work")


@pytest.mark.parametrize(("max_agents", "edge"), [(2, "site reports no free agent slot"),
                                                  (10, "needs 1 CPUs, 0 free")])
def test_spawn_kill_ten_times_with_one_cpu_left_all_succeed_without_a_heartbeat(tmp_path: Path, max_agents: int,
                                                                               edge: str) -> None:
    c = Control(tmp_path, ("local",))
    c.report("local", capacity(1.0, 2.0, max_agents=max_agents, active=1))  # one CPU (and maybe one slot) left
    spawner, ops = _spawner(c), _ops(c)

    async def churn() -> list[str]:
        placed = []
        for _ in range(10):
            agent = await spawner.spawn(SpawnConfig(cpus=1.0))
            placed.append(agent.cluster_id)
            with pytest.raises(NoPlacement, match=f"local: {edge}"):
                await spawner.spawn(SpawnConfig(cpus=1.0))  # the edge holds while the agent lives
            assert (await ops.kill(agent.id)).status is AgentStatus.TERMINATED
        return placed

    assert asyncio.run(churn()) == ["local"] * 10
    assert c.ledger.holds("local") == 0


def test_two_spawns_for_the_last_slot_one_wins_the_other_is_told_the_cluster_is_full(tmp_path: Path) -> None:
    c = Control(tmp_path, ("local",))
    asyncio.run(c.clusters.update("local", {"max_agents": 1}))
    c.report("local", capacity(4.0, 4.0, max_agents=1))
    spawner = _spawner(c)

    async def race() -> list[Agent | BaseException]:
        opened = c.fakes["local"].gate("spawn")  # the first spawn is placed, then waits on its cluster
        tasks = [asyncio.create_task(spawner.spawn(SpawnConfig())) for _ in range(2)]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        opened.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    outcomes = asyncio.run(race())
    agents = [o for o in outcomes if isinstance(o, Agent)]
    refused = [o for o in outcomes if isinstance(o, NoPlacement)]
    assert len(agents) == 1 and len(refused) == 1, outcomes
    assert "full" in refused[0].reasons["local"] and "local: full" in str(refused[0])
    assert len(c.fakes["local"].agents) == 1 and len(c.table.live()) == 1


def test_a_failed_spawn_releases_its_reservation_and_kills_what_the_cluster_may_have_made(tmp_path: Path) -> None:
    c = Control(tmp_path, ("local",))
    c.report("local", capacity(1.0, 1.0, max_agents=1))
    c.fakes["local"].fail["spawn"] = ClusterUnavailable("reply lost")
    spawner = _spawner(c)
    with pytest.raises(ClusterUnavailable):
        asyncio.run(spawner.spawn(SpawnConfig()))
    assert [m for m, _ in c.fakes["local"].calls] == ["spawn", "kill"]
    assert c.ledger.holds("local") == 0 and c.table.all() == [] and not spawner.spawning
    c.fakes["local"].fail.clear()
    assert asyncio.run(spawner.spawn(SpawnConfig())).cluster_id == "local"  # the room was given back


def test_an_exit_reported_by_the_cluster_frees_its_room_at_once(tmp_path: Path) -> None:
    c = Control(tmp_path, ("local",))
    c.report("local", capacity(1.0, 1.0, max_agents=1))
    spawner, reconciler = _spawner(c), _reconciler(c, tmp_path)
    agent = asyncio.run(spawner.spawn(SpawnConfig()))
    assert spawner.plan(SpawnConfig()).chosen is None
    reconciler.apply_event("local", FederationEvent(kind=EventKind.AGENT, type=EventType.AGENT_STATUS,
                                                    agent_id=agent.id, data={"status": "terminated",
                                                                             "reason": "lifetime", "epoch": "1"}))
    assert c.table.require(agent.id).status is AgentStatus.TERMINATED
    assert spawner.plan(SpawnConfig()).chosen == "local"


def test_ingestion_applies_only_the_event_of_the_copy_the_table_points_at(tmp_path: Path) -> None:
    c = Control(tmp_path)
    reconciler = _reconciler(c, tmp_path)
    row = c.put_agent(Agent(id="ag-1", config=SpawnConfig(), cluster_id="src", status=AgentStatus.RUNNING, epoch=3))

    def ended(cluster_id: str, **data: str) -> None:
        reconciler.apply_event(cluster_id, FederationEvent(kind=EventKind.AGENT, type=EventType.AGENT_STATUS,
                                                           agent_id="ag-1", data={"status": "failed", **data}))

    ended("src", epoch="2", reason="an older copy ended")
    ended("dst", epoch="3", reason="another cluster's copy")
    ended("src", epoch="3", reason="migrated")
    assert c.table.require("ag-1") == row
    ended("src", epoch="3", reason="crashed")
    assert (c.table.require("ag-1").status, c.table.require("ag-1").status_reason) == (AgentStatus.FAILED, "crashed")


def test_ingestion_records_the_limit_a_running_agents_command_hit(tmp_path: Path) -> None:
    c = Control(tmp_path)
    reconciler = _reconciler(c, tmp_path)
    c.put_agent(Agent(id="ag-1", config=SpawnConfig(), cluster_id="src", status=AgentStatus.RUNNING, epoch=3,
                      status_reason="restored from a checkpoint"))

    def running(cluster_id: str, epoch: str, reason: str) -> None:
        reconciler.apply_event(cluster_id, FederationEvent(kind=EventKind.AGENT, type=EventType.AGENT_STATUS,
                                                           agent_id="ag-1", data={"status": "running",
                                                                                  "reason": reason, "epoch": epoch}))

    running("src", "3", "")  # a start says nothing: the note stays
    running("dst", "3", "command 1 hit a limit: another cluster's copy")
    running("src", "2", "command 1 hit a limit: an older copy")
    assert c.table.require("ag-1").status_reason == "restored from a checkpoint"
    running("src", "3", "command 2 hit a limit: memory limit of 64 MiB reached")
    row = c.table.require("ag-1")
    assert (row.status, row.status_reason) == (AgentStatus.RUNNING, "command 2 hit a limit: memory limit of 64 MiB reached")
    assert c.store.agent("ag-1") == row  # written through: `swarmctl agent list/status` read the store


def test_status_never_overwrites_a_migrating_row(tmp_path: Path) -> None:
    c = Control(tmp_path)
    row = c.put_agent(Agent(id="ag-1", config=SpawnConfig(), cluster_id="src", status=AgentStatus.MIGRATING))
    c.fakes["src"].agents["ag-1"] = row.model_copy(update={"status": AgentStatus.RUNNING, "node_id": "n1"})
    shown = asyncio.run(_ops(c).status("ag-1"))
    assert (shown.status, shown.node_id) == (AgentStatus.RUNNING, "n1")  # what the site says now ...
    assert c.table.require("ag-1") == row and c.store.agent("ag-1") == row  # ... the move still owns the row


def test_checkpoint_files_are_private_atomic_and_read_back(tmp_path: Path) -> None:
    agent = Agent(id="ag-1", config=SpawnConfig(), cluster_id="src", status=AgentStatus.RUNNING, epoch=2)
    snapshot = AgentSnapshot(agent=agent, archive=b"tar bytes", sha256="a" * 64)
    record = write_checkpoint(tmp_path, snapshot, 2)
    root = tmp_path / CHECKPOINT_DIR
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert sorted(p.name for p in root.iterdir()) == ["ag-1.json", "ag-1.tar.gz"]  # no temporary left
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in root.iterdir())
    again = write_checkpoint(tmp_path, snapshot.model_copy(update={"archive": b"newer"}), 2)
    assert again == record.__class__(**{**record.__dict__, "size_bytes": again.size_bytes})
    assert read_checkpoint(again).archive == b"newer" and read_checkpoint(again).agent == agent


def test_prepare_shutdown_uses_the_one_write_path(tmp_path: Path) -> None:
    c = Control(tmp_path)
    c.put_agent(Agent(id="ag-1", config=SpawnConfig(), cluster_id="local", status=AgentStatus.RUNNING))
    checkpoints = _checkpoints(c, tmp_path)
    assert asyncio.run(checkpoints.prepare_shutdown("local")) == 1
    record = c.store.checkpoint("ag-1")
    assert record is not None and checkpoints.record("ag-1") == record
    assert stat.S_IMODE(Path(record.archive_path).stat().st_mode) == 0o600
    assert c.fakes["local"].calls[0] == ("export", {"epoch": 1, "freeze": True})


def test_kill_during_a_restore_wins_and_the_restored_copy_is_removed(tmp_path: Path) -> None:
    c = Control(tmp_path)
    row = c.put_agent(Agent(id="ag-1", config=SpawnConfig(), cluster_id="src", status=AgentStatus.RUNNING, epoch=1))
    checkpoints = _checkpoints(c, tmp_path)
    asyncio.run(checkpoints.take(row, freeze=False))

    async def scenario() -> tuple[Agent | None, Agent]:
        imported = c.fakes["dst"].gate("import_")
        restore = asyncio.create_task(checkpoints.restore(row, "dst", reason="failover"))
        await c.fakes["dst"].reached("import_")
        killed = await _ops(c).kill("ag-1")
        imported.set()
        return await restore, killed

    restored, killed = asyncio.run(scenario())
    assert restored is None and killed.status is AgentStatus.TERMINATED
    assert c.table.require("ag-1").status is AgentStatus.TERMINATED
    assert "ag-1" not in c.fakes["dst"].agents and "ag-1" not in c.fakes["src"].agents
    assert (c.ledger.holds("src"), c.ledger.holds("dst")) == (0, 0)


def test_restore_switches_the_row_to_the_target_at_the_next_epoch(tmp_path: Path) -> None:
    c = Control(tmp_path)
    row = c.put_agent(Agent(id="ag-1", config=SpawnConfig(labels={"k": "v"}), cluster_id="src",
                            status=AgentStatus.RUNNING, epoch=1))
    checkpoints = _checkpoints(c, tmp_path)
    asyncio.run(checkpoints.take(row, freeze=False))
    restored = asyncio.run(checkpoints.restore(row, "dst", reason="restored after src died"))
    assert restored is not None and (restored.cluster_id, restored.epoch) == ("dst", 2)
    assert restored.status_reason == "restored after src died" and restored.config.labels == {"k": "v"}
    assert c.fakes["dst"].agents["ag-1"].epoch == 2 and c.store.agent("ag-1") == restored
    assert (c.ledger.holds("src"), c.ledger.holds("dst")) == (0, 1)


def test_failover_restores_a_checkpointed_agent_of_a_dead_cluster_elsewhere(tmp_path: Path) -> None:
    c = Control(tmp_path)
    row = c.put_agent(Agent(id="ag-1", config=SpawnConfig(restart_policy=RestartPolicy.CHECKPOINT), cluster_id="src",
                            status=AgentStatus.RUNNING, epoch=1))
    plain = c.put_agent(Agent(id="ag-2", config=SpawnConfig(), cluster_id="src", status=AgentStatus.RUNNING))
    checkpoints = _checkpoints(c, tmp_path)
    asyncio.run(checkpoints.take(row, freeze=False))
    failover = Failover(c.clusters, c.table, checkpoints, c.store, c.emitter, busy=set, clock=c.clock)
    grace_s = c.clusters.require("src").health.grace_period_s
    c.clusters.set_health("src", ClusterHealthState(cluster_id="src", status=ClusterStatus.OFFLINE,
                                                    offline_since=c.now - grace_s - 1))

    async def tick_until_idle() -> None:
        await failover.tick()
        while failover.busy():  # the restore runs as a background task: let it finish
            await asyncio.sleep(0)

    asyncio.run(tick_until_idle())
    restored = c.table.require("ag-1")
    assert restored.cluster_id in ("local", "dst") and restored.epoch == 2 and restored.status is AgentStatus.RUNNING
    assert "went offline" in restored.status_reason
    assert c.fakes[restored.cluster_id].agents["ag-1"].epoch == 2
    assert c.table.require(plain.id).status is AgentStatus.FAILED  # no checkpoint policy: failed, with why
    assert [(m.source, m.reason) for m in c.store.migrations("ag-1")] == [("src", "failover")]
    assert (c.ledger.holds("src"), c.ledger.holds(restored.cluster_id)) == (0, 1)


def test_a_spawned_rows_config_keeps_the_placement_hints_the_site_never_sees(tmp_path: Path) -> None:
    c = Control(tmp_path)
    c.report("src", capacity(4.0, 4.0))
    asked = SpawnConfig(cluster="src", max_cost_per_hour=9.0)

    async def spawn() -> Agent:
        spawner = _spawner(c)
        real = c.fakes["src"].handle

        async def over_the_wire(method: str, *args: object, **kwargs: object) -> object:
            if method == "spawn":  # what a site echoes: no placement hints (rpc.convert)
                args = (asked.model_copy(update={"cluster": None, "max_cost_per_hour": None}), *args[1:])
            return await real(method, *args, **kwargs)

        c.fakes["src"].handle = over_the_wire  # type: ignore[method-assign]
        return await spawner.spawn(asked)

    agent = asyncio.run(spawn())
    assert agent.config == asked and c.store.agent(agent.id) is not None
    assert c.store.require_agent(agent.id).config.cluster == "src"


def test_a_cluster_back_without_its_agents_restores_the_checkpointed_one_there_and_fails_the_other(
        tmp_path: Path) -> None:
    c = Control(tmp_path)
    c.report("src", capacity(4.0, 4.0))
    row = c.put_agent(Agent(id="ag-1", config=SpawnConfig(restart_policy=RestartPolicy.CHECKPOINT, cluster="src"),
                            cluster_id="src", status=AgentStatus.RUNNING, epoch=1))
    plain = c.put_agent(Agent(id="ag-2", config=SpawnConfig(), cluster_id="src", status=AgentStatus.RUNNING))
    checkpoints = _checkpoints(c, tmp_path)
    asyncio.run(checkpoints.take(row, freeze=False))
    failover = Failover(c.clusters, c.table, checkpoints, c.store, c.emitter, busy=set, clock=c.clock)

    async def restart_and_tick() -> None:
        c.now += 1
        c.clusters.set_health("src", ClusterHealthState(cluster_id="src", status=ClusterStatus.DEGRADED,
                                                        capacity=capacity(4.0, 4.0), last_heartbeat_at=c.now))
        await failover.tick()  # seen away (only degraded: well within its grace)
        c.fakes["src"].agents.clear()  # it restarted: its agents are gone
        c.now += 1
        c.report("src", capacity(4.0, 4.0))
        await failover.tick()  # back: swept
        while failover.busy() or failover._sweeps:
            await asyncio.sleep(0)

    asyncio.run(restart_and_tick())
    restored = c.table.require("ag-1")
    assert (restored.cluster_id, restored.epoch, restored.status) == ("src", 2, AgentStatus.RUNNING)  # pinned there
    assert "restarted without it" in restored.status_reason and c.fakes["src"].agents["ag-1"].epoch == 2
    failed = c.table.require(plain.id)
    assert failed.status is AgentStatus.FAILED and "no longer hosts the agent" in failed.status_reason
    assert [(m.source, m.target, m.reason) for m in c.store.migrations("ag-1")] == [("src", "src", "failover")]


def test_local_workdirs_live_beside_the_state_dir_never_inside_it(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WORK_DIR_ENV, raising=False)
    state = tmp_path / "state"
    root = local_workdir_root(state)
    assert root == tmp_path / "state-work" / "local" and state not in root.parents
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o700 for p in (root, root.parent))
    monkeypatch.setenv(WORK_DIR_ENV, str(tmp_path / "elsewhere"))
    assert local_workdir_root(state) == tmp_path / "elsewhere" / "local"


def test_registration_keeps_its_probe_over_a_new_actor_that_has_not_beaten_yet(tmp_path: Path) -> None:
    c = Control(tmp_path, ("local",))
    c.probe_capacity = capacity(4.0, 4.0)
    info = asyncio.run(c.clusters.register(Cluster(id="west", endpoint="127.0.0.1:50051", region="west")))
    assert info.health.capacity.total_cpus == 4.0
    asyncio.run(_reconciler(c, tmp_path).poll("west"))  # the actor answers with a fresh, empty health
    assert c.clusters.health_of("west").capacity.total_cpus == 4.0
    beat = ClusterHealthState(cluster_id="west", capacity=capacity(3.0, 4.0), last_heartbeat_at=c.now + 1,
                              last_success_at=c.now + 1)
    c.clusters.set_health("west", beat)  # its first heartbeat replaces the probe's
    assert c.clusters.health_of("west") == beat and c.store.health("west") == beat
