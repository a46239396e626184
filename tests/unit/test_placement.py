"""Placement as a pure function: hard filters, scoring by priority, spill-over, the decision record."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest

from godel_ray.core.placement import (
    FACTOR_AVAILABILITY,
    FACTOR_COST,
    FACTOR_GPU,
    FACTOR_LATENCY,
    FACTOR_REGION_BONUS,
    GPU_ANY_TYPE_SCORE,
    GPU_EXACT_TYPE_SCORE,
    PREFERRED_REGION_BONUS,
    RULE_BEST_SCORE,
    RULE_LOCAL_UNDER_THRESHOLD,
    RULE_NONE,
    RULE_PINNED,
    ClusterView,
    gpu_type_matches,
    local_load,
    no_placement_message,
    place,
    require_chosen,
)
from godel_ray.errors import NoPlacement
from godel_ray.models import (
    Cluster,
    ClusterCapabilities,
    ClusterHealthState,
    ClusterStatus,
    Priority,
    SiteCapacity,
    SpawnConfig,
)


def view(cluster_id: str, *, active: int = 0, max_agents: int = 10, status: ClusterStatus = ClusterStatus.ACTIVE,
         rtt_ms: float | None = 10.0, cost: float = 1.0, region: str = "us-east", gpu_types: list[str] | None = None,
         flags: list[str] | None = None, capacity: SiteCapacity | None = None, load_threshold: float = 0.8,
         maintenance: bool = False) -> ClusterView:
    caps = ClusterCapabilities(gpu=gpu_types is not None, gpu_types=gpu_types or [], flags=flags or [])
    cluster = Cluster(id=cluster_id, endpoint=None if cluster_id == "local" else f"{cluster_id}:1",
                      region=region, cost_per_hour=cost, max_agents=max_agents, capabilities=caps,
                      load_threshold=load_threshold, maintenance=maintenance)
    health = ClusterHealthState(cluster_id=cluster_id, status=status, rtt_ms=rtt_ms,
                                capacity=capacity or SiteCapacity())
    return ClusterView(cluster=cluster, health=health, active_agents=active)


def full_local() -> ClusterView:
    """Local over its spill-over threshold, so remote scoring decides."""
    return view("local", active=9, rtt_ms=None)


# --- load and GPU type matching -----------------------------------------------------------------


def test_local_load_is_used_over_max_not_backwards() -> None:
    # The seed computed free/max: an empty laptop looked full and spilled, a full one kept work.
    assert local_load(view("local", active=0, max_agents=10)) == 0.0
    assert local_load(view("local", active=9, max_agents=10)) == pytest.approx(0.9)
    empty = place(SpawnConfig(), [view("local", active=0), view("remote")])
    assert (empty.chosen, empty.rule) == ("local", RULE_LOCAL_UNDER_THRESHOLD)
    busy = place(SpawnConfig(), [view("local", active=9), view("remote")])
    assert (busy.chosen, busy.rule) == ("remote", RULE_BEST_SCORE)


@pytest.mark.parametrize(("wanted", "offered", "match"), [
    ("nvidia-a100", "A100", True), ("A100", "nvidia-a100", True), ("a100", "A100", True),
    ("nvidia-a100", "A100-80G", True), ("NVIDIA_A100", "a100", True),
    ("a100-80g", "A100-40G", False), ("a100", "h100", False), ("nvidia-a100", "a10", False),
    ("a10", "A100", False),
])
def test_gpu_type_matches(wanted: str, offered: str, match: bool) -> None:
    assert gpu_type_matches(wanted, offered) is match


# --- hard filters -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [ClusterStatus.DEGRADED, ClusterStatus.OFFLINE, ClusterStatus.MAINTENANCE])
def test_non_active_cluster_rejected_with_its_status(status: ClusterStatus) -> None:
    decision = place(SpawnConfig(), [full_local(), view("a", status=status), view("b")])
    assert decision.chosen == "b"
    assert decision.rejections["a"] == f"status is {status.value}"


def test_registry_maintenance_flag_rejected() -> None:
    decision = place(SpawnConfig(), [view("a", maintenance=True)])
    assert decision.chosen is None and "maintenance" in decision.rejections["a"]


def test_full_cluster_rejected() -> None:
    decision = place(SpawnConfig(), [view("a", active=10, max_agents=10), view("b", active=3)])
    assert decision.chosen == "b"
    assert decision.rejections["a"] == "full: 10/10 agents"


def test_site_reported_capacity_filters_slots_and_cpus() -> None:
    no_slot = SiteCapacity(max_agents=5, active_agents=5, available_agents=0)
    few_cpus = SiteCapacity(max_agents=5, available_agents=5, total_cpus=8, free_cpus=1.5)
    enough = SiteCapacity(max_agents=5, available_agents=5, total_cpus=8, free_cpus=2)
    decision = place(SpawnConfig(cpus=2), [view("a", capacity=no_slot), view("b", capacity=few_cpus),
                                          view("c", capacity=enough)])
    assert decision.chosen == "c"
    assert "no free agent slot" in decision.rejections["a"]
    assert decision.rejections["b"] == "needs 2 CPUs, 1.5 free"


def test_unreported_capacity_does_not_filter() -> None:
    decision = place(SpawnConfig(cpus=64), [view("a", capacity=SiteCapacity())])
    assert decision.chosen == "a"


def test_gpu_work_needs_a_gpu_cluster() -> None:
    decision = place(SpawnConfig(requires_gpu=True), [view("local"), view("cpu-only"), view("gpu", gpu_types=[])])
    assert decision.chosen == "gpu"
    assert decision.rejections == {"local": "no GPUs", "cpu-only": "no GPUs"}
    assert decision.candidates[0].factors[FACTOR_GPU] == GPU_ANY_TYPE_SCORE


def test_gpu_reported_by_heartbeat_counts_as_gpu_cluster() -> None:
    capacity = SiteCapacity(total_gpus=2, gpu_types=["A100"], free_gpus={"A100": 2})
    decision = place(SpawnConfig(gpu_type="nvidia-a100"), [view("site", capacity=capacity)])
    assert decision.chosen == "site"


def test_gpu_type_mismatch_is_rejected_never_silently_placed() -> None:
    config = SpawnConfig(gpu_type="nvidia-a100")
    decision = place(config, [view("local"), view("t4", gpu_types=["T4"]), view("untyped", gpu_types=[])])
    assert decision.chosen is None and decision.rule == RULE_NONE and decision.candidates == []
    assert decision.rejections["t4"] == "no nvidia-a100 GPU (offers: T4)"
    assert "untyped" in decision.rejections["untyped"]
    with pytest.raises(NoPlacement) as info:
        require_chosen(decision, config)
    assert info.value.reasons == decision.rejections
    for cluster_id in ("local", "t4", "untyped"):
        assert cluster_id in str(info.value)


def test_gpu_free_count_of_the_type_when_reported() -> None:
    busy = SiteCapacity(total_gpus=4, gpu_types=["A100", "T4"], free_gpus={"A100": 1, "T4": 3})
    free = SiteCapacity(total_gpus=4, gpu_types=["A100"], free_gpus={"A100": 2})
    decision = place(SpawnConfig(gpu_type="a100", gpu_count=2),
                     [view("busy", gpu_types=["A100", "T4"], capacity=busy), view("free", gpu_types=["A100"],
                                                                               capacity=free)])
    assert decision.chosen == "free"
    assert decision.rejections["busy"] == "needs 2 free a100 GPU(s), 1 free"
    assert decision.candidates[0].factors[FACTOR_GPU] == GPU_EXACT_TYPE_SCORE


def test_max_latency_filter_and_unknown_rtt_passes_for_local_only() -> None:
    config = SpawnConfig(max_latency_ms=50)
    views = [view("local", active=9, rtt_ms=None), view("far", rtt_ms=80.0), view("unknown", rtt_ms=None),
             view("near", rtt_ms=20.0)]
    decision = place(config, views)
    assert decision.chosen == "near"
    assert decision.rejections["far"] == "RTT 80.0 ms over max_latency_ms 50"
    assert "RTT unknown" in decision.rejections["unknown"]
    assert "local" not in decision.rejections


def test_max_cost_excluded_regions_and_required_capabilities() -> None:
    config = SpawnConfig(max_cost_per_hour=2.0, excluded_regions=["EU-West"], required_capabilities=["docker"])
    views = [view("pricey", cost=3.0, flags=["docker"]), view("eu", region="eu-west", flags=["docker"]),
             view("plain", flags=[]), view("ok", cost=2.0, flags=["docker", "nvme"])]
    decision = place(config, views)
    assert decision.chosen == "ok"
    assert decision.rejections["pricey"] == "cost $3/h over max_cost_per_hour $2"
    assert decision.rejections["eu"] == "region eu-west is excluded"
    assert decision.rejections["plain"] == "lacks capabilities: docker"


def test_pinned_cluster_wins_even_when_local_is_idle() -> None:
    decision = place(SpawnConfig(cluster="b"), [view("local"), view("a"), view("b", cost=9.0)])
    assert (decision.chosen, decision.rule) == ("b", RULE_PINNED)
    assert decision.rejections == {"local": "not the pinned cluster (b)", "a": "not the pinned cluster (b)"}


def test_pinned_cluster_still_meets_hard_filters() -> None:
    decision = place(SpawnConfig(cluster="b"), [view("b", status=ClusterStatus.OFFLINE)])
    assert decision.chosen is None and decision.rejections["b"] == "status is offline"
    unknown = place(SpawnConfig(cluster="ghost"), [view("b")])
    assert unknown.chosen is None and "no cluster has this id" in unknown.rejections["ghost"]


# --- scoring ------------------------------------------------------------------------------------


def priority_views() -> list[ClusterView]:
    # fast: low RTT, pricey, busy; cheap: slow, free of charge, busy; roomy: slow, pricey, empty.
    return [full_local(),
            view("fast", rtt_ms=5.0, cost=5.0, active=7),
            view("cheap", rtt_ms=200.0, cost=0.0, active=7),
            view("roomy", rtt_ms=200.0, cost=5.0, active=0)]


@pytest.mark.parametrize(("priority", "winner"), [
    (Priority.LATENCY, "fast"), (Priority.COST, "cheap"), (Priority.AVAILABILITY, "roomy"),
])
def test_each_priority_changes_the_winner(priority: Priority, winner: str) -> None:
    decision = place(SpawnConfig(priority=priority), priority_views())
    assert (decision.chosen, decision.rule) == (winner, RULE_BEST_SCORE)
    assert decision.priority is priority


def test_gpu_priority_prefers_the_asked_type_weight() -> None:
    # With GPU priority the gpu factor dominates; with no type asked every GPU cluster scores 50.
    views = [view("a", gpu_types=["A100"], rtt_ms=5.0), view("b", gpu_types=["T4"], rtt_ms=50.0)]
    typed = place(SpawnConfig(gpu_type="t4", priority=Priority.GPU), views)
    assert typed.chosen == "b" and typed.rejections["a"].startswith("no t4 GPU")
    untyped = place(SpawnConfig(requires_gpu=True, priority=Priority.GPU), views)
    assert untyped.chosen == "a"
    assert {c.factors[FACTOR_GPU] for c in untyped.candidates} == {GPU_ANY_TYPE_SCORE}
    gpu_weighted = next(c.score for c in untyped.candidates if c.cluster_id == "b")
    latency_weighted = next(c.score for c in place(SpawnConfig(requires_gpu=True, priority=Priority.LATENCY),
                                                   views).candidates if c.cluster_id == "b")
    assert gpu_weighted > latency_weighted  # the slow cluster's 50-point GPU factor weighs more


def test_factors_are_normalised_0_to_100_and_cpu_work_has_no_gpu_factor() -> None:
    decision = place(SpawnConfig(), priority_views())
    for candidate in decision.candidates:
        assert set(candidate.factors) == {FACTOR_LATENCY, FACTOR_COST, FACTOR_AVAILABILITY}
        assert all(0.0 <= f <= 100.0 for f in candidate.factors.values())
        assert 0.0 <= candidate.score <= 100.0
    by_id = {c.cluster_id: c for c in decision.candidates}
    assert by_id["local"].factors[FACTOR_LATENCY] == 100.0  # local counts as 0 ms
    assert by_id["fast"].factors[FACTOR_LATENCY] == pytest.approx(100.0 * 195 / 200)
    assert by_id["cheap"].factors[FACTOR_COST] == 100.0 and by_id["fast"].factors[FACTOR_COST] == 0.0
    assert by_id["roomy"].factors[FACTOR_AVAILABILITY] == 100.0
    assert by_id["fast"].factors[FACTOR_AVAILABILITY] == pytest.approx(30.0)


def test_equal_costs_score_100() -> None:
    decision = place(SpawnConfig(), [view("a", cost=2.0), view("b", cost=2.0)])
    assert [c.factors[FACTOR_COST] for c in decision.candidates] == [100.0, 100.0]


def test_availability_uses_the_site_report_when_tighter() -> None:
    capacity = SiteCapacity(max_agents=10, available_agents=1)
    decision = place(SpawnConfig(), [view("a", active=0, capacity=capacity)])
    assert decision.candidates[0].factors[FACTOR_AVAILABILITY] == pytest.approx(10.0)


def test_preferred_region_bonus() -> None:
    views = [full_local(), view("a", region="us-east"), view("b", region="eu-west")]
    plain = place(SpawnConfig(), views)
    assert plain.chosen == "a"  # tie broken by id
    preferred = place(SpawnConfig(preferred_region="EU-WEST"), views)
    assert preferred.chosen == "b"
    by_id = {c.cluster_id: c for c in preferred.candidates}
    assert by_id["b"].factors[FACTOR_REGION_BONUS] == PREFERRED_REGION_BONUS
    assert by_id["a"].factors[FACTOR_REGION_BONUS] == 0.0
    assert by_id["b"].score == pytest.approx(by_id["a"].score + PREFERRED_REGION_BONUS)


def test_ties_break_by_cluster_id_whatever_the_input_order() -> None:
    for order in (["c", "a", "b"], ["b", "c", "a"]):
        decision = place(SpawnConfig(), [full_local(), *(view(i) for i in order)])
        assert decision.chosen == "a"
        assert [c.cluster_id for c in decision.candidates][:3] == ["a", "b", "c"]


# --- spill-over ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("active", "threshold", "chosen", "rule"), [
    (7, 0.8, "local", RULE_LOCAL_UNDER_THRESHOLD),   # 0.7 < 0.8: stay local
    (8, 0.8, "remote", RULE_BEST_SCORE),             # 0.8 is at the threshold: spill over
    (9, 0.8, "remote", RULE_BEST_SCORE),
    (4, 0.5, "local", RULE_LOCAL_UNDER_THRESHOLD),   # the cluster's own threshold is used
    (5, 0.5, "remote", RULE_BEST_SCORE),
])
def test_spill_over_at_the_threshold_boundary(active: int, threshold: float, chosen: str, rule: str) -> None:
    views = [view("local", active=active, max_agents=10, load_threshold=threshold), view("remote")]
    decision = place(SpawnConfig(), views)
    assert (decision.chosen, decision.rule) == (chosen, rule)


def test_spill_over_just_below_and_at_threshold_exactly() -> None:
    below = place(SpawnConfig(), [view("local", active=79, max_agents=100), view("remote")])
    at = place(SpawnConfig(), [view("local", active=80, max_agents=100), view("remote")])
    assert (below.chosen, below.rule) == ("local", RULE_LOCAL_UNDER_THRESHOLD)
    assert (at.chosen, at.rule) == ("remote", RULE_BEST_SCORE)


def test_local_over_threshold_without_remote_stays_local() -> None:
    decision = place(SpawnConfig(), [view("local", active=9), view("remote", status=ClusterStatus.OFFLINE)])
    assert (decision.chosen, decision.rule) == ("local", RULE_BEST_SCORE)


def test_local_failing_a_filter_is_not_chosen_under_threshold() -> None:
    decision = place(SpawnConfig(requires_gpu=True), [view("local", active=0), view("gpu", gpu_types=["A100"])])
    assert decision.chosen == "gpu" and decision.rejections["local"] == "no GPUs"


def test_local_id_is_configurable() -> None:
    decision = place(SpawnConfig(), [view("laptop", active=0), view("remote")], local_id="laptop")
    assert (decision.chosen, decision.rule) == ("laptop", RULE_LOCAL_UNDER_THRESHOLD)


# --- the record ---------------------------------------------------------------------------------


def test_decision_records_every_candidate_and_rejection() -> None:
    views = [full_local(), view("a"), view("b", status=ClusterStatus.OFFLINE), view("c", cost=3.0)]
    decision = place(SpawnConfig(), views)
    assert {c.cluster_id for c in decision.candidates} == {"local", "a", "c"}
    assert decision.rejections == {"b": "status is offline"}
    assert [c.score for c in decision.candidates] == sorted((c.score for c in decision.candidates), reverse=True)
    dumped = decision.model_dump(mode="json")  # the record survives serialisation (state store, --json)
    assert type(decision).model_validate(dumped) == decision
    assert pickle.loads(pickle.dumps(decision)) == decision  # and Ray's pickling across actors
    assert decision.candidates[0].model_fields_set == {"cluster_id", "score", "factors"}
    assert dumped["candidates"][0]["factors"].keys() >= {FACTOR_LATENCY, FACTOR_COST, FACTOR_AVAILABILITY}


def test_no_placement_message_lists_every_cluster_and_why() -> None:
    config = SpawnConfig(gpu_type="nvidia-h100", gpu_count=2)
    views = [view("local"), view("a100-east", gpu_types=["A100"]), view("down", status=ClusterStatus.OFFLINE,
                                                                       gpu_types=["H100"])]
    decision = place(config, views)
    message = no_placement_message(decision, config)
    lines = message.splitlines()
    assert "gpus=2 of type nvidia-h100" in lines[0]
    assert lines[1:] == ["  a100-east: no nvidia-h100 GPU (offers: A100)", "  down: status is offline",
                         "  local: no GPUs"]


def test_no_placement_message_with_no_clusters() -> None:
    config = SpawnConfig()
    assert "no clusters are registered" in no_placement_message(place(config, []), config)


def test_core_modules_import_without_ray_or_grpc() -> None:
    code = ("import sys\n"
            "import godel_ray.core.placement, godel_ray.core.health, godel_ray.core.migration\n"
            "loaded = sorted(m for m in ('ray', 'grpc') if m in sys.modules)\n"
            "print(','.join(loaded) or 'clean')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "clean", result.stdout + result.stderr
