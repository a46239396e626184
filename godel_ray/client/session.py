"""What a proxy and its asyncio twin share: the balancer's gateway, one gateway per cluster, and the
cache of agent locations.

Importing this module does not import Ray; the gateways are made on first use.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from godel_ray.client.policy import Location, Reroute
from godel_ray.errors import ControlPlaneNotRunning
from godel_ray.models import AgentStatus

if TYPE_CHECKING:
    from godel_ray.raykit.gateway import BalancerGateway, ClusterGateway


class Session:
    """The handles and caches behind one ``connect()``.

    Invariants: ``locations`` holds only what the balancer answered (spawn, locate), dropped on
    kill, migrate and every Reroute; a cluster's gateway is dropped when its actor failed, so the
    next call looks the actor up again. No call goes out once this process has left Ray.
    """

    def __init__(self, balancer: BalancerGateway, state_dir: str | os.PathLike[str] | None) -> None:
        self._balancer = balancer
        self.state_dir = state_dir
        self.locations: dict[str, Location] = {}
        self._clusters: dict[str, ClusterGateway] = {}

    @property
    def balancer(self) -> BalancerGateway:
        ensure_attached()
        return self._balancer

    def cluster(self, cluster_id: str) -> ClusterGateway:
        """The gateway to ``cluster_id``'s ClusterActor (looked up by name once, then cached)."""
        ensure_attached()
        gateway = self._clusters.get(cluster_id)
        if gateway is None:
            from godel_ray.control import factory
            from godel_ray.raykit.gateway import ClusterGateway

            gateway = self._clusters[cluster_id] = ClusterGateway(cluster_id, factory.cluster_actor_handle(cluster_id))
        return gateway

    def drop_cluster(self, cluster_id: str) -> None:
        self._clusters.pop(cluster_id, None)

    def remember(self, agent_id: str, cluster_id: str, epoch: int) -> Location:
        location = self.locations[agent_id] = Location(str(cluster_id), int(epoch))
        return location

    def forget(self, agent_id: str) -> None:
        self.locations.pop(agent_id, None)

    def reroute(self, agent_id: str, step: Reroute) -> None:
        """Carry out the cache part of a Reroute (the shell then asks the balancer)."""
        self.forget(agent_id)
        if step.drop_cluster is not None:
            self.drop_cluster(step.drop_cluster)


def ensure_attached() -> None:
    """Refuse to call through handles once this process left Ray (``swarmctl down`` in-process, or
    ``ray.shutdown()``): a Ray call would silently start a new, empty local Ray instead."""
    from godel_ray.raykit import rayapi

    if not rayapi.is_initialized():
        raise ControlPlaneNotRunning("this process is no longer attached to the control plane: call "
                                     "godel_ray.connect() again (after `swarmctl up`)")


def status_value(status: AgentStatus | str | None) -> str | None:
    """An agent-status filter as the balancer takes it (a ValueError for an unknown status)."""
    return None if status is None else AgentStatus(status).value


__all__ = ["Session", "ensure_attached", "status_value"]
