"""The balancer is told, not asked: ``ClusterActor.wait_changes`` (a long poll answered at the first
event or telling health change) and the reconciler's watchers over it (events in order, health to
the cluster set, orphans swept when a cluster is first seen or comes back, never on a timer).

The actor runs on a stub client (a site that answers heartbeats and streams what it is handed): no
Ray, no network."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from godel_ray.control.cluster_actor import ClusterActor
from godel_ray.control.reconciler import Reconciler
from godel_ray.core.detector import ProbeFailure
from godel_ray.models import (
    Agent,
    AgentStatus,
    Cluster,
    ClusterChanges,
    ClusterStatus,
    EventKind,
    EventType,
    FederationEvent,
    HealthSettings,
    SiteCapacity,
    SpawnConfig,
)
from tests.fakes import Control

DEADLINE_S = 30.0
QUIET = HealthSettings(heartbeat_interval_s=3600.0, heartbeat_timeout_s=5.0)  # one heartbeat, at start


class StubSite:
    """Answers heartbeats with ``capacity``; streams the events put on ``events``."""

    def __init__(self) -> None:
        self.capacity = SiteCapacity(name="stub", max_agents=4, total_cpus=4.0, free_cpus=4.0)
        self.queue: asyncio.Queue[FederationEvent] = asyncio.Queue()
        self.seq = 0

    async def probe(self) -> SiteCapacity:
        return self.capacity

    async def heartbeat(self) -> SiteCapacity:
        return self.capacity

    async def events(self, since_seq: int = 0) -> AsyncIterator[FederationEvent]:
        while True:
            yield await self.queue.get()

    def emit(self, agent_id: str) -> None:
        self.seq += 1
        self.queue.put_nowait(FederationEvent(seq=self.seq, kind=EventKind.AGENT, type=EventType.AGENT_SPAWNED,
                                               agent_id=agent_id))

    async def close(self) -> None:
        return None


def _actor(tmp_path: Path, site: StubSite) -> ClusterActor:
    actor = ClusterActor(Cluster(id="stub", endpoint="127.0.0.1:9", region="r", health=QUIET), str(tmp_path))
    actor.client = site  # type: ignore[assignment]
    return actor


async def _after_first_beat(actor: ClusterActor) -> ClusterChanges:
    changes = await actor.wait_changes("", 0, -1, DEADLINE_S)  # knows nothing: answered at once
    while changes.health.last_success_at is None:  # until the first heartbeat is in
        changes = await actor.wait_changes(changes.incarnation, 0, changes.health_version, DEADLINE_S)
    return changes


def test_wait_changes_answers_at_the_first_event_and_replays_for_another_life(tmp_path: Path) -> None:
    async def scenario() -> None:
        site = StubSite()
        actor = _actor(tmp_path, site)
        try:
            async with asyncio.timeout(DEADLINE_S):
                await actor.start()
                first = await _after_first_beat(actor)
                assert first.health.capacity.name == "stub" and first.events == []

                waiting = asyncio.create_task(actor.wait_changes(first.incarnation, 0, first.health_version,
                                                                 DEADLINE_S))
                for _ in range(20):
                    await asyncio.sleep(0)  # let it park
                assert not waiting.done()  # nothing new: the call waits
                site.emit("ag-1")
                told = await waiting
                assert [(e.seq, e.agent_id, e.cluster_id) for e in told.events] == [(1, "ag-1", "stub")]
                assert told.site_seq == 1 and told.incarnation == first.incarnation

                timed_out = await actor.wait_changes(told.incarnation, 1, told.health_version, 0.01)
                assert timed_out.events == [] and timed_out.health_version == told.health_version

                site.emit("ag-2")
                second = await actor.wait_changes(told.incarnation, 1, told.health_version, DEADLINE_S)
                assert [e.agent_id for e in second.events] == ["ag-2"]
                replay = await actor.wait_changes("an-earlier-life", 2, told.health_version, DEADLINE_S)
                assert [e.agent_id for e in replay.events] == ["ag-1", "ag-2"]  # its cursor means nothing here
                ahead = await actor.wait_changes("", 99, replay.health_version, DEADLINE_S)
                assert [e.agent_id for e in ahead.events] == ["ag-1", "ag-2"]  # a cursor ahead of the buffer
        finally:
            await actor.close()

    asyncio.run(scenario())


def test_telling_health_news_wakes_the_long_poll_and_a_return_counts_as_a_reconnect(tmp_path: Path) -> None:
    async def scenario() -> None:
        site = StubSite()
        actor = _actor(tmp_path, site)
        try:
            async with asyncio.timeout(DEADLINE_S):
                await actor.start()
                now = await _after_first_beat(actor)
                waiting = asyncio.create_task(actor.wait_changes(now.incarnation, 0, now.health_version,
                                                                 DEADLINE_S))
                for _ in range(20):
                    await asyncio.sleep(0)
                assert not waiting.done()
                actor.set_maintenance_now(True)
                told = await waiting
                assert told.health.status is ClusterStatus.MAINTENANCE
                assert [e.type for e in told.events] == [EventType.CLUSTER_STATUS]
                assert told.reconnects == 0

                actor.set_maintenance_now(False)
                for _ in range(QUIET.offline_after):  # refused connections: offline
                    actor._observe(lambda now: actor.tracker.on_failure("refused", now, ProbeFailure.REFUSED))
                assert actor.tracker.status is ClusterStatus.OFFLINE
                for _ in range(QUIET.recover_after):
                    actor._observe(lambda now: actor.tracker.on_success(5.0, site.capacity, now))
                back = await actor.wait_changes(now.incarnation, 0, told.health_version, DEADLINE_S)
                assert back.health.status is ClusterStatus.ACTIVE and back.reconnects == 1
        finally:
            await actor.close()

    asyncio.run(scenario())


def _reconciler(c: Control, tmp_path: Path) -> Reconciler:
    from godel_ray.control.checkpoints import Checkpoints

    checkpoints = Checkpoints(c.store, tmp_path, c.table, c.ledger, c.gateway, c.emitter, clock=c.clock)
    return Reconciler(c.clusters, c.table, checkpoints, c.cursors, c.emitter, spawning=lambda: set(),
                      local_workdir_root=tmp_path / "work")


def _orphan(c: Control, agent_id: str) -> None:
    c.fakes["src"].agents[agent_id] = Agent(id=agent_id, config=SpawnConfig(), cluster_id="src",
                                            status=AgentStatus.RUNNING)


def test_orphans_are_swept_when_a_cluster_is_first_seen_comes_back_or_spawns_unasked_never_on_a_timer(tmp_path: Path) -> None:
    c = Control(tmp_path, ("local", "src"))
    reconciler = _reconciler(c, tmp_path)
    fake = c.fakes["src"]

    async def scenario() -> None:
        _orphan(c, "orphan-1")
        assert await reconciler.poll("src")  # first seen: swept
        await reconciler.idle()
        assert "orphan-1" not in fake.agents

        _orphan(c, "orphan-2")
        for _ in range(3):  # answers that bring nothing new: no sweep
            assert await reconciler.poll("src")
        await reconciler.idle()
        assert "orphan-2" in fake.agents and sum(m == "list_agents" for m, _ in fake.calls) == 1

        fake.health = fake.health.model_copy(update={"status": ClusterStatus.OFFLINE})
        fake.reconnects = 1
        assert await reconciler.poll("src")  # back from offline, but offline again: not yet
        await reconciler.idle()
        assert "orphan-2" in fake.agents
        fake.health = fake.health.model_copy(update={"status": ClusterStatus.ACTIVE})
        assert await reconciler.poll("src")  # reachable: the sweep it owes
        await reconciler.idle()
        assert "orphan-2" not in fake.agents

        _orphan(c, "orphan-3")
        fake.incarnation = "fake-src-restarted"  # its actor restarted
        assert await reconciler.poll("src")
        await reconciler.idle()
        assert "orphan-3" not in fake.agents

        _orphan(c, "orphan-4")
        reconciler.sweep_soon("src")  # a failed spawn's clean-up did not reach it
        await reconciler.idle()
        assert "orphan-4" not in fake.agents
        _orphan(c, "orphan-5")  # a spawn a previous balancer started, landed after the start-up sweep
        fake.events.append(FederationEvent(seq=1, kind=EventKind.AGENT, type=EventType.AGENT_SPAWNED,
                                           agent_id="orphan-5"))
        assert await reconciler.poll("src")
        await reconciler.idle()
        assert "orphan-5" not in fake.agents
        lists = sum(m == "list_agents" for m, _ in fake.calls)
        fake.events.append(FederationEvent(seq=2, kind=EventKind.AGENT, type=EventType.AGENT_SPAWNED,
                                           agent_id="ag-known"))
        c.put_agent(Agent(id="ag-known", config=SpawnConfig(), cluster_id="src", status=AgentStatus.RUNNING))
        assert await reconciler.poll("src")  # a spawn of its own: no sweep
        await reconciler.idle()
        assert sum(m == "list_agents" for m, _ in fake.calls) == lists and "ag-known" in fake.agents
        removed = [e.agent_id for e in c.store.events(0, 100) if e.type == EventType.AGENT_ORPHAN_REMOVED]
        assert removed == ["orphan-1", "orphan-2", "orphan-3", "orphan-4", "orphan-5"]

    asyncio.run(scenario())


def test_watchers_ingest_events_in_order_once_and_stop_with_their_cluster(tmp_path: Path) -> None:
    c = Control(tmp_path, ("local", "src"))
    reconciler = _reconciler(c, tmp_path)
    fake = c.fakes["src"]
    fake.events = [FederationEvent(seq=i, kind=EventKind.AGENT, type=EventType.AGENT_SPAWNED, agent_id=f"ag-{i}")
                   for i in (1, 2, 3)]

    async def scenario() -> None:
        async with asyncio.timeout(DEADLINE_S):
            await reconciler.tick()  # a watcher per cluster: local and src
            await fake.reached("wait_changes", 2)  # it asked again after ingesting the first answer
            await c.fakes["local"].reached("wait_changes")
            merged = [e.agent_id for e in c.store.events(0, 100) if e.type == EventType.AGENT_SPAWNED]
            assert merged == ["ag-1", "ag-2", "ag-3"] and c.cursors.buffer_seq("src") == 3
            watchers = [t for t in asyncio.all_tasks() if t.get_name() in ("watch-src", "watch-local")]
            assert len(watchers) == 2
            await c.clusters.unregister("src")
            await reconciler.tick()  # src's watcher ends with its cluster
            await asyncio.wait([t for t in watchers if t.get_name() == "watch-src"])
            assert [t.get_name() for t in watchers if t.cancelled()] == ["watch-src"]
            reconciler.stop()  # the balancer stopped serving: every watcher ends
            await asyncio.wait(watchers)
            assert all(t.cancelled() for t in watchers)

    asyncio.run(scenario())


def test_changes_travel_as_a_value() -> None:
    from godel_ray.models import ClusterHealthState

    changes = ClusterChanges(incarnation="x", health=ClusterHealthState(cluster_id="c"), health_version=3)
    assert ClusterChanges.model_validate(changes.model_dump()) == changes
