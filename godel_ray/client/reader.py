"""``StateReader``: the CLI's light path. It reads the control plane's state store directly, no Ray.

Cluster views (info, stats, regions) come from ``core.views``, the very functions the balancer
answers with, so both paths show the same values.
"""

from __future__ import annotations

import builtins
import os
import time
from collections.abc import Iterator

from godel_ray import settings
from godel_ray.client import policy
from godel_ray.core import views
from godel_ray.errors import AgentNotFound
from godel_ray.models import (
    Agent,
    AgentStatus,
    ClusterHealthState,
    ClusterInfo,
    ClusterStats,
    FederationEvent,
    Migration,
    PlacementDecision,
)


class StateReader:
    """Read-only views of the state store, without Ray.

    What it shows is what the balancer last wrote (a status change within a round trip, a routine
    heartbeat within about ``ROUTINE_HEALTH_EVERY_S``); it never writes.
    """

    def __init__(self, state_dir: str | os.PathLike[str] | None = None) -> None:
        from godel_ray.control.store import open_store

        self.state_dir = settings.state_dir(state_dir)
        self._store = open_store(self.state_dir, readonly=True)

    def close(self) -> None:
        self._store.close()

    def _health_by_cluster(self) -> dict[str, ClusterHealthState]:
        return {state.cluster_id: state for state in self._store.all_health()}

    # --- clusters ---------------------------------------------------------------------------------

    def clusters(self) -> builtins.list[ClusterInfo]:
        return views.cluster_infos(self._store.clusters(), self._health_by_cluster(), self._store.active_counts())

    def health(self) -> builtins.list[ClusterHealthState]:
        health = self._health_by_cluster()
        return [views.health_of(health, cluster.id) for cluster in self._store.clusters()]

    def stats(self) -> builtins.list[ClusterStats]:
        return views.cluster_stats(self._store.clusters(), self._health_by_cluster(), self._store.agents())

    def regions(self) -> dict[str, builtins.list[str]]:
        return views.regions(self._store.clusters())

    # --- agents -----------------------------------------------------------------------------------

    def agents(self, *, status: AgentStatus | str | None = None, labels: dict[str, str] | None = None,
               cluster: str | None = None, model: str | None = None) -> builtins.list[Agent]:
        return self._store.agents(cluster_id=cluster, status=status, labels=labels, model=model)

    def agent(self, agent_id: str) -> Agent:
        return self._store.require_agent(agent_id)

    def decision(self, agent_id: str) -> PlacementDecision:
        self.agent(agent_id)
        decision = self._store.decision(agent_id)
        if decision is None:
            raise AgentNotFound(f"no placement decision is recorded for agent {agent_id!r}", agent_id=agent_id)
        return decision

    def migrations(self, agent_id: str | None = None) -> builtins.list[Migration]:
        return self._store.migrations(agent_id)

    def migration(self, migration_id: str) -> Migration | None:
        return self._store.migration(migration_id)

    # --- events -----------------------------------------------------------------------------------

    def events(self, since_seq: int = 0, limit: int = policy.EVENTS_PAGE) -> builtins.list[FederationEvent]:
        """One page: at most ``limit`` events after ``since_seq``, oldest first."""
        return self._store.events(since_seq, limit)

    def tail(self, since_seq: int = 0, *, follow: bool = False, poll_s: float = policy.EVENTS_POLL_S
             ) -> Iterator[FederationEvent]:
        """Every event after ``since_seq``; with ``follow``, keep polling for new ones (the balancer
        writes each event before it answers)."""
        cursor = policy.EventCursor(since_seq, follow=follow)
        while True:
            batch = self.events(cursor.seq, cursor.page_size)
            yield from batch
            page = cursor.advance(batch)
            if page is policy.Page.DONE:
                return
            if page is policy.Page.POLL:
                time.sleep(poll_s)


__all__ = ["StateReader"]
