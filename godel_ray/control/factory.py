"""Control-plane actors: names, namespace, lifetimes, restarts, resources. ``rayapi.remote_actor``
(the one ``ray.remote``) is called with these options from here only.

- the balancer (``MultiClusterLoadBalancer``): one, named ``settings.BALANCER_NAME``, detached,
  restarted by Ray forever (``max_restarts=-1``) and reloaded from the state store on restart;
  tasks are never retried (``max_task_retries=0``: a spawn must not run twice behind our back). It
  is handed ``cluster_actor`` (below) to start the ClusterActors with: it never imports this module.
- one ``ClusterActor`` per registered cluster, named ``godel-cluster-<id>``, detached, restarted
  forever.

Control actors take no CPU (``num_cpus=0``): the cluster's CPUs are for agents.
"""

from __future__ import annotations

from typing import Any

from godel_ray import settings
from godel_ray.control.balancer import MultiClusterLoadBalancer
from godel_ray.control.cluster_actor import ClusterActor
from godel_ray.models import Cluster
from godel_ray.raykit import rayapi
from godel_ray.raykit.gateway import BalancerGateway, ClusterGateway

BALANCER_MAX_CONCURRENCY = 1000  # async actor: concurrent calls interleave on one event loop
CLUSTER_ACTOR_MAX_CONCURRENCY = 1000
CLUSTER_ACTOR_PREFIX = "godel-cluster-"


def cluster_actor_name(cluster_id: str) -> str:
    return CLUSTER_ACTOR_PREFIX + cluster_id


def _detached(name: str, max_concurrency: int) -> dict[str, Any]:
    return {"name": name, "namespace": settings.NAMESPACE, "lifetime": "detached", "max_restarts": -1,
            "max_task_retries": 0, "num_cpus": 0, "get_if_exists": True, "max_concurrency": max_concurrency}


def balancer(state_dir: str) -> Any:
    """The balancer's handle: the running one, or a new one loading ``state_dir``."""
    with rayapi.mapped(rayapi.BALANCER_WHAT):
        return rayapi.remote_actor(MultiClusterLoadBalancer,
                                   _detached(settings.BALANCER_NAME, BALANCER_MAX_CONCURRENCY),
                                   state_dir, cluster_actor)


def balancer_handle() -> Any:
    """The running balancer (``ControlPlaneNotRunning`` if none)."""
    return rayapi.actor(settings.BALANCER_NAME, rayapi.BALANCER_WHAT)


def balancer_gateway() -> BalancerGateway:
    """Typed calls to the running balancer."""
    return BalancerGateway(balancer_handle())


def cluster_actor(cluster: Cluster, state_dir: str) -> ClusterGateway:
    """The ClusterActor for ``cluster`` (the running one of that name, or a new one), as a gateway."""
    what = f"cluster {cluster.id}"
    with rayapi.mapped(what):
        handle = rayapi.remote_actor(ClusterActor, _detached(cluster_actor_name(cluster.id),
                                                             CLUSTER_ACTOR_MAX_CONCURRENCY), cluster, state_dir)
    return ClusterGateway(cluster.id, handle)


def cluster_actor_handle(cluster_id: str) -> Any:
    """A running ClusterActor by cluster id (``ClusterUnavailable`` if none)."""
    return rayapi.actor(cluster_actor_name(cluster_id), f"cluster {cluster_id}")


__all__ = ["BALANCER_MAX_CONCURRENCY", "CLUSTER_ACTOR_PREFIX", "balancer", "balancer_gateway", "balancer_handle",
           "cluster_actor", "cluster_actor_handle", "cluster_actor_name"]
