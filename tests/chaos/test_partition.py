"""A network partition: a site in its own network namespace, reached over a veth pair; the link goes
down, then up.

Proves: with the link down the cluster goes offline (heartbeats fail: nothing answers); with the link
up it becomes active again only after the hysteresis (``recover_after`` consecutive successful
heartbeats, never on the first one), and its agent, untouched by the partition, runs commands again.
Skips, saying why, where network namespaces cannot be created (no CAP_SYS_ADMIN / no ``ip``); under
``CI=true`` that fails instead (``tests.helpers.skip_or_fail``): CI must run it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bench.faults import Island
from godel_ray.models import ClusterHealthState, ClusterStatus, SpawnConfig
from tests.chaos.conftest import FAST_HEALTH, ChaosPlane, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.ray]


@pytest.fixture(scope="module")
def island(island_factory: Callable[..., Island]) -> Island:
    """A namespace with a veth to the host (10.213.N.0/30, ours alone) and a site serving inside it."""
    return island_factory("chaos-island", num_cpus=2)


def _health(chaos_plane: ChaosPlane, cluster_id: str) -> ClusterHealthState:
    return next(h for h in chaos_plane.proxy.registry.health() if h.cluster_id == cluster_id)


def test_partition_offline_then_active_after_hysteresis(chaos_plane: ChaosPlane, island: Island) -> None:
    site = island.site
    assert site is not None and site.endpoint.startswith(island.site_address)
    chaos_plane.register(site)
    proxy = chaos_plane.proxy
    agent = proxy.spawn(SpawnConfig(model="m-island", cpus=0.25, cluster=site.name))
    assert proxy.exec(agent.id, "echo before > notes.txt && cat notes.txt").stdout == "before\n"
    first_seq = max((e.seq for e in proxy.events()), default=0)

    island.link(up=False)
    offline = wait_for(lambda: (h := _health(chaos_plane, site.name)).status == ClusterStatus.OFFLINE and h,
                       f"{site.name} offline while partitioned")
    assert offline.consecutive_failures >= FAST_HEALTH.offline_after and offline.offline_since is not None
    assert proxy.registry.plan(SpawnConfig()).chosen != site.name  # no new work to an unreachable cluster
    link_up_seq = max(e.seq for e in proxy.events(first_seq))

    island.link(up=True)
    active = wait_for(lambda: (h := _health(chaos_plane, site.name)).status == ClusterStatus.ACTIVE and h,
                      f"{site.name} active again after the link came back")
    assert active.consecutive_successes >= FAST_HEALTH.recover_after, active
    assert active.consecutive_failures == 0 and active.offline_since is None

    down_moves = [(e.data["from"], e.data["to"]) for e in proxy.events(first_seq)
                  if e.type == "cluster.status" and e.cluster_id == site.name and e.seq <= link_up_seq]
    up_moves = [(e.data["from"], e.data["to"]) for e in proxy.events(link_up_seq)
                if e.type == "cluster.status" and e.cluster_id == site.name]
    assert down_moves == [("active", "degraded"), ("degraded", "offline")], down_moves
    assert up_moves == [("offline", "active")], up_moves  # one transition, made after the hysteresis

    assert proxy.exec(agent.id, "cat notes.txt").stdout == "before\n"  # the agent survived the partition
    proxy.kill(agent.id)
    proxy.registry.unregister(site.name, force=True)
