"""``cluster drain`` end to end on real sites: every agent that can move leaves live (files intact,
one copy), a GPU agent no other cluster can take stays and is listed with the reason, and the
drained cluster is left in maintenance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from godel_ray.errors import ClusterNotFound
from godel_ray.models import AgentStatus, ClusterStatus, MigrationPhase, SpawnConfig
from tests.e2e.migration_helpers import control_plane, live_copies, register

pytestmark = pytest.mark.ray
GPU_TYPE = "nvidia-a100"


def test_drain_moves_the_cpu_agent_and_lists_the_gpu_agent_nobody_else_can_take(
        tmp_path: Path, site_factory: Any) -> None:
    gpu = site_factory("gpu", num_cpus=2, num_gpus=1, gpu_type=GPU_TYPE)
    west = site_factory("west", num_cpus=2)
    with control_plane(tmp_path / "state") as proxy:
        register(proxy, gpu)
        register(proxy, west)
        cpu_agent = proxy.spawn(SpawnConfig(model="m", cluster="gpu", labels={"kind": "cpu"}))
        gpu_agent = proxy.spawn(SpawnConfig(model="m", requires_gpu=True, gpu_type=GPU_TYPE))
        assert (cpu_agent.cluster_id, gpu_agent.cluster_id) == ("gpu", "gpu")
        assert proxy.exec(cpu_agent.id, "echo kept > notes.txt").exit_code == 0

        report = proxy.registry.drain("gpu", wait=True)

        assert report.cluster_id == "gpu" and report.maintenance
        assert [(m.agent_id, m.phase, m.reason) for m in report.migrations] == [
            (cpu_agent.id, MigrationPhase.COMPLETED, "drain")]
        moved = proxy.status(cpu_agent.id)
        assert moved.cluster_id in ("west", "local") and moved.status is AgentStatus.RUNNING
        assert proxy.exec(cpu_agent.id, "cat notes.txt").stdout == "kept\n"
        assert live_copies(gpu, cpu_agent.id) == []
        assert list(report.unmovable) == [gpu_agent.id]
        assert GPU_TYPE in report.unmovable[gpu_agent.id] and "no GPUs" in report.unmovable[gpu_agent.id]
        assert proxy.status(gpu_agent.id).cluster_id == "gpu"
        assert [a.status for a in live_copies(gpu, gpu_agent.id)] == [AgentStatus.RUNNING]
        info = proxy.registry.get("gpu")
        assert info.cluster.maintenance and info.health.status is ClusterStatus.MAINTENANCE
        types = [e.type for e in proxy.events() if e.cluster_id == "gpu" and e.kind.value == "cluster"]
        assert "cluster.draining" in types and "cluster.drained" in types
        with pytest.raises(ClusterNotFound):
            proxy.registry.drain("nowhere")
