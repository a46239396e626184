"""GPU types: one rule (``core.gpu``), applied alike by placement and by the site's own check.

The case that used to disagree: placement accepted ``a100`` for a site offering ``nvidia-a100-80g``,
then the site refused the spawn. Here both sides are asked the same questions and must agree.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from godel_ray.agents.capacity import placement_problem, site_capacity
from godel_ray.core.gpu import (
    gpu_type_matches,
    gpu_type_resource,
    gpu_types_of,
    matching_gpu_types,
    normalise_gpu_type,
    resolve_gpu_type,
)
from godel_ray.core.placement import ClusterView, place
from godel_ray.models import Cluster, ClusterCapabilities, ClusterHealthState, Isolation, SiteCapacity, SpawnConfig

CASES = [
    # (asked, offered, match)
    ("nvidia-a100", "nvidia-a100", True),
    ("A100", "nvidia-a100", True),
    ("NVIDIA_A100", "a100", True),
    ("a100", "nvidia-a100-80g", True),  # a bare model matches its variants
    ("nvidia-a100", "A100-40G", True),
    ("a100-80g", "nvidia-a100-80g", True),  # a variant asked for, offered exactly
    ("A100-80G", "nvidia_a100_80g", True),
    ("a100-80g", "nvidia-a100-40g", False),  # ...and only that variant
    ("a100-80g", "nvidia-a100", False),
    ("a10", "nvidia-a100", False),  # a variant starts after a dash, never mid-name
    ("a100", "nvidia-a10", False),
    ("a100", "nvidia-h100", False),
]


@pytest.mark.parametrize(("asked", "offered", "match"), CASES)
def test_the_rule(asked: str, offered: str, match: bool) -> None:
    assert gpu_type_matches(asked, offered) is match


def test_normalise() -> None:
    assert normalise_gpu_type(" NVIDIA_A100-80G ") == "a100-80g"
    assert normalise_gpu_type("amd-mi300x") == "mi300x"


def test_resolve_prefers_the_same_spelling_then_the_same_model_then_variants_in_order() -> None:
    offered = ["nvidia-a100-80g", "nvidia-a100-40g", "A100", "nvidia-a100"]
    assert resolve_gpu_type("nvidia-a100", offered) == "nvidia-a100"
    assert resolve_gpu_type("a100", offered) == "A100"
    assert matching_gpu_types("a100", offered) == ["A100", "nvidia-a100", "nvidia-a100-40g", "nvidia-a100-80g"]
    assert resolve_gpu_type("a100", ["nvidia-a100-80g", "nvidia-a100-40g"]) == "nvidia-a100-40g"
    assert resolve_gpu_type("a100-80g", ["nvidia-a100-40g"]) is None


def test_ray_resource_names() -> None:
    assert gpu_type_resource("nvidia-a100-80g") == "accelerator_type:nvidia-a100-80g"
    assert gpu_types_of({"CPU": 8, "accelerator_type:nvidia-a100": 2, "accelerator_type:gone": 0}) == ["nvidia-a100"]


# --- both sides agree ---------------------------------------------------------------------------

def _node(gpu_type: str, gpus: float = 2.0) -> dict[str, float]:
    return {"CPU": 8.0, "GPU": gpus, gpu_type_resource(gpu_type): gpus}


def _site_view(gpu_type: str) -> ClusterView:
    cluster = Cluster(id="gpu-site", endpoint="gpu-site:1", capabilities=ClusterCapabilities(gpu=True))
    capacity = SiteCapacity(name="gpu-site", max_agents=10, available_agents=10, gpu_types=[gpu_type],
                            free_gpus={gpu_type: 2.0}, total_gpus=2.0, total_cpus=8.0, free_cpus=8.0)
    return ClusterView(cluster=cluster, health=ClusterHealthState(cluster_id="gpu-site", capacity=capacity),
                       active_agents=0)


@pytest.mark.parametrize(("asked", "offered", "match"), CASES)
def test_placement_and_the_site_agree(asked: str, offered: str, match: bool) -> None:
    config = SpawnConfig(gpu_type=asked, cpus=1)
    placed = place(config, [_site_view(offered)]).chosen == "gpu-site"
    problem, accel = placement_problem(config, [_node(offered)])
    assert placed is match
    assert (problem is None) is match, problem
    assert accel == (offered if match else None)


def test_the_variant_case_on_both_sides() -> None:
    """``a100`` asked, ``nvidia-a100-80g`` offered: placement chooses the site, and the site hosts it
    under its own spelling (the accelerator type its actor asks Ray for)."""
    config = SpawnConfig(gpu_type="a100", cpus=1)
    assert place(config, [_site_view("nvidia-a100-80g")]).chosen == "gpu-site"
    assert placement_problem(config, [_node("nvidia-a100-80g")]) == (None, "nvidia-a100-80g")
    # a variant asked for is refused on both sides when another variant is offered
    other = SpawnConfig(gpu_type="a100-80g", cpus=1)
    decision = place(other, [_site_view("nvidia-a100-40g")])
    assert decision.chosen is None and "no a100-80g GPU" in decision.rejections["gpu-site"]
    problem, _ = placement_problem(other, [_node("nvidia-a100-40g")])
    assert problem is not None and "no node has GPU type 'a100-80g'" in problem


def test_site_picks_the_variant_a_node_can_host() -> None:
    """Two variants match; only the node with the second has room: that one is chosen."""
    config = SpawnConfig(gpu_type="a100", gpu_count=2, cpus=1)
    nodes = [_node("nvidia-a100-40g", gpus=1.0), _node("nvidia-a100-80g", gpus=2.0)]
    assert placement_problem(config, nodes) == (None, "nvidia-a100-80g")
    problem, accel = placement_problem(config.model_copy(update={"gpu_count": 4}), nodes)
    assert problem is not None and "4 GPU(s) of type nvidia-a100-40g" in problem and accel == "nvidia-a100-40g"


def test_capacity_reports_gpu_types_as_ray_advertises_them() -> None:
    total = {"CPU": 8.0, "GPU": 2.0, gpu_type_resource("nvidia-a100-80g"): 2.0}
    free = {"CPU": 6.0, "GPU": 1.0, gpu_type_resource("nvidia-a100-80g"): 1.999}
    cap = site_capacity(name="s", region="r", cost_per_hour=1.0, max_agents=4, active_agents=1, total=total,
                        free=free, pool_cpus=1.0, pool_gpus={}, warm_pool=1, isolation=Isolation.SANDBOX)
    assert cap.gpu_types == ["nvidia-a100-80g"] and cap.free_gpus == {"nvidia-a100-80g": 1.0}
    assert cap.isolation is Isolation.SANDBOX
    assert (cap.free_cpus, cap.available_agents, cap.total_gpus) == (7.0, 3, 2.0)


def test_the_pure_modules_import_neither_ray_nor_grpc() -> None:
    code = ("import sys, godel_ray.core.gpu, godel_ray.agents.capacity; "
            "assert 'ray' not in sys.modules and 'grpc' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
