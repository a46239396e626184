"""Cluster views (core/views.py): one computation for the balancer and the CLI's light path."""

from __future__ import annotations

from godel_ray.core import views
from godel_ray.models import Agent, AgentStatus, Cluster, ClusterHealthState, ClusterStatus, SpawnConfig


def _agent(agent_id: str, cluster_id: str, status: AgentStatus) -> Agent:
    return Agent(id=agent_id, cluster_id=cluster_id, status=status, config=SpawnConfig())


def test_stats_count_every_status_but_load_only_live_agents() -> None:
    clusters = [Cluster(id="local", endpoint=None, max_agents=4),
                Cluster(id="east", endpoint="h:1", region="us-east", max_agents=0)]
    health = {"east": ClusterHealthState(cluster_id="east", status=ClusterStatus.DEGRADED, rtt_ms=12.0)}
    agents = [_agent("ag-1", "local", AgentStatus.RUNNING), _agent("ag-2", "local", AgentStatus.TERMINATED),
              _agent("ag-3", "local", AgentStatus.RUNNING)]
    local, east = views.cluster_stats(clusters, health, agents)
    assert local.agents_by_status == {"running": 2, "terminated": 1}
    assert local.load == 0.5
    assert local.status == ClusterHealthState(cluster_id="local").status  # no health recorded yet
    assert east.status is ClusterStatus.DEGRADED and east.rtt_ms == 12.0
    assert east.load == 1.0  # admits no agents: full
    assert east.agents_by_status == {}


def test_infos_and_regions() -> None:
    clusters = [Cluster(id="b", endpoint="h:1", region="eu"), Cluster(id="a", endpoint="h:2", region="eu"),
                Cluster(id="local", endpoint=None)]
    infos = views.cluster_infos(clusters, {}, {"a": 3})
    assert [(i.cluster.id, i.agents) for i in infos] == [("b", 0), ("a", 3), ("local", 0)]
    assert views.regions(clusters) == {"eu": ["a", "b"], "local": ["local"]}
