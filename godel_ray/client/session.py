"""What a proxy and its asyncio twin share: the balancer's gateway, one gateway per cluster, the
cache of agent locations and, for ``local`` agents, of their actors (the one-hop exec), and ``Hop``:
where one attempt of an exec goes.

Importing this module does not import Ray; the gateways are made on first use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from godel_ray.client.policy import Location, Reroute
from godel_ray.errors import ControlPlaneNotRunning
from godel_ray.models import AgentStatus, ExecChunk, ExecResult

if TYPE_CHECKING:
    from godel_ray.raykit.gateway import AgentGateway, BalancerGateway, Call, ClusterGateway, Stream


@dataclass(frozen=True)
class Hop:
    """Where one attempt of an exec goes, at ``epoch``: the agent's ``actor`` itself (one hop; it
    checks the epoch) or its ``cluster``'s ClusterActor. Exactly one of the two is set."""

    agent_id: str
    epoch: int
    cluster: ClusterGateway | None = None
    actor: AgentGateway | None = None

    def exec(self, command: str, timeout_s: float | None) -> Call[ExecResult]:
        """Collect mode: one reply with the whole result."""
        if self.actor is not None:
            return self.actor.run(command, timeout_s, self.epoch)
        assert self.cluster is not None
        return self.cluster.exec(self.agent_id, command, timeout_s=timeout_s, epoch=self.epoch)

    def exec_stream(self, command: str, timeout_s: float | None) -> Stream[ExecChunk]:
        if self.actor is not None:
            return self.actor.exec(command, timeout_s, self.epoch)
        assert self.cluster is not None
        return self.cluster.exec_stream(self.agent_id, command, timeout_s=timeout_s, epoch=self.epoch)


class Session:
    """The handles and caches behind one ``connect()``.

    Invariants: ``locations`` holds only what the balancer answered (spawn, locate), dropped on
    kill, migrate and every Reroute; ``actors`` holds a ``local`` agent's actor only together with
    the location it was looked up for, and goes with it; a cluster's gateway is dropped when its
    actor failed, so the next call looks the actor up again. No call goes out once this process has
    left Ray.
    """

    def __init__(self, balancer: BalancerGateway, state_dir: str | os.PathLike[str] | None) -> None:
        self._balancer = balancer
        self.state_dir = state_dir
        self.locations: dict[str, Location] = {}
        self.actors: dict[str, tuple[Location, AgentGateway]] = {}
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
        cached = self.actors.get(agent_id)
        if cached is not None and cached[0] != location:
            del self.actors[agent_id]
        return location

    def forget(self, agent_id: str) -> None:
        self.locations.pop(agent_id, None)
        self.actors.pop(agent_id, None)

    def hop(self, agent_id: str, location: Location, actor_handle: Any = None) -> Hop:
        """A hop through ``location``'s cluster; with ``actor_handle`` (looked up for this location),
        straight to the agent's actor, which is cached for the next calls."""
        if actor_handle is None:
            return Hop(agent_id, location.epoch, cluster=self.cluster(location.cluster_id))
        actor = self.agent_gateway(agent_id, actor_handle)
        self.actors[agent_id] = (location, actor)
        return Hop(agent_id, location.epoch, actor=actor)

    def agent_gateway(self, agent_id: str, handle: Any) -> AgentGateway:
        from godel_ray.raykit.gateway import AgentGateway

        return AgentGateway(agent_id, handle)

    def cached_hop(self, agent_id: str, location: Location) -> Hop | None:
        """The direct hop to the agent's actor, if it was looked up for exactly ``location``."""
        cached = self.actors.get(agent_id)
        if cached is None or cached[0] != location:
            return None
        ensure_attached()
        return Hop(agent_id, location.epoch, actor=cached[1])

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


__all__ = ["Hop", "Session", "ensure_attached", "status_value"]
