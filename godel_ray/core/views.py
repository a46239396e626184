"""Views, computed once: ``ClusterInfo``, ``ClusterStats``, the region map, and the filter of ``agent list``.

The balancer answers ``list_clusters``/``stats``/``regions``/``list_agents`` with these, and the
CLI's light path (``StateReader``, no Ray) shows the very same values computed from the state store
(whose ``agents`` query applies the same ``agent_matches``). Pure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from godel_ray.errors import InvalidArgument
from godel_ray.models import Agent, AgentStatus, Cluster, ClusterHealthState, ClusterInfo, ClusterStats


def health_of(health: Mapping[str, ClusterHealthState], cluster_id: str) -> ClusterHealthState:
    """The cluster's last known health (a fresh, unknown one when none is recorded yet)."""
    return health.get(cluster_id) or ClusterHealthState(cluster_id=cluster_id)


def load(active_agents: int, max_agents: int) -> float:
    """Used/max agent slots; a cluster that admits none is full."""
    return active_agents / max_agents if max_agents > 0 else 1.0


def cluster_infos(clusters: Iterable[Cluster], health: Mapping[str, ClusterHealthState],
                  active_counts: Mapping[str, int]) -> list[ClusterInfo]:
    return [ClusterInfo(cluster=c, health=health_of(health, c.id), agents=active_counts.get(c.id, 0))
            for c in clusters]


def cluster_stats(clusters: Iterable[Cluster], health: Mapping[str, ClusterHealthState],
                  agents: Iterable[Agent]) -> list[ClusterStats]:
    """Per cluster: status, agents by status, capacity, RTT and load (active agents / max)."""
    by_cluster: dict[str, Counter[str]] = {}
    active: Counter[str] = Counter()
    for agent in agents:
        by_cluster.setdefault(agent.cluster_id, Counter())[agent.status.value] += 1
        if not agent.status.is_final:
            active[agent.cluster_id] += 1
    out = []
    for cluster in clusters:
        state = health_of(health, cluster.id)
        out.append(ClusterStats(cluster_id=cluster.id, status=state.status,
                                agents_by_status=dict(by_cluster.get(cluster.id, {})),
                                capacity=state.capacity, rtt_ms=state.rtt_ms,
                                load=load(active[cluster.id], cluster.max_agents)))
    return out


def regions(clusters: Iterable[Cluster]) -> dict[str, list[str]]:
    """Cluster ids by region, each list sorted."""
    out: dict[str, list[str]] = {}
    for cluster in clusters:
        out.setdefault(cluster.region, []).append(cluster.id)
    return {region: sorted(ids) for region, ids in sorted(out.items())}


def status_filter(status: AgentStatus | str | None) -> AgentStatus | None:
    """``status`` as an ``AgentStatus`` (``InvalidArgument`` naming the valid ones)."""
    if status is None or isinstance(status, AgentStatus):
        return status
    try:
        return AgentStatus(status)
    except ValueError:
        raise InvalidArgument(f"unknown agent status {status!r}: one of "
                              f"{', '.join(s.value for s in AgentStatus)}") from None


def agent_matches(agent: Agent, *, cluster_id: str | None = None, status: AgentStatus | None = None,
                  labels: dict[str, str] | None = None, model: str | None = None) -> bool:
    """The filter of ``agent list`` (the balancer's table and the store's query): every given field
    must match, and every given label."""
    return ((cluster_id is None or agent.cluster_id == cluster_id)
            and (status is None or agent.status == status)
            and (model is None or agent.config.model == model)
            and all(agent.config.labels.get(k) == v for k, v in (labels or {}).items()))


__all__ = ["agent_matches", "cluster_infos", "cluster_stats", "health_of", "load", "regions", "status_filter"]
