"""What the agent runtime's Ray cluster can host: the check before a spawn, and the capacity report.

Pure (reads resource maps handed in; no ray, no grpc), so both are unit-tested without Ray:

- ``placement_problem(config, nodes)``: can some alive node host ``config`` at all (its TOTAL
  resources), and under which GPU type spelling? GPU types match by ``core.gpu`` -- the rule
  placement applies too, so a site never refuses a type that placement chose it for.
- ``site_capacity(...)``: the ``SiteCapacity`` a heartbeat reports; resources held by idle
  warm-pool members count as free (a spawn claims or evicts them);
- ``node_capacities(nodes)``: the per-node part of it, from each alive node's total and free
  resources (there, warm-pool members count as used: they do hold their node's resources).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from godel_ray import settings
from godel_ray.core.gpu import GPU_TYPE_RESOURCE_UNITS, gpu_type_resource, gpu_types_of, matching_gpu_types
from godel_ray.models import Isolation, NodeCapacity, SiteCapacity, SpawnConfig

Resources = Mapping[str, float]
NodeResources = tuple[str, bool, Resources, Resources]  # node id, is the head, total, free


def _fits(config: SpawnConfig, node: Resources, accel: str | None) -> bool:
    if node.get("CPU", 0.0) < config.cpus or node.get("GPU", 0.0) < config.num_gpus:
        return False
    return accel is None or node.get(gpu_type_resource(accel), 0.0) > 0


def placement_problem(config: SpawnConfig, nodes: Sequence[Resources]) -> tuple[str | None, str | None]:
    """Check ``config`` against each alive node's TOTAL resources.

    Returns ``(problem, accelerator_type)``: ``problem`` is None when some node could host the
    agent, else a sentence naming what is missing; ``accelerator_type`` is the GPU type as the
    cluster spells it (None for no type). With several matching types (``a100`` asked, ``a100-40g``
    and ``a100-80g`` offered) the first, in ``core.gpu``'s order, that some node can host wins.
    """
    advertised = sorted({t for node in nodes for t in gpu_types_of(node)})
    candidates: list[str | None] = [None]
    if config.needs_gpu and config.gpu_type:
        candidates = list(matching_gpu_types(config.gpu_type, advertised))
        if not candidates:
            have = ", ".join(advertised) or "none"
            return (f"no node has GPU type {config.gpu_type!r} (GPU types here: {have})", None)
    for accel in candidates:
        if any(_fits(config, node, accel) for node in nodes):
            return None, accel
    accel = candidates[0]
    biggest = max(((n.get("CPU", 0.0), n.get("GPU", 0.0)) for n in nodes), default=(0.0, 0.0))
    return (f"no node has {wants(config, accel)} (largest node: {biggest[0]:g} CPUs, {biggest[1]:g} GPUs)",
            accel)


def wants(config: SpawnConfig, accel: str | None) -> str:
    """What ``config`` asks of a node, in words: ``"1 CPUs and 1 GPU(s) of type nvidia-a100"``."""
    text = f"{config.cpus:g} CPUs"
    if config.needs_gpu:
        text += f" and {config.num_gpus} GPU(s)" + (f" of type {accel}" if accel else "")
    return text


def node_capacities(nodes: Sequence[NodeResources]) -> list[NodeCapacity]:
    """Each node's capacity (the head first, then by node id)."""
    out = [NodeCapacity(node_id=node_id, head=head, total_cpus=total.get("CPU", 0.0),
                        free_cpus=min(total.get("CPU", 0.0), free.get("CPU", 0.0)),
                        total_gpus=total.get("GPU", 0.0), free_gpus=min(total.get("GPU", 0.0), free.get("GPU", 0.0)),
                        gpu_types=gpu_types_of(total))
           for node_id, head, total, free in nodes]
    return sorted(out, key=lambda n: (not n.head, n.node_id))


def site_capacity(*, name: str, region: str, cost_per_hour: float, max_agents: int, active_agents: int,
                  total: Resources, free: Resources, pool_cpus: float, pool_gpus: Mapping[str, float],
                  warm_pool: int, isolation: Isolation, nodes: Sequence[NodeResources] = ()) -> SiteCapacity:
    """The capacity a heartbeat reports. ``pool_cpus``/``pool_gpus`` (by advertised GPU type) are what
    idle and starting warm-pool members hold: they count as free; idle members take no agent slot."""
    types = gpu_types_of(total)
    free_gpu = free.get("GPU", 0.0) + sum(pool_gpus.values())
    return SiteCapacity(
        name=name, region=region, cost_per_hour=cost_per_hour,
        max_agents=max_agents, active_agents=active_agents,
        available_agents=max(0, max_agents - active_agents), gpu_types=types,
        free_gpus={t: min(free_gpu, free.get(gpu_type_resource(t), 0.0)
                          + pool_gpus.get(t, 0.0) * GPU_TYPE_RESOURCE_UNITS) for t in types},
        total_gpus=total.get("GPU", 0.0), total_cpus=total.get("CPU", 0.0),
        free_cpus=min(total.get("CPU", 0.0), free.get("CPU", 0.0) + pool_cpus),
        warm_pool=warm_pool, version=settings.VERSION, isolation=isolation, nodes=node_capacities(nodes))


__all__ = ["NodeResources", "node_capacities", "placement_problem", "site_capacity", "wants"]
