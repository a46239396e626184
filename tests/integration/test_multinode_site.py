"""A site that is a real multi-node Ray cluster: `swarmctl site serve --workers 2` on this machine
(a head and two worker nodes joined with `ray start --address`, each its own raylet, ports and
resources; the simulated A100s on the first worker), driven over gRPC as the control plane does.

GPU agents land on the GPU node and CPU agents elsewhere; the heartbeat reports every node; killing
the GPU node's raylet fails the agent it hosted, with the reason, while the site keeps serving.
Memory: one head and two workers at most (each raylet costs).
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from godel_ray.core.cluster_client import collect
from godel_ray.models import AgentStatus, SiteCapacity, SpawnConfig
from godel_ray.raykit import heads
from godel_ray.rpc.client import GrpcClusterClient
from godel_ray.site.launcher import SiteProcess
from tests import helpers

pytestmark = pytest.mark.ray
T = TypeVar("T")
wait_for = functools.partial(helpers.wait_for, timeout_s=120.0)
GPU_TYPE = "nvidia-a100"


@dataclass
class Site:
    process: SiteProcess

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """One call through a fresh client (each on its own event loop, as the CLI does)."""
        async def go() -> Any:
            client = GrpcClusterClient(self.process.endpoint, token=self.process.token, cluster_id="multi")
            try:
                return await fn(client, *args, **kwargs)
            finally:
                await client.close()

        return asyncio.run(go())

    def heartbeat(self) -> SiteCapacity:
        return self.call(lambda c: c.heartbeat())  # type: ignore[no-any-return]

    def spawn(self, config: SpawnConfig) -> Any:
        return self.call(lambda c: c.spawn(config))[0]

    def status(self, agent_id: str) -> Any:
        return self.call(lambda c: c.status(agent_id))

    def exec(self, agent_id: str, command: str) -> Any:
        async def run(c: GrpcClusterClient) -> Any:
            return collect([chunk async for chunk in c.exec_stream(agent_id, command)])
        return self.call(run)


@pytest.fixture(scope="module")
def site(site_factory: Any) -> Iterator[Site]:
    yield Site(site_factory("multi", num_cpus=2, num_gpus=2, gpu_type=GPU_TYPE, workers=2))


def test_the_site_starts_a_head_and_two_workers_and_reports_each_node(site: Site) -> None:
    assert len(site.process.worker_sids) == 2 and site.process.head_sid
    cap = site.heartbeat()
    assert len(cap.nodes) == 3, cap.nodes
    head, *others = cap.nodes
    assert head.head and not any(n.head for n in others)
    gpu_nodes = [n for n in cap.nodes if n.gpu_types]
    assert [(n.gpu_types, n.total_gpus) for n in gpu_nodes] == [([GPU_TYPE], 2.0)]
    assert not gpu_nodes[0].head  # the GPUs are on a worker node
    assert cap.total_cpus == sum(n.total_cpus for n in cap.nodes) == 6
    assert cap.gpu_types == [GPU_TYPE] and cap.total_gpus == 2


def test_gpu_agents_land_on_the_gpu_node_and_cpu_agents_elsewhere(site: Site) -> None:
    gpu_node = next(n.node_id for n in site.heartbeat().nodes if n.gpu_types)
    gpu_agent = site.spawn(SpawnConfig(gpu_type="a100", cpus=1, labels={"role": "gpu"}))
    cpu_agents = [site.spawn(SpawnConfig(cpus=1, labels={"role": "cpu"})) for _ in range(2)]
    assert gpu_agent.node_id == gpu_node and gpu_agent.gpu_ids
    assert all(a.node_id and a.node_id != gpu_node for a in cpu_agents), [a.node_id for a in cpu_agents]
    assert site.status(gpu_agent.id).node_id == gpu_node  # what `swarmctl agent status` shows as "node"
    cap = site.heartbeat()
    by_id = {n.node_id: n for n in cap.nodes}
    assert by_id[gpu_node].free_gpus == 1.0  # the agent holds one of the node's two GPUs


def test_losing_the_gpu_node_fails_its_agent_and_the_site_keeps_serving(site: Site) -> None:
    agents = site.call(lambda c: c.list_agents(status=AgentStatus.RUNNING))
    gpu_agent = next(a for a in agents if a.config.labels.get("role") == "gpu")
    cpu_agents = [a for a in agents if a.config.labels.get("role") == "cpu"]
    gpu_node_sid = site.process.worker_sids[0]  # the first worker carries the GPUs
    raylet = heads.raylet_pid(gpu_node_sid)
    assert raylet is not None
    os.kill(raylet, signal.SIGKILL)

    failed = wait_for(lambda: (a := site.status(gpu_agent.id)).status == AgentStatus.FAILED and a,
                      "the GPU agent to be failed after its node was lost")
    assert f"its node {failed.node_id[:12]} was lost" in failed.status_reason, failed.status_reason
    wait_for(lambda: len(site.heartbeat().nodes) == 2, "the heartbeat to drop the lost node")
    cap = site.heartbeat()
    assert cap.gpu_types == [] and cap.total_gpus == 0
    for agent in cpu_agents:  # agents on the other nodes are untouched
        assert site.exec(agent.id, "echo still-here").stdout == "still-here\n"
    again = site.spawn(SpawnConfig(cpus=0.5))
    assert again.status == AgentStatus.RUNNING
