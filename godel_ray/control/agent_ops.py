"""``AgentOps``: calls on one existing agent through its cluster: kill, status, journal, explain.

A kill wins against a move: its final row is written only over the row it read (compare-and-set),
and when a migration or a restore switched the agent meanwhile, the agent is killed again where it
lives now. So once ``kill`` answers, the table's row is final and no copy the table ever pointed at
is left running.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from godel_ray.control.agent_table import AgentTable
from godel_ray.control.store import Store
from godel_ray.errors import AgentNotFound, FailedPrecondition, GodelError
from godel_ray.models import (
    LOCAL_CLUSTER_ID,
    Agent,
    AgentStatus,
    EventType,
    FederationEvent,
    JournalEntry,
    PlacementDecision,
)

if TYPE_CHECKING:
    from godel_ray.raykit.gateway import ClusterGateway


log = logging.getLogger(__name__)

KILL_TIMEOUT_S = 180.0  # terminate waits for the running command to be reaped
KILL_ATTEMPTS = 5  # re-kills after the agent moved under the kill (each move needs a whole migration)
STATUS_TIMEOUT_S = 5.0
KILL_REASON_USER = "killed by user"


class AgentOps:
    """Kill, status, journal and explain of one agent.

    Invariants: a kill's final row replaces only the row it read; ``status`` never writes over a
    row that changed while its cluster was asked (``AgentTable.refresh``); an agent its cluster no
    longer knows is marked failed with why, never dropped.
    """

    def __init__(self, gateway: Callable[[str], ClusterGateway], table: AgentTable, store: Store, *,
                 clock: Callable[[], float] = time.time, local_id: str = LOCAL_CLUSTER_ID) -> None:
        self._gateway = gateway
        self._table = table
        self._store = store
        self._clock = clock
        self._local_id = local_id

    async def kill(self, agent_id: str) -> Agent:
        for _ in range(KILL_ATTEMPTS):
            agent = self._table.require(agent_id)
            if agent.status.is_final:
                return agent
            try:
                there = await self._gateway(agent.cluster_id).kill(
                    agent_id, epoch=agent.epoch, reason=KILL_REASON_USER).result(KILL_TIMEOUT_S)
            except AgentNotFound:
                there = agent.model_copy(update={"status": AgentStatus.TERMINATED, "status_reason": KILL_REASON_USER,
                                                 "finished_at": self._clock()})
            except GodelError:
                if self._moved(agent):
                    continue  # the copy asked was superseded meanwhile: kill the agent where it is now
                raise
            status = there.status if there.status.is_final else AgentStatus.TERMINATED
            killed = agent.model_copy(update={"status": status, "status_reason": there.status_reason or KILL_REASON_USER,
                                              "finished_at": there.finished_at or self._clock()})
            if self._table.replace(agent, killed):
                return killed
            log.info("agent %s moved while it was killed; killing it where it lives now", agent_id)
        raise FailedPrecondition(f"agent {agent_id} kept moving while it was killed; kill it again",
                                 agent_id=agent_id)

    def _moved(self, read: Agent) -> bool:
        current = self._table.get(read.id)
        return current is not None and (current.cluster_id, current.epoch) != (read.cluster_id, read.epoch)

    async def status(self, agent_id: str) -> Agent:
        """The agent as its cluster reports it now (the table's row if the cluster cannot answer)."""
        agent = self._table.require(agent_id)
        if agent.status.is_final:
            return agent
        try:
            there = await self._gateway(agent.cluster_id).status(agent_id).result(STATUS_TIMEOUT_S)
        except AgentNotFound:
            current = self._table.get(agent_id)
            if current is not None and current != agent:
                return current  # moved or ended while we asked the old location
            return self._table.mark_failed(agent, f"not found on cluster {agent.cluster_id}")
        except GodelError as exc:
            log.info("agent %s: status from the table, cluster unavailable: %s", agent_id, exc)
            return self._table.get(agent_id) or agent
        return self._table.refresh(agent, there)

    async def journal(self, agent_id: str) -> list[JournalEntry]:
        """Local: from the agent itself. Remote: mirrored from the site's ``command.*`` events."""
        agent = self._table.require(agent_id)
        if agent.cluster_id == self._local_id and not agent.status.is_final:
            try:
                return await self._gateway(self._local_id).journal(agent_id).result(STATUS_TIMEOUT_S)
            except (AgentNotFound, FailedPrecondition):
                pass
        return journal_from_events(self._store.events(
            agent_id=agent_id, types=(EventType.COMMAND_STARTED, EventType.COMMAND_FINISHED), limit=1_000_000))

    def explain(self, agent_id: str) -> PlacementDecision:
        self._table.require(agent_id)
        decision = self._store.decision(agent_id)
        if decision is None:
            raise AgentNotFound(f"no placement decision is recorded for agent {agent_id!r}", agent_id=agent_id)
        return decision


def journal_from_events(events: list[FederationEvent]) -> list[JournalEntry]:
    """Rebuild a journal from ``command.started``/``command.finished`` events (the remote mirror).

    Commands on one agent run one at a time in arrival order, so finishes pair with starts FIFO.
    """
    started: deque[FederationEvent] = deque()
    out: list[JournalEntry] = []
    for event in events:
        if event.type == EventType.COMMAND_STARTED:
            started.append(event)
            continue
        if event.type != EventType.COMMAND_FINISHED:
            continue
        start = started.popleft() if started else None
        data = event.data
        exit_code = data.get("exit_code", "")
        duration_s = _float(data.get("duration_s", ""))
        out.append(JournalEntry(
            seq=len(out) + 1, command=start.data.get("command", "") if start else "",
            exit_code=int(exit_code) if exit_code.lstrip("-").isdigit() else None,
            started_at=start.ts if start else event.ts - duration_s, duration_s=duration_s,
            timed_out=data.get("timed_out", "").lower() in ("true", "1"),
            interrupted=data.get("interrupted", "").lower() in ("true", "1"),
            interrupt_reason=data.get("interrupt_reason", "")))
    return out


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


__all__ = ["KILL_REASON_USER", "AgentOps", "journal_from_events"]
