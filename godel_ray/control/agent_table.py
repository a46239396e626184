"""``AgentTable``: the federation's agent rows, kept in memory and written through to the state store.

Every owner reads agents here and writes them here; nothing else writes agent rows. The store is
read once, at ``load``. Each write also moves the capacity ledger's holds (a live row holds on its
cluster, a final one nowhere), so a kill, an exit, a failure or a move frees room at once.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from godel_ray.control.eventlog import Emit
from godel_ray.control.ledger import CapacityLedger
from godel_ray.control.store import Store
from godel_ray.core.views import agent_matches, status_filter
from godel_ray.errors import AgentNotFound
from godel_ray.models import Agent, AgentStatus, EventKind, EventType, PlacementDecision

log = logging.getLogger(__name__)


def _same_row(a: Agent, b: Agent) -> bool:
    return (a.cluster_id, a.epoch, a.status) == (b.cluster_id, b.epoch, b.status)


class AgentTable:
    """The agent table.

    Invariants: the memory rows equal the store's (this is the only writer of agent rows, and it
    writes the store first); agents are listed in spawn order; every write moves the ledger's holds;
    ``replace(expected, new)`` writes only over the row it expects, compared on cluster, epoch and
    status in memory and in the store, so a kill that raced a move or a restore wins.
    """

    def __init__(self, store: Store, ledger: CapacityLedger, emit: Emit, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._ledger = ledger
        self._emit = emit
        self._clock = clock
        self._rows: dict[str, Agent] = {}
        self._keys: dict[str, str] = {}  # idempotency key -> agent id, as far as this balancer has seen

    def load(self) -> None:
        now = self._clock()
        for agent in sorted(self._store.agents(), key=lambda a: (a.created_at, a.id)):
            self._rows[agent.id] = agent
            self._ledger.track(None, agent, now)

    # --- reads --------------------------------------------------------------------------------------

    def get(self, agent_id: str) -> Agent | None:
        return self._rows.get(agent_id)

    def require(self, agent_id: str) -> Agent:
        """The agent, or ``AgentNotFound`` with what to do."""
        agent = self._rows.get(agent_id)
        if agent is None:
            raise AgentNotFound(f"agent {agent_id!r} is not known to the federation; see `swarmctl agent list`",
                                agent_id=agent_id)
        return agent

    def all(self) -> list[Agent]:
        return list(self._rows.values())

    def live(self, cluster_id: str | None = None) -> list[Agent]:
        """Agents that have not ended (on ``cluster_id``, when given)."""
        return [a for a in self._rows.values()
                if not a.status.is_final and (cluster_id is None or a.cluster_id == cluster_id)]

    def select(self, *, cluster_id: str | None = None, status: AgentStatus | str | None = None,
               labels: dict[str, str] | None = None, model: str | None = None) -> list[Agent]:
        wanted = status_filter(status)
        return [a for a in self._rows.values()
                if agent_matches(a, cluster_id=cluster_id, status=wanted, labels=labels, model=model)]

    def active_counts(self) -> dict[str, int]:
        """Live agents per cluster id."""
        return dict(Counter(a.cluster_id for a in self._rows.values() if not a.status.is_final))

    def idempotent_agent(self, key: str) -> str | None:
        known = self._keys.get(key)
        if known is None:
            known = self._store.idempotent_agent(key)  # a key from before this balancer started
            if known is not None:
                self._keys[key] = known
        return known

    # --- writes -------------------------------------------------------------------------------------

    def _set(self, agent: Agent) -> None:
        previous = self._rows.get(agent.id)
        self._rows[agent.id] = agent
        self._ledger.track(previous, agent, self._clock())

    def put(self, agent: Agent) -> None:
        self._store.put_agent(agent)
        self._set(agent)

    def put_spawn(self, agent: Agent, decision: PlacementDecision, idempotency_key: str | None) -> None:
        """The spawn commit point: row, decision and idempotency key, atomically."""
        self._store.put_spawn(agent, decision, idempotency_key)
        if idempotency_key:
            self._keys[idempotency_key] = agent.id
        self._set(agent)

    def replace(self, expected: Agent, new: Agent) -> bool:
        """Write ``new`` only over ``expected`` (same cluster, epoch and status); False otherwise."""
        current = self._rows.get(expected.id)
        if current is None or not _same_row(current, expected):
            return False
        if not self._store.replace_agent(expected, new):
            log.error("agent %s: the store's row differs from memory; keeping the store's", expected.id)
            stored = self._store.agent(expected.id)
            if stored is not None:
                self._set(stored)
            return False
        self._set(new)
        return True

    def refresh(self, read: Agent, there: Agent) -> Agent:
        """Fold what the agent's cluster answered (``there``) into the row read before asking.

        Written only over that row: a row that moved or changed meanwhile is returned as it is now.
        A migrating row is the migration's until it ends: the site's view is returned, not written.
        A copy older than the row (a stale epoch) changes nothing.
        """
        current = self._rows.get(read.id)
        if current is None or not _same_row(current, read):
            return current or read  # moved or ended while the cluster was asked
        if there.epoch < read.epoch:
            return current
        updated = read.model_copy(update={
            # a reason recorded here (a failover's loss note) stays until the site reports its own
            "status": there.status, "status_reason": there.status_reason or read.status_reason,
            "epoch": there.epoch, "started_at": there.started_at, "finished_at": there.finished_at,
            "node_id": there.node_id, "gpu_ids": there.gpu_ids})
        if updated == read or read.status is AgentStatus.MIGRATING:
            return updated
        return updated if self.replace(read, updated) else self._rows.get(read.id, read)

    def mark_failed(self, agent: Agent, reason: str) -> Agent:
        """The agent ended for ``reason`` (it is never dropped silently): row, event, log."""
        failed = agent.model_copy(update={"status": AgentStatus.FAILED, "status_reason": reason,
                                          "finished_at": self._clock()})
        self.put(failed)
        self._emit(EventKind.AGENT, EventType.AGENT_FAILED, agent.cluster_id, agent.id, reason=reason)
        log.warning("agent %s: %s", agent.id, reason)
        return failed


__all__ = ["AgentTable"]
