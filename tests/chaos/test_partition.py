"""A network partition: a site in its own network namespace, reached over a veth pair; the link goes
down, then up.

Proves: with the link down the cluster goes offline (heartbeats fail: nothing answers); with the link
up it becomes active again only after the hysteresis (``recover_after`` consecutive successful
heartbeats, never on the first one), and its agent, untouched by the partition, runs commands again.
Skips, saying why, where network namespaces cannot be created (no CAP_SYS_ADMIN / no ``ip``); under
``CI=true`` that fails instead (``tests.helpers.skip_or_fail``): CI must run it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from godel_ray.models import ClusterHealthState, ClusterStatus, SpawnConfig
from godel_ray.site.launcher import SiteProcess, start_site
from tests.chaos.conftest import FAST_HEALTH, ChaosPlane, wait_for
from tests.helpers import skip_or_fail

pytestmark = [pytest.mark.chaos, pytest.mark.ray]
IP_TIMEOUT_S = 10.0


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=check)


@dataclass
class Island:
    namespace: str
    host_veth: str
    host_address: str
    site_address: str
    site: SiteProcess | None = None

    def link(self, up: bool) -> None:
        ip("link", "set", self.host_veth, "up" if up else "down")


@pytest.fixture(scope="module")
def island(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Island]:
    """A namespace with a veth to the host (10.213.N.0/30, ours alone) and a site serving inside it."""
    if shutil.which("ip") is None:
        skip_or_fail("network namespaces: the `ip` command (iproute2) is not installed")
    tag = os.getpid() % 100_000
    subnet = f"10.213.{tag % 250}"
    island = Island(namespace=f"godel-chaos-{tag}", host_veth=f"gch{tag}", host_address=f"{subnet}.1",
                    site_address=f"{subnet}.2")
    probe = ip("netns", "add", island.namespace, check=False)
    if probe.returncode != 0:
        skip_or_fail(f"network namespaces are not permitted here: `ip netns add` said {probe.stderr.strip()!r}")
    try:
        peer = f"gcp{tag}"
        ip("link", "add", island.host_veth, "type", "veth", "peer", "name", peer)
        ip("link", "set", peer, "netns", island.namespace)
        ip("addr", "add", f"{island.host_address}/30", "dev", island.host_veth)
        ip("link", "set", island.host_veth, "up")
        inside = ("netns", "exec", island.namespace, "ip")
        ip(*inside, "addr", "add", f"{island.site_address}/30", "dev", peer)
        ip(*inside, "link", "set", peer, "up")
        ip(*inside, "link", "set", "lo", "up")  # the site's own Ray head runs on the namespace's loopback
        island.site = start_site(Path(tmp_path_factory.mktemp("island")), "chaos-island", num_cpus=2,
                                 host=island.site_address,
                                 prefix_cmd=["ip", "netns", "exec", island.namespace])
        yield island
    finally:
        if island.site is not None:
            island.site.terminate(timeout_s=20)
        ip("link", "del", island.host_veth, check=False)
        ip("netns", "del", island.namespace, check=False)


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
