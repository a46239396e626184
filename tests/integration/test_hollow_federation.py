"""Many sites through the real control plane: hollow sites (``godel_ray.site.hollow_fleet``, real gRPC
servers over record-keeping runtimes, all in one child process) registered with a real balancer
(one ClusterActor each) and placed onto, every one of them.

How many: ``HOLLOW_SITES`` (``GODEL_HOLLOW_SITES``, default 20). Each registration starts a
ClusterActor process; on this 2-core machine they come up about one a second (100 took 95 s in
``python -m bench --only federation-scale``), so the default keeps the test near a minute; CI with
more cores sets 100. ``local`` is put in maintenance so that every placement goes to a hollow site.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from godel_ray.client.proxy import TransparentClusterProxy, connect
from godel_ray.control import controlplane
from godel_ray.models import AgentStatus, Cluster, SpawnConfig
from godel_ray.site.hollow_fleet import FleetProcess
from tests import helpers

pytestmark = pytest.mark.ray
HOLLOW_SITES = int(os.environ.get("GODEL_HOLLOW_SITES", "20"))
CONCURRENCY = 4
wait_for = functools.partial(helpers.wait_for, timeout_s=180.0)


@dataclass
class Federation:
    proxy: TransparentClusterProxy
    fleet: FleetProcess
    state_dir: Path

    @property
    def names(self) -> list[str]:
        return [s["name"] for s in self.fleet.sites]


async def _bounded(coros: list[Any]) -> list[Any]:
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(coro: Any) -> Any:
        async with sem:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("hollow-federation")
    fleet = FleetProcess.start(root / "fleet", HOLLOW_SITES)
    try:
        controlplane.up(root / "state", num_cpus=2)
        try:
            yield Federation(proxy=connect(root / "state"), fleet=fleet, state_dir=root / "state")
        finally:
            controlplane.down(root / "state")
    finally:
        fleet.stop()


def test_every_hollow_site_registers_and_turns_active(fed: Federation) -> None:
    fed.proxy.registry.maintenance("local", True)
    aio = fed.proxy.aio()
    infos = asyncio.run(_bounded([
        aio.registry.register(Cluster(id=s["name"], endpoint=s["endpoint"], region="hollow", max_agents=100,
                                      auth_token_file=s["token_file"]))
        for s in fed.fleet.sites]))
    assert sorted(i.cluster.id for i in infos) == sorted(fed.names)
    assert {c.cluster.id for c in fed.proxy.registry.list()} == {"local", *fed.names}
    # active, with the capacity its own heartbeat reported (a ClusterActor's state before its first
    # heartbeat has none, and the balancer shows that state for a moment after registration)
    wait_for(lambda: all(h.status.value == "active" and h.capacity.name == h.cluster_id
                         for h in fed.proxy.registry.health() if h.cluster_id != "local"),
             f"all {HOLLOW_SITES} hollow sites active, with their capacity")
    capacity = {h.cluster_id: h.capacity for h in fed.proxy.registry.health()}
    assert all(capacity[n].total_cpus == 64 and capacity[n].max_agents == 1000 for n in fed.names)


def test_every_hollow_site_is_placed_onto(fed: Federation) -> None:
    aio = fed.proxy.aio()
    pinned = asyncio.run(_bounded([aio.spawn(SpawnConfig(cluster=n, cpus=0.01, labels={"t": "pinned"}))
                                   for n in fed.names]))
    assert sorted(a.cluster_id for a in pinned) == sorted(fed.names)
    assert all(a.status == AgentStatus.RUNNING for a in pinned)
    assert {d.chosen for d in (fed.proxy.explain(a.id) for a in pinned[:3])} <= set(fed.names)

    free = asyncio.run(_bounded([aio.spawn(SpawnConfig(cpus=0.01, labels={"t": "placed"}))
                                 for _ in fed.names]))
    assert all(a.cluster_id in fed.names for a in free), "local is in maintenance: hollow sites only"
    for agent in pinned[:3] + free[:3]:
        assert fed.proxy.exec(agent.id, "true").exit_code == 0
    listed = fed.proxy.list(status=AgentStatus.RUNNING)
    assert len(listed) == 2 * HOLLOW_SITES


def test_the_sites_hold_the_agents_and_saw_heartbeats(fed: Federation) -> None:
    """What the fleet itself recorded: stopped here (its stats are written at exit)."""
    controlplane.down(fed.state_dir)  # the ClusterActors go; the hollow agents stay on their sites
    stats = fed.fleet.stop()
    assert stats["agents"] == 2 * HOLLOW_SITES
    assert sorted(stats["heartbeats"]) == sorted(fed.names)
    assert all(len(times) >= 2 for times in stats["heartbeats"].values())  # the probe, then the loop
