"""Hollow sites (a load-testing tool): several real gRPC site servers over ``HollowRuntime`` in one
process, each on its own port with its own token, driven through the real ``GrpcClusterClient``.
No Ray: a hollow site runs no processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from godel_ray import errors as E
from godel_ray.core.cluster_client import collect
from godel_ray.models import AgentStatus, EventType, SiteCapacity, SpawnConfig
from godel_ray.rpc.auth import read_token_file
from godel_ray.rpc.client import GrpcClusterClient
from godel_ray.site.hollow import HollowShape
from godel_ray.site.hollow_fleet import FleetProcess, FleetThread, HollowSite

SITES = 5


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetThread]:
    thread = FleetThread(tmp_path_factory.mktemp("hollow"), HollowShape(cpus=4, gpus=2, gpu_type="nvidia-a100",
                                                                        max_agents=3, exec_stdout="hi\n"))
    try:
        thread.start(SITES)
        yield thread
    finally:
        thread.close()


def client(site: HollowSite, token: str | None = None) -> GrpcClusterClient:
    return GrpcClusterClient(site.endpoint, token=token if token is not None else read_token_file(str(site.token_file)),
                             cluster_id=site.name)


def test_each_site_has_its_own_port_and_token(fleet: FleetThread) -> None:
    sites = fleet.fleet.sites
    assert len({s.port for s in sites}) == SITES
    assert len({read_token_file(str(s.token_file)) for s in sites}) == SITES
    assert all(s.token_file.stat().st_mode & 0o077 == 0 for s in sites)
    other = read_token_file(str(sites[1].token_file))

    async def wrong_token() -> None:
        c = client(sites[0], other)
        try:
            await c.heartbeat()
        finally:
            await c.close()

    with pytest.raises(E.Unauthenticated):
        fleet.run(wrong_token())


def test_heartbeat_reports_configured_capacity(fleet: FleetThread) -> None:
    site = fleet.fleet.sites[0]

    async def beat() -> object:
        c = client(site)
        try:
            return await c.heartbeat()
        finally:
            await c.close()

    cap = fleet.run(beat())
    assert (cap.name, cap.total_cpus, cap.total_gpus, cap.max_agents) == (site.name, 4, 2, 3)
    assert cap.gpu_types == ["nvidia-a100"] and cap.free_gpus == {"nvidia-a100": 2}
    assert [(n.node_id, n.head, n.total_cpus, n.total_gpus) for n in cap.nodes] == [
        (f"hollow-{site.name}", True, 4, 2)]
    assert len(site.runtime.heartbeat_times) >= 1


def test_agent_lifecycle_as_records(fleet: FleetThread) -> None:
    site = fleet.fleet.sites[1]

    async def scenario() -> None:
        c = client(site)
        try:
            gpu, created = await c.spawn(SpawnConfig(gpu_type="a100", cpus=1), idempotency_key="k1")
            assert created and gpu.status == AgentStatus.RUNNING and gpu.cluster_id == site.name
            again, created = await c.spawn(SpawnConfig(gpu_type="a100", cpus=1), idempotency_key="k1")
            assert again.id == gpu.id and not created
            cap = await c.heartbeat()
            assert cap.active_agents == 1 and cap.free_cpus == 3 and cap.free_gpus["nvidia-a100"] == 1
            result = collect([ch async for ch in c.exec_stream(gpu.id, "make test")])
            assert result.exit_code == 0 and result.stdout == "hi\n"
            with pytest.raises(E.StaleEpoch):
                [ch async for ch in c.exec_stream(gpu.id, "true", epoch=9)]
            with pytest.raises(E.ResourceExhausted):
                await c.spawn(SpawnConfig(gpu_type="h100"))
            with pytest.raises(E.InvalidArgument):
                await c.spawn(SpawnConfig(cpus=-1))
            others = [(await c.spawn(SpawnConfig(cpus=1)))[0] for _ in range(2)]
            with pytest.raises(E.ResourceExhausted):  # max_agents=3
                await c.spawn(SpawnConfig(cpus=0))
            killed = await c.kill(gpu.id, reason="done")
            assert killed.status == AgentStatus.TERMINATED
            assert {a.id for a in await c.list_agents(status=AgentStatus.RUNNING)} == {a.id for a in others}
            events = []
            async for event in c.events(0):
                events.append(event)
                if event.type == EventType.AGENT_KILLED:
                    break
            types = [e.type for e in events]
            assert EventType.AGENT_SPAWNED in types and EventType.COMMAND_FINISHED in types
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
        finally:
            await c.close()

    fleet.run(scenario(), 60)


def test_export_import_between_hollow_sites(fleet: FleetThread) -> None:
    source, target = fleet.fleet.sites[2], fleet.fleet.sites[3]

    async def move() -> None:
        a, b = client(source), client(target)
        try:
            agent, _ = await a.spawn(SpawnConfig(cpus=1))
            snapshot = await a.export(agent.id, epoch=agent.epoch, freeze=True)
            moved = await b.import_(snapshot.model_copy(update={"agent": snapshot.agent.model_copy(
                update={"epoch": agent.epoch + 1})}))
            assert moved.id == agent.id and moved.epoch == agent.epoch + 1 and moved.cluster_id == target.name
            await a.kill(agent.id, epoch=agent.epoch, reason="migrated")
            with pytest.raises(E.AgentMoved):
                [ch async for ch in a.exec_stream(agent.id, "true")]
        finally:
            await a.close()
            await b.close()

    fleet.run(move(), 60)


def test_heartbeat_stats_pool_intervals(fleet: FleetThread) -> None:
    site = fleet.fleet.sites[4]

    async def beats() -> None:
        c = client(site)
        try:
            for _ in range(3):
                await c.heartbeat()
        finally:
            await c.close()

    fleet.run(beats())
    stats = fleet.fleet.heartbeat_stats()
    assert stats.sites == SITES and stats.beats >= 3 and len(stats.intervals_s) >= 2
    assert stats.summary(5.0)["intervals"] == len(stats.intervals_s)


def test_fleet_process_serves_and_stops(tmp_path: Path) -> None:
    """``python -m godel_ray.site.hollow_fleet`` as a child: manifest, serving, stats at a clean stop."""
    proc = FleetProcess.start(tmp_path, 3)
    try:
        assert [m["name"] for m in proc.sites] == ["hollow-0", "hollow-1", "hollow-2"]

        async def beat() -> SiteCapacity:
            c = GrpcClusterClient(proc.sites[0]["endpoint"], token=read_token_file(proc.sites[0]["token_file"]))
            try:
                return await c.heartbeat()
            finally:
                await c.close()

        assert asyncio.run(beat()).name == "hollow-0"
    finally:
        stats = proc.stop()
    assert proc.proc.returncode == 0
    assert len(stats["heartbeats"]["hollow-0"]) == 1 and stats["heartbeats"]["hollow-1"] == []
