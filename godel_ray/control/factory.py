"""The only ``ray.remote`` for control-plane actors: names, namespace, lifetimes, restarts, resources.

- the balancer (``MultiClusterLoadBalancer``): one, named ``settings.BALANCER_NAME``, detached,
  restarted by Ray forever (``max_restarts=-1``) and reloaded from the state store on restart;
  tasks are never retried (``max_task_retries=0``: a spawn must not run twice behind our back).
- one ``ClusterActor`` per registered cluster, named ``godel-cluster-<id>``, detached, restarted
  forever.

Control actors take no CPU (``num_cpus=0``): the cluster's CPUs are for agents.
"""

from __future__ import annotations

from typing import Any

from godel_ray import settings
from godel_ray.models import Cluster
from godel_ray.raykit import rayapi

BALANCER_MAX_CONCURRENCY = 1000  # async actor: concurrent calls interleave on one event loop
CLUSTER_ACTOR_MAX_CONCURRENCY = 1000
CLUSTER_ACTOR_PREFIX = "godel-cluster-"


def cluster_actor_name(cluster_id: str) -> str:
    return CLUSTER_ACTOR_PREFIX + cluster_id


def balancer(state_dir: str) -> Any:
    """The balancer's handle: the running one, or a new one loading ``state_dir``."""
    import ray

    from godel_ray.control.balancer import MultiClusterLoadBalancer

    cls = ray.remote(MultiClusterLoadBalancer)
    with rayapi.mapped(rayapi.BALANCER_WHAT):
        return cls.options(
            name=settings.BALANCER_NAME, namespace=settings.NAMESPACE, lifetime="detached",
            max_restarts=-1, max_task_retries=0, num_cpus=0, get_if_exists=True,
            max_concurrency=BALANCER_MAX_CONCURRENCY,
        ).remote(state_dir)


def balancer_handle() -> Any:
    """The running balancer (``ControlPlaneNotRunning`` if none)."""
    return rayapi.actor(settings.BALANCER_NAME, rayapi.BALANCER_WHAT)


def cluster_actor(cluster: Cluster, state_dir: str) -> Any:
    """The ClusterActor for ``cluster``: the running one (same name), or a new one."""
    import ray

    from godel_ray.control.cluster_actor import ClusterActor

    cls = ray.remote(ClusterActor)
    with rayapi.mapped(f"cluster {cluster.id}"):
        return cls.options(
            name=cluster_actor_name(cluster.id), namespace=settings.NAMESPACE, lifetime="detached",
            max_restarts=-1, max_task_retries=0, num_cpus=0, get_if_exists=True,
            max_concurrency=CLUSTER_ACTOR_MAX_CONCURRENCY,
        ).remote(cluster, state_dir)


def cluster_actor_handle(cluster_id: str) -> Any:
    """A running ClusterActor by cluster id (``ClusterUnavailable`` if none)."""
    return rayapi.actor(cluster_actor_name(cluster_id), f"cluster {cluster_id}")


__all__ = ["BALANCER_MAX_CONCURRENCY", "CLUSTER_ACTOR_PREFIX", "balancer", "balancer_handle", "cluster_actor",
           "cluster_actor_handle", "cluster_actor_name"]
