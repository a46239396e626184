"""A site of several Ray nodes, the pure parts: the ``workers`` options and the per-node capacity report."""

from __future__ import annotations

from pathlib import Path

import pytest

from godel_ray.agents.capacity import node_capacities, site_capacity
from godel_ray.errors import InvalidArgument
from godel_ray.models import Isolation
from godel_ray.site import launcher
from godel_ray.site.serve import SiteConfig

HEAD = ("h" * 8, True, {"CPU": 2.0, "node:__internal_head__": 1.0}, {"CPU": 1.0})
GPU_NODE = ("g" * 8, False, {"CPU": 2.0, "GPU": 2.0, "accelerator_type:nvidia-a100": 2.0},
            {"CPU": 1.0, "GPU": 1.0, "accelerator_type:nvidia-a100": 1.999})
CPU_NODE = ("c" * 8, False, {"CPU": 4.0}, {"CPU": 4.5})  # Ray's free view may briefly exceed the total


def test_workers_are_an_option_with_gpus_and_cpus() -> None:
    config = SiteConfig.load(None, auth_token_file="t", workers=2, num_cpus=2, worker_cpus=1, num_gpus=2,
                             gpu_type="nvidia-a100")
    assert (config.workers, config.worker_cpus) == (2, 1)


@pytest.mark.parametrize(("options", "says"), [
    ({"workers": 1, "ray_address": "127.0.0.1:6379"}, "--workers starts nodes next to the head"),
    ({"worker_cpus": 2}, "--worker-cpus needs --workers"),
    ({"workers": -1}, "workers"),
    ({"workers": 17}, "workers"),
])
def test_bad_worker_options_are_refused_with_the_reason(options: dict[str, object], says: str) -> None:
    with pytest.raises(InvalidArgument, match=says):
        SiteConfig.load(None, auth_token_file="t", **options)


def test_node_capacities_head_first_free_never_over_total() -> None:
    nodes = node_capacities([GPU_NODE, CPU_NODE, HEAD])
    assert [n.node_id for n in nodes] == [HEAD[0], CPU_NODE[0], GPU_NODE[0]]
    head, cpu, gpu = nodes
    assert head.head and not cpu.head and not gpu.head
    assert (cpu.total_cpus, cpu.free_cpus, cpu.total_gpus, cpu.gpu_types) == (4.0, 4.0, 0.0, [])
    assert (gpu.total_gpus, gpu.free_gpus, gpu.gpu_types) == (2.0, 1.0, ["nvidia-a100"])


def test_site_capacity_carries_the_nodes() -> None:
    cap = site_capacity(name="s", region="r", cost_per_hour=0.0, max_agents=4, active_agents=1,
                        total={"CPU": 8.0, "GPU": 2.0, "accelerator_type:nvidia-a100": 2.0},
                        free={"CPU": 6.0, "GPU": 1.0, "accelerator_type:nvidia-a100": 1.999}, pool_cpus=0.0,
                        pool_gpus={}, warm_pool=0, isolation=Isolation.SANDBOX, nodes=[HEAD, CPU_NODE, GPU_NODE])
    assert len(cap.nodes) == 3 and sum(n.total_cpus for n in cap.nodes) == cap.total_cpus
    assert site_capacity(name="s", region="r", cost_per_hour=0.0, max_agents=4, active_agents=0, total={},
                         free={}, pool_cpus=0.0, pool_gpus={}, warm_pool=0,
                         isolation=Isolation.SANDBOX).nodes == []


def test_the_kuberay_manifest_has_the_multinode_site_shape() -> None:
    """cluster-configs/kuberay-site.yaml and site-multinode.yaml describe one shape: a head, one GPU
    worker node with the site's GPUs (and their accelerator_type resource), the other workers CPU-only."""
    import json

    import yaml

    configs = Path(__file__).resolve().parents[2] / "cluster-configs"
    local = SiteConfig.load(configs / "site-multinode.yaml")
    doc = next(d for d in yaml.safe_load_all((configs / "kuberay-site.yaml").read_text())
               if d and d.get("kind") == "RayCluster")
    groups = doc["spec"]["workerGroupSpecs"]
    assert sum(g["replicas"] for g in groups) == local.workers

    def gpus(group: dict[str, object]) -> int:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]  # type: ignore[index]
        return int(limits.get("nvidia.com/gpu", 0))

    gpu_groups = [g for g in groups if gpus(g)]
    assert [(g["replicas"], gpus(g)) for g in gpu_groups] == [(1, local.num_gpus)]
    resources = json.loads(json.loads(gpu_groups[0]["rayStartParams"]["resources"]))
    assert resources == {f"accelerator_type:{local.gpu_type}": local.num_gpus}


def test_the_launcher_records_each_worker_nodes_session(tmp_path: Path) -> None:
    """``start_site`` keeps the ``ray worker session SID`` lines, so ``kill`` stops those nodes too."""
    script = ("echo 'ray head session 4242'; echo 'ray worker session 4343'; echo 'ray worker session 4444'; "
              "echo 'listening on 127.0.0.1:5555'; exec sleep 600")
    site = launcher.start_site(tmp_path, "multi", prefix_cmd=["sh", "-c", script, "stand-in"])
    try:
        assert (site.head_sid, site.worker_sids, site.endpoint) == (4242, [4343, 4444], "127.0.0.1:5555")
    finally:
        site.head_sid, site.worker_sids = None, []  # stand-ins: there are no such sessions to stop
        site.kill()
