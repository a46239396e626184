"""Placement: which cluster a new agent goes to, and the record of why.

Pure: no ray, no grpc, no clock reads beyond the record's timestamp. The balancer gathers one
``ClusterView`` per registered cluster and calls ``place``; ``swarmctl agent explain`` and
``cluster plan`` render the ``PlacementDecision`` it returns.

The decision, in order:

1. **Hard filters.** Every cluster that fails one gets a human reason in ``rejections``: not the
   pinned cluster; status not ``active``; no free agent slot or too few free CPUs; GPU work on a
   cluster without GPUs, without the asked GPU type (``core.gpu.gpu_type_matches``: the same rule
   the site applies), or without enough free GPUs of it; RTT over
   ``max_latency_ms``; cost over ``max_cost_per_hour``; an excluded region; a missing capability
   flag. GPU work is never placed on a cluster that lacks the GPU: it fails instead.
2. **Score** each survivor: factors normalised to 0-100 (latency, cost, availability, and GPU match
   for GPU work only), weighted by ``config.priority`` (``WEIGHTS``), plus ``PREFERRED_REGION_BONUS``.
3. **Choose.** Pinned: the pinned cluster. Otherwise spill-over: ``local`` while it survives the
   filters and its load (used/max) is below its ``load_threshold``; else the best-scored remote;
   else ``local`` if it survived. Ties break by cluster id, ascending.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from godel_ray.core.gpu import gpu_type_matches
from godel_ray.errors import NoPlacement
from godel_ray.models import (
    LOCAL_CLUSTER_ID,
    CandidateScore,
    Cluster,
    ClusterHealthState,
    ClusterStatus,
    PlacementDecision,
    Priority,
    SpawnConfig,
)

PREFERRED_REGION_BONUS = 10.0
GPU_EXACT_TYPE_SCORE = 100.0  # the asked GPU type (the filters guarantee it is there)
GPU_ANY_TYPE_SCORE = 50.0  # GPU work with no type asked: any GPU will do

RULE_PINNED = "pinned"
RULE_LOCAL_UNDER_THRESHOLD = "local-under-threshold"
RULE_BEST_SCORE = "best-score"
RULE_NONE = "none"

FACTOR_LATENCY = "latency"
FACTOR_COST = "cost"
FACTOR_AVAILABILITY = "availability"
FACTOR_GPU = "gpu"
FACTOR_REGION_BONUS = "region_bonus"


@dataclass(frozen=True)
class Weights:
    """Relative weight of each factor. The score divides by the sum of the weights that apply."""

    latency: float
    cost: float
    availability: float
    gpu: float


WEIGHTS: Mapping[Priority, Weights] = MappingProxyType({
    Priority.LATENCY: Weights(latency=0.55, cost=0.15, availability=0.20, gpu=0.10),
    Priority.COST: Weights(latency=0.15, cost=0.55, availability=0.20, gpu=0.10),
    Priority.AVAILABILITY: Weights(latency=0.15, cost=0.15, availability=0.60, gpu=0.10),
    Priority.GPU: Weights(latency=0.10, cost=0.10, availability=0.20, gpu=0.60),
})


@dataclass(frozen=True)
class ClusterView:
    """What the balancer knows of one cluster at decision time."""

    cluster: Cluster
    health: ClusterHealthState
    active_agents: int  # non-final agents the federation has placed there


def local_load(view: ClusterView) -> float:
    """Load as used/max: ``active_agents / max_agents`` (0.0 empty, 1.0 full).

    The seed computed this backwards (free/max), which kept work on a full laptop and spilled an
    idle one; a unit test pins the direction.
    """
    max_agents = view.cluster.max_agents
    if max_agents <= 0:
        return 1.0
    return view.active_agents / max_agents


@dataclass(frozen=True)
class _Request:
    """The fields of a SpawnConfig that placement reads, read once per decision."""

    pinned: str | None
    local_id: str
    cpus: float
    needs_gpu: bool
    gpu_type: str | None
    gpu_count: int
    max_latency_ms: float | None
    max_cost_per_hour: float | None
    excluded_regions: frozenset[str]
    required_capabilities: tuple[str, ...]


def _request(config: SpawnConfig, local_id: str) -> _Request:
    return _Request(
        pinned=config.cluster,
        local_id=local_id,
        cpus=config.cpus,
        needs_gpu=config.needs_gpu,
        gpu_type=config.gpu_type,
        gpu_count=config.gpu_count,
        max_latency_ms=config.max_latency_ms,
        max_cost_per_hour=config.max_cost_per_hour,
        excluded_regions=frozenset(r.lower() for r in config.excluded_regions),
        required_capabilities=tuple(config.required_capabilities),
    )


def _gpu_rejection(view: ClusterView, req: _Request) -> str | None:
    cluster, capacity = view.cluster, view.health.capacity
    if not (cluster.capabilities.gpu or capacity.total_gpus > 0):
        return "no GPUs"
    wanted = req.gpu_type
    if wanted is not None:
        offered = [*cluster.capabilities.gpu_types, *capacity.gpu_types]
        if not any(gpu_type_matches(wanted, t) for t in offered):
            return f"no {wanted} GPU (offers: {', '.join(sorted(set(offered))) or 'untyped GPUs only'})"
    if capacity.free_gpus:  # reported by the heartbeat, by type; a type missing there has none free
        free = sum(n for t, n in capacity.free_gpus.items() if wanted is None or gpu_type_matches(wanted, t))
        if free < req.gpu_count:
            kind = f"{wanted} " if wanted else ""
            return f"needs {req.gpu_count} free {kind}GPU(s), {free:g} free"
    return None


def _rejection(view: ClusterView, req: _Request) -> str | None:
    """Why ``view`` cannot take this agent, or None when it passes every hard filter."""
    cluster, health = view.cluster, view.health
    cluster_id = cluster.id
    if req.pinned is not None and cluster_id != req.pinned:
        return f"not the pinned cluster ({req.pinned})"
    if health.status is not ClusterStatus.ACTIVE:
        return f"status is {health.status.value}"
    if cluster.maintenance:
        return "in maintenance"
    if view.active_agents >= cluster.max_agents:
        return f"full: {view.active_agents}/{cluster.max_agents} agents"
    capacity = health.capacity
    if capacity.max_agents > 0 and capacity.available_agents <= 0:
        return f"site reports no free agent slot ({capacity.active_agents}/{capacity.max_agents})"
    if capacity.total_cpus > 0 and capacity.free_cpus < req.cpus:
        return f"needs {req.cpus:g} CPUs, {capacity.free_cpus:g} free"
    if req.needs_gpu:
        reason = _gpu_rejection(view, req)
        if reason is not None:
            return reason
    if req.max_latency_ms is not None:
        rtt_ms = health.rtt_ms
        if rtt_ms is None:
            if cluster_id != req.local_id:
                return f"RTT unknown (no heartbeat yet), max_latency_ms is {req.max_latency_ms:g}"
        elif rtt_ms > req.max_latency_ms:
            return f"RTT {rtt_ms:.1f} ms over max_latency_ms {req.max_latency_ms:g}"
    if req.max_cost_per_hour is not None and cluster.cost_per_hour > req.max_cost_per_hour:
        return f"cost ${cluster.cost_per_hour:g}/h over max_cost_per_hour ${req.max_cost_per_hour:g}"
    if req.excluded_regions and cluster.region.lower() in req.excluded_regions:
        return f"region {cluster.region} is excluded"
    if req.required_capabilities:
        missing = [f for f in req.required_capabilities if f not in cluster.capabilities.flags]
        if missing:
            return f"lacks capabilities: {', '.join(missing)}"
    return None


_score_then_id = operator.itemgetter(0, 1)
_new_object = object.__new__
_set_slot = object.__setattr__
_CANDIDATE_FIELDS = frozenset(CandidateScore.model_fields)


def _candidate(cluster_id: str, score: float, factors: dict[str, float]) -> CandidateScore:
    """A CandidateScore from values already typed here, without pydantic's per-call validation.

    Validation costs ~1 us a candidate, which is most of a decision at 100 clusters; this is what
    ``model_construct`` does, without its per-field default handling (every field is given).
    """
    candidate = _new_object(CandidateScore)
    _set_slot(candidate, "__dict__", {"cluster_id": cluster_id, "score": score, "factors": factors})
    _set_slot(candidate, "__pydantic_fields_set__", set(_CANDIDATE_FIELDS))
    _set_slot(candidate, "__pydantic_extra__", None)
    _set_slot(candidate, "__pydantic_private__", None)
    return candidate


def _score(config: SpawnConfig, survivors: list[ClusterView], local_id: str) -> list[CandidateScore]:
    """Candidates sorted best first (score descending, then cluster id ascending).

    Availability is the fraction of agent slots free (the federation's count, capped by the
    site's own report). Latency and cost are min-max normalised over the survivors (lower is
    better; all equal scores 100; an unknown RTT scores 0). Local is on this machine: its latency
    counts as 0 ms. Weights are divided by the sum of those that apply (no GPU weight for CPU work).
    This loop is the hot path of placement; it avoids per-candidate function calls on purpose.
    """
    weights = WEIGHTS[config.priority]
    gpu_work = config.needs_gpu
    weight_sum = weights.latency + weights.cost + weights.availability + (weights.gpu if gpu_work else 0.0)
    w_latency, w_cost = weights.latency / weight_sum, weights.cost / weight_sum
    w_availability = weights.availability / weight_sum
    gpu_factor = GPU_EXACT_TYPE_SCORE if config.gpu_type is not None else GPU_ANY_TYPE_SCORE
    gpu_points = weights.gpu / weight_sum * gpu_factor if gpu_work else 0.0
    preferred = config.preferred_region.lower() if config.preferred_region else None

    rtts = [0.0 if v.cluster.id == local_id else v.health.rtt_ms for v in survivors]
    known_rtts = [r for r in rtts if r is not None]
    rtt_high = max(known_rtts, default=0.0)
    rtt_span = rtt_high - min(known_rtts, default=0.0)
    costs = [v.cluster.cost_per_hour for v in survivors]
    cost_high = max(costs)
    cost_span = cost_high - min(costs)

    scored: list[tuple[float, str, dict[str, float]]] = []
    for view, rtt_ms, cost in zip(survivors, rtts, costs):
        latency = 0.0 if rtt_ms is None else 100.0 if rtt_span <= 0 else 100.0 * (rtt_high - rtt_ms) / rtt_span
        cheapness = 100.0 if cost_span <= 0 else 100.0 * (cost_high - cost) / cost_span
        cluster, capacity = view.cluster, view.health.capacity
        # free fraction of agent slots: the federation's count, capped by the site's own report
        free = (cluster.max_agents - view.active_agents) / cluster.max_agents
        if capacity.max_agents > 0 and capacity.available_agents / capacity.max_agents < free:
            free = capacity.available_agents / capacity.max_agents
        availability = 100.0 * free  # in (0, 100]: the filters let through only clusters with a free slot
        total = w_latency * latency + w_cost * cheapness + w_availability * availability + gpu_points
        factors = {FACTOR_LATENCY: latency, FACTOR_COST: cheapness, FACTOR_AVAILABILITY: availability}
        if gpu_work:
            factors[FACTOR_GPU] = gpu_factor
        if preferred is not None:
            bonus = PREFERRED_REGION_BONUS if cluster.region.lower() == preferred else 0.0
            factors[FACTOR_REGION_BONUS] = bonus
            total += bonus
        scored.append((-total, cluster.id, factors))
    scored.sort(key=_score_then_id)  # best first, ties by cluster id ascending
    return [_candidate(cluster_id, -neg_score, factors) for neg_score, cluster_id, factors in scored]


def place(config: SpawnConfig, views: Sequence[ClusterView], *, local_id: str = LOCAL_CLUSTER_ID
          ) -> PlacementDecision:
    """Decide where ``config`` goes. ``chosen`` is None (rule ``none``) when nothing fits.

    Never raises for "nothing fits": the caller turns that into ``NoPlacement`` with
    ``require_chosen`` so the decision is recorded either way.
    """
    req = _request(config, local_id)
    rejections: dict[str, str] = {}
    survivors: list[ClusterView] = []
    for view in views:
        reason = _rejection(view, req)
        if reason is None:
            survivors.append(view)
        else:
            rejections[view.cluster.id] = reason
    if req.pinned is not None and not any(v.cluster.id == req.pinned for v in views):
        rejections[req.pinned] = "pinned, but no cluster has this id"

    candidates = _score(config, survivors, local_id) if survivors else []
    chosen, rule = _choose(survivors, candidates, req)
    return PlacementDecision(chosen=chosen, rule=rule, priority=config.priority,
                             candidates=candidates, rejections=rejections)


def _choose(survivors: list[ClusterView], candidates: list[CandidateScore], req: _Request
            ) -> tuple[str | None, str]:
    if not candidates:
        return None, RULE_NONE
    if req.pinned is not None:
        return req.pinned, RULE_PINNED  # the filters rejected every other cluster
    local = next((v for v in survivors if v.cluster.id == req.local_id), None)
    if local is not None and local_load(local) < local.cluster.load_threshold:
        return req.local_id, RULE_LOCAL_UNDER_THRESHOLD
    remote = next((c.cluster_id for c in candidates if c.cluster_id != req.local_id), None)
    return (remote if remote is not None else req.local_id), RULE_BEST_SCORE


def _describe_request(config: SpawnConfig) -> str:
    parts = [f"cpus={config.cpus:g}"]
    if config.needs_gpu:
        parts.append(f"gpus={config.gpu_count}" + (f" of type {config.gpu_type}" if config.gpu_type else ""))
    if config.cluster:
        parts.append(f"pinned to {config.cluster}")
    if config.max_latency_ms is not None:
        parts.append(f"max_latency_ms={config.max_latency_ms:g}")
    if config.max_cost_per_hour is not None:
        parts.append(f"max_cost_per_hour={config.max_cost_per_hour:g}")
    if config.excluded_regions:
        parts.append(f"excluded_regions={','.join(config.excluded_regions)}")
    if config.required_capabilities:
        parts.append(f"required_capabilities={','.join(config.required_capabilities)}")
    return ", ".join(parts)


def no_placement_message(decision: PlacementDecision, config: SpawnConfig) -> str:
    """A message a person can act on: what was asked, then one line per cluster and why it was refused."""
    header = f"no cluster can take this agent ({_describe_request(config)})"
    if not decision.rejections and not decision.candidates:
        return header + ": no clusters are registered (swarmctl cluster add ...)"
    lines = [header + ":"]
    lines += [f"  {cid}: {reason}" for cid, reason in sorted(decision.rejections.items())]
    lines += [f"  {c.cluster_id}: eligible (score {c.score:.1f})" for c in decision.candidates
              if c.cluster_id != decision.chosen]
    return "\n".join(lines)


def require_chosen(decision: PlacementDecision, config: SpawnConfig) -> str:
    """The chosen cluster id, or ``NoPlacement`` listing every cluster and why (``reasons``)."""
    if decision.chosen is None:
        raise NoPlacement(no_placement_message(decision, config), reasons=dict(decision.rejections),
                          cluster_id=config.cluster or "")
    return decision.chosen


__all__ = [
    "FACTOR_AVAILABILITY", "FACTOR_COST", "FACTOR_GPU", "FACTOR_LATENCY", "FACTOR_REGION_BONUS",
    "GPU_ANY_TYPE_SCORE", "GPU_EXACT_TYPE_SCORE", "LOCAL_CLUSTER_ID", "PREFERRED_REGION_BONUS",
    "RULE_BEST_SCORE", "RULE_LOCAL_UNDER_THRESHOLD", "RULE_NONE", "RULE_PINNED", "WEIGHTS",
    "ClusterView", "Weights", "gpu_type_matches", "local_load", "no_placement_message", "place",
    "require_chosen",
]
