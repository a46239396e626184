"""Chaos-suite fixtures: one control plane for the whole folder, fast health settings, polling helpers,
and views of what each cluster really hosts (to check the agent table against reality).

Every case says in its docstring what it proves. Nothing here sleeps a fixed time: ``wait_for`` polls
with a deadline. Processes are stopped by their session ids, never by name.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from bench.faults import Island, netns_unavailable
from godel_ray.client.proxy import TransparentClusterProxy, connect
from godel_ray.control import controlplane
from godel_ray.models import Agent, Cluster, HealthSettings
from godel_ray.site.launcher import SiteProcess
from tests import helpers

T = TypeVar("T")
WAIT_S = 120.0
POLL_S = 0.2
# Fast health so that faults show within seconds: beat every 0.5 s, 1 s deadline per beat; no failover
# (the grace periods, silent and dead, outlast every case here).
FAST_HEALTH = HealthSettings(heartbeat_interval_s=0.5, heartbeat_timeout_s=1.0, degraded_after=2,
                             offline_after=4, recover_after=3, slow_rtt_ms=1000.0, grace_period_s=600.0,
                             dead_grace_period_s=600.0)


wait_for = functools.partial(helpers.wait_for, timeout_s=WAIT_S, poll_s=POLL_S)


@dataclass
class ChaosPlane:
    """The running control plane of the chaos folder; ``proxy`` is replaced after a restart."""

    state_dir: Path
    proxy: TransparentClusterProxy

    def reconnect(self) -> TransparentClusterProxy:
        self.proxy = connect(self.state_dir)
        return self.proxy

    def register(self, site: SiteProcess, health: HealthSettings = FAST_HEALTH, **extra: Any) -> None:
        self.proxy.registry.register(Cluster(id=site.name, endpoint=site.endpoint, region="chaos",
                                             auth_token_file=str(site.token_file), health=health, **extra))


@pytest.fixture(scope="package")
def chaos_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosPlane]:
    """One control plane (4 CPUs, no warm pool: every live AgentActor is an agent) for the folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GODEL_LOCAL_WARM_POOL", "0")
        state_dir = tmp_path_factory.mktemp("chaos-state")
        controlplane.up(state_dir, num_cpus=4)
        try:
            yield ChaosPlane(state_dir=state_dir, proxy=connect(state_dir))
        finally:
            controlplane.down(state_dir)


@pytest.fixture(scope="module")
def island_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Island]]:
    """Sites in their own network namespace, behind a veth pair (``bench.faults.Island``: link down is a
    partition); every one is removed at the end of the module. Skips, saying why, where network
    namespaces cannot be made; under ``CI=true`` that fails instead (``tests.helpers.skip_or_fail``)."""
    reason = netns_unavailable()
    if reason is not None:
        helpers.skip_or_fail(f"network namespaces: {reason}")
    made: list[Island] = []
    tags = itertools.count(os.getpid())
    base = tmp_path_factory.mktemp("islands")

    def make(name: str, **kwargs: Any) -> Island:
        island = Island.create(base, name, tag=next(tags) % 250, **kwargs)
        made.append(island)
        return island

    try:
        yield make
    finally:
        for island in made:
            island.close()


# --- what clusters really host -----------------------------------------------------------------------

def local_agents() -> list[Agent]:
    """The ``local`` runtime's own agent table (through its ClusterActor, not the balancer)."""
    from godel_ray.control import factory
    from godel_ray.raykit import rayapi

    agents: list[Agent] = rayapi.get(factory.cluster_actor_handle("local").list_agents.remote(),
                                     timeout_s=30, what="cluster local")
    return agents


def live_agent_actors() -> int:
    """How many ``AgentActor`` Ray actors are alive or starting on the control plane's own Ray cluster."""
    import ray

    actors = ray._private.state.actors()  # the GCS actor table directly: no dashboard round trip
    return sum(1 for a in actors.values()
               if a.get("ActorClassName", "").endswith("AgentActor") and a.get("State") != "DEAD")


def live(agents: list[Agent]) -> list[Agent]:
    return [a for a in agents if not a.status.is_final]
