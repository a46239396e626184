"""The control plane end to end: a real control-plane Ray head, two real sites (one with simulated
A100s), everything through ``connect(state_dir)``. The tests run in file order and share state:
registration, placement and spill-over, exec, restarts of the balancer and of the whole plane.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from godel_ray import settings
from godel_ray.client.proxy import TransparentClusterProxy, connect
from godel_ray.client.reader import StateReader
from godel_ray.control import controlplane
from godel_ray.errors import (
    AlreadyExists,
    ClusterNotFound,
    ClusterUnavailable,
    DeadlineExceeded,
    InvalidArgument,
    NoPlacement,
    Unauthenticated,
)
from godel_ray.models import AgentStatus, Cluster, ExecChunk, SpawnConfig
from godel_ray.raykit.heads import free_port
from tests import helpers
from tests.conftest import write_token

pytestmark = pytest.mark.ray
T = TypeVar("T")
WAIT_S = 120.0
wait_for = functools.partial(helpers.wait_for, timeout_s=WAIT_S)




@dataclass
class Plane:
    state_dir: Path
    proxy: TransparentClusterProxy
    sites: dict[str, Any]
    agents: dict[str, str] = field(default_factory=dict)  # role -> agent id


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory, site_factory: Any) -> Iterator[Plane]:
    state_dir = tmp_path_factory.mktemp("godel-state")
    cpu = site_factory("cpu-west", num_cpus=4)
    gpu = site_factory("gpu-east", num_cpus=4, num_gpus=2, gpu_type="nvidia-a100")
    info = controlplane.up(state_dir, num_cpus=4)
    try:
        assert info.running and info.started
        yield Plane(state_dir=state_dir, proxy=connect(state_dir), sites={"cpu-west": cpu, "gpu-east": gpu})
    finally:
        controlplane.down(state_dir)
        for site in (cpu, gpu):
            site.terminate(timeout_s=20)


def _site_cluster(site: Any, **extra: Any) -> Cluster:
    return Cluster(id=site.name, endpoint=site.endpoint, region=site.name.split("-")[1],
                   auth_token_file=str(site.token_file), **extra)


def test_register_sites_and_refuse_bad_input(plane: Plane, tmp_path: Path) -> None:
    registry = plane.proxy.registry
    cpu, gpu = plane.sites["cpu-west"], plane.sites["gpu-east"]
    info = registry.register(_site_cluster(cpu, cost_per_hour=1.0))
    assert info.cluster.id == "cpu-west" and info.health.capacity.total_cpus == 4
    gpu_info = registry.register(_site_cluster(gpu, cost_per_hour=3.0))
    assert gpu_info.cluster.capabilities.gpu and gpu_info.health.capacity.total_gpus == 2

    with pytest.raises(AlreadyExists, match="already registered"):
        registry.register(_site_cluster(cpu))
    with pytest.raises((ClusterUnavailable, DeadlineExceeded)):
        registry.register(Cluster(id="nowhere", endpoint=f"127.0.0.1:{free_port()}",
                                  auth_token_file=str(cpu.token_file)))
    wrong = tmp_path / "wrong.token"
    write_token(wrong, "not-the-token")
    with pytest.raises(Unauthenticated):
        registry.register(Cluster(id="impostor", endpoint=cpu.endpoint, auth_token_file=str(wrong)))
    with pytest.raises(InvalidArgument):
        registry.register(Cluster(id="Bad Name!", endpoint=cpu.endpoint, auth_token_file=str(cpu.token_file)))
    with pytest.raises(ClusterNotFound):
        registry.get("nope")

    assert sorted(c.cluster.id for c in registry.list()) == ["cpu-west", "gpu-east", "local"]
    assert registry.regions() == {"east": ["gpu-east"], "local": ["local"], "west": ["cpu-west"]}
    reader = StateReader(plane.state_dir)  # the CLI's Ray-free view agrees
    assert sorted(c.cluster.id for c in reader.clusters()) == ["cpu-west", "gpu-east", "local"]
    wait_for(lambda: all(h.capacity.total_cpus > 0 for h in registry.health()), "heartbeats from every cluster")


def test_cpu_agent_lands_local_and_execs(plane: Plane) -> None:
    proxy = plane.proxy
    agent = proxy.spawn(SpawnConfig(model="m-local", labels={"team": "a"}))
    assert agent.cluster_id == "local" and agent.status == AgentStatus.RUNNING
    plane.agents["local"] = agent.id
    result = proxy.exec(agent.id, "echo kept > notes.txt && cat notes.txt")
    assert (result.exit_code, result.stdout) == (0, "kept\n")
    chunks: list[ExecChunk] = list(proxy.exec_stream(agent.id, "echo out; echo err 1>&2; exit 3"))
    assert chunks[-1].result is not None and chunks[-1].result.exit_code == 3
    assert "".join(c.data for c in chunks if c.result is None and c.stream.value == "stdout") == "out\n"
    assert "".join(c.data for c in chunks if c.result is None and c.stream.value == "stderr") == "err\n"
    assert proxy.explain(agent.id).rule == "local-under-threshold"


def test_spill_over_past_local_threshold(plane: Plane) -> None:
    proxy = plane.proxy
    assert proxy.registry.update("local", max_agents=1).cluster.max_agents == 1
    agent = proxy.spawn(SpawnConfig(model="m-remote", labels={"team": "b"}))
    assert agent.cluster_id in ("cpu-west", "gpu-east")
    plane.agents["remote"] = agent.id
    decision = proxy.explain(agent.id)
    assert decision.chosen == agent.cluster_id and "full" in decision.rejections["local"]
    result = proxy.exec(agent.id, "echo remote-$GODEL_MODEL")
    assert (result.exit_code, result.stdout) == (0, "remote-m-remote\n")
    streamed = list(proxy.exec_stream(agent.id, "echo a; echo b"))
    assert streamed[-1].result is not None and streamed[-1].result.exit_code == 0
    assert "".join(c.data for c in streamed if c.result is None) == "a\nb\n"


def test_gpu_agent_lands_on_gpu_site_and_never_elsewhere(plane: Plane) -> None:
    proxy = plane.proxy
    agent = proxy.spawn(SpawnConfig(model="m-gpu", requires_gpu=True, gpu_type="nvidia-a100"))
    assert agent.cluster_id == "gpu-east"
    plane.agents["gpu"] = agent.id
    assert proxy.exec(agent.id, "echo gpu").stdout == "gpu\n"
    with pytest.raises(NoPlacement) as err:
        proxy.spawn(SpawnConfig(requires_gpu=True, gpu_type="nvidia-h100"))
    assert set(err.value.reasons) == {"local", "cpu-west", "gpu-east"}
    plan = proxy.registry.plan(SpawnConfig(requires_gpu=True, gpu_type="nvidia-a100"))
    assert plan.chosen == "gpu-east" and "local" in plan.rejections


def test_asyncio_twin(plane: Plane) -> None:
    aio = plane.proxy.aio()

    async def scenario() -> tuple[Any, list[ExecChunk], list[str], str]:
        result = await aio.exec(plane.agents["remote"], "echo async")
        chunks = [c async for c in aio.exec_stream(plane.agents["local"], "echo streamed")]
        clusters = sorted(c.cluster.id for c in await aio.registry.list())
        status = (await aio.status(plane.agents["gpu"])).status.value
        return result, chunks, clusters, status

    result, chunks, clusters, status = asyncio.run(scenario())
    assert result.stdout == "async\n"
    assert chunks[-1].result is not None and "".join(c.data for c in chunks[:-1]) == "streamed\n"
    assert clusters == ["cpu-west", "gpu-east", "local"] and status == "running"


def test_list_filters_idempotency_kill_journal_events(plane: Plane) -> None:
    proxy = plane.proxy
    assert [a.id for a in proxy.list(cluster="local")] == [plane.agents["local"]]
    assert [a.id for a in proxy.list(labels={"team": "b"})] == [plane.agents["remote"]]
    assert [a.id for a in proxy.list(model="m-gpu")] == [plane.agents["gpu"]]
    assert len(proxy.list(status="running")) == 3

    first = proxy.spawn(SpawnConfig(model="m-idem", idempotency_key="job-42"))
    again = proxy.spawn(SpawnConfig(model="m-idem", idempotency_key="job-42"))
    assert again.id == first.id and len(proxy.list(model="m-idem")) == 1
    killed = proxy.kill(first.id)
    assert killed.status == AgentStatus.TERMINATED
    assert [a.id for a in proxy.list(status=AgentStatus.TERMINATED)] == [first.id]

    journal = proxy.journal(plane.agents["local"])
    assert [(e.command, e.exit_code) for e in journal] == [
        ("echo kept > notes.txt && cat notes.txt", 0), ("echo out; echo err 1>&2; exit 3", 3),
        ("echo streamed", 0)]
    remote_journal = wait_for(lambda: j if len(j := proxy.journal(plane.agents["remote"])) == 3 else None,
                              "the remote journal mirror of 3 commands")
    assert [e.command for e in remote_journal] == ["echo remote-$GODEL_MODEL", "echo a; echo b", "echo async"]
    types = {e.type for e in proxy.events()}
    assert {"cluster.registered", "agent.placed", "agent.spawned"} <= types


def test_balancer_restart_keeps_everything(plane: Plane) -> None:
    import ray

    before = {a.id: a.cluster_id for a in plane.proxy.list()}
    handle = ray.get_actor(settings.BALANCER_NAME, namespace=settings.NAMESPACE)
    ray.kill(handle, no_restart=False)
    proxy = connect(plane.state_dir)
    clusters = wait_for(lambda: proxy.registry.list(), "the restarted balancer")
    assert sorted(c.cluster.id for c in clusters) == ["cpu-west", "gpu-east", "local"]
    assert {a.id: a.cluster_id for a in proxy.list()} == before
    for role in ("local", "remote", "gpu"):
        assert proxy.exec(plane.agents[role], "echo alive").stdout == "alive\n"
    plane.proxy = proxy


def test_down_then_up_restores_clusters_and_agents(plane: Plane) -> None:
    before = {a.id: (a.cluster_id, a.status) for a in plane.proxy.list()}
    local_epoch = plane.proxy.status(plane.agents["local"]).epoch
    assert controlplane.down(plane.state_dir) is True
    assert controlplane.status(plane.state_dir).running is False
    info = controlplane.up(plane.state_dir, num_cpus=4)
    assert info.started and info.clusters == 3
    proxy = plane.proxy = connect(plane.state_dir)
    assert sorted(c.cluster.id for c in proxy.registry.list()) == ["cpu-west", "gpu-east", "local"]
    assert {a.id: (a.cluster_id, a.status) for a in proxy.list()} == before
    local = proxy.status(plane.agents["local"])
    assert local.status == AgentStatus.RUNNING and local.epoch == local_epoch + 1
    assert proxy.exec(plane.agents["local"], "cat notes.txt").stdout == "kept\n"  # restored from checkpoint
    assert [e.command for e in proxy.journal(plane.agents["local"])][:1] == ["echo kept > notes.txt && cat notes.txt"]
    for role in ("remote", "gpu"):
        assert proxy.exec(plane.agents[role], "echo back").stdout == "back\n"
