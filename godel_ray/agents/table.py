"""``AgentTable``: the agent runtime's table of agents -- who is here, at which epoch, through which actor.

One ``AgentEntry`` per agent id: the last known ``Agent``, its actor (an ``AgentGateway``, None
once the actor is gone), its journal (kept after the actor ends), whether it moved away, and the
task watching it. The table owns the lookups with fencing, the recording of status changes (an
``agent.status`` event on each change), and the policy for a failure of an agent's actor.

Invariants:
- an agent's status only moves forward to a final status: a late answer never moves it back;
- a change of status or of ``status_reason`` is one ``agent.status`` event (a limit a command hit
  changes only the reason);
- a lookup with ``epoch != 0`` that is not the agent's epoch raises ``StaleEpoch``;
- an actor that died marks its agent FAILED (with the reason) and leaves the entry without an
  actor, unless the agent was migrated away (then callers get ``AgentMoved``).

Runs on the runtime's event loop; not thread-safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from godel_ray.core.cluster_client import check_epoch
from godel_ray.core.events import EventLog
from godel_ray.errors import (
    AgentMoved,
    AgentNotFound,
    AgentNotRunning,
    ClusterUnavailable,
    GodelError,
)
from godel_ray.models import Agent, AgentStatus, EventKind, EventType, FederationEvent, JournalEntry, now_s
from godel_ray.raykit import rayapi
from godel_ray.raykit.gateway import AgentGateway, Call

T = TypeVar("T")


@dataclass
class AgentEntry:
    agent: Agent
    actor: AgentGateway | None = None  # the AgentActor; None once it is gone
    journal: list[JournalEntry] = field(default_factory=list)  # last known, kept after the actor ends
    moved: bool = False
    watcher: asyncio.Task[None] | None = None
    follower: asyncio.Task[None] | None = None  # records the actor's direct calls (``agents.direct_calls``)


def record(log: EventLog, cluster_id: str, type_: str, agent_id: str = "", kind: EventKind = EventKind.AGENT,
           *, later: bool = False, **data: object) -> None:
    """Append one event of this cluster to ``log`` (values as strings); with ``later``, deferred
    (``EventLog.defer``: built and appended when the loop next turns, in order, with this ``ts``)."""
    ts = now_s()

    def make() -> FederationEvent:
        return FederationEvent(kind=kind, type=type_, cluster_id=cluster_id, agent_id=agent_id, ts=ts,
                               data={k: str(v) for k, v in data.items()})

    if later:
        log.defer(make)
    else:
        log.append(make())


class AgentTable:
    """The agents of one runtime (cluster ``name``), keyed by id; see the module docstring."""

    def __init__(self, name: str, log: EventLog) -> None:
        self.name = name
        self._log = log
        self._entries: dict[str, AgentEntry] = {}

    def __iter__(self) -> Iterator[AgentEntry]:
        return iter(list(self._entries.values()))

    def __getitem__(self, agent_id: str) -> AgentEntry:
        return self._entries[agent_id]

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self._entries

    def get(self, agent_id: str) -> AgentEntry | None:
        return self._entries.get(agent_id)

    def put(self, entry: AgentEntry) -> None:
        self._entries[entry.agent.id] = entry

    def restore(self, agent_id: str, previous: AgentEntry | None) -> None:
        """Undo a ``put`` of ``agent_id``: put back what was there before (or nothing)."""
        if previous is not None:
            self._entries[agent_id] = previous
        else:
            self._entries.pop(agent_id, None)

    def active_count(self) -> int:
        return sum(1 for e in self._entries.values() if not e.agent.status.is_final)

    # --- lookups with fencing ------------------------------------------------------------------

    def entry(self, agent_id: str, epoch: int = 0) -> AgentEntry:
        entry = self._entries.get(agent_id)
        if entry is None:
            raise AgentNotFound(f"agent {agent_id} is not on cluster {self.name}", agent_id=agent_id,
                                cluster_id=self.name)
        check_epoch(agent_id, entry.agent.epoch, epoch)
        return entry

    def live(self, agent_id: str, epoch: int = 0) -> tuple[AgentEntry, AgentGateway]:
        """The entry of a running agent here, and its actor (else the error saying why not)."""
        entry = self.entry(agent_id, epoch)
        if entry.moved:
            raise AgentMoved(f"agent {agent_id} was migrated away from cluster {self.name}",
                             agent_id=agent_id, cluster_id=self.name)
        if entry.agent.status.is_final or entry.actor is None:
            reason = f" ({entry.agent.status_reason})" if entry.agent.status_reason else ""
            raise AgentNotRunning(f"agent {agent_id} is {entry.agent.status.value}{reason}",
                                  agent_id=agent_id, status=entry.agent.status.value)
        return entry, entry.actor

    # --- status --------------------------------------------------------------------------------

    def set_agent(self, entry: AgentEntry, agent: Agent) -> None:
        """Record a fresh view of the agent; emit ``agent.status`` when its status or reason changed."""
        before, reason_before = entry.agent.status, entry.agent.status_reason
        if before.is_final and not agent.status.is_final:
            return  # a late answer from before the end: final statuses never move back
        agent = agent.model_copy(update={"cluster_id": self.name})
        entry.agent = agent
        if agent.status != before or agent.status_reason != reason_before:
            record(self._log, self.name, EventType.AGENT_STATUS, agent.id, status=agent.status.value,
                   reason=agent.status_reason, epoch=agent.epoch)

    def failure(self, entry: AgentEntry, exc: GodelError) -> GodelError:
        """The error to raise for a failure of ``entry``'s actor (Ray's errors arrive mapped by
        ``rayapi.translate``): unreachable -> retry; dead -> the agent failed (or moved away)."""
        if isinstance(exc, rayapi.ActorUnreachable):
            return ClusterUnavailable(f"agent {entry.agent.id} is unreachable right now; retry",
                                      agent_id=entry.agent.id, cluster_id=self.name)
        if not isinstance(exc, rayapi.ActorDied):
            return exc
        if entry.moved:
            return AgentMoved(f"agent {entry.agent.id} was migrated away from cluster {self.name}",
                              agent_id=entry.agent.id, cluster_id=self.name)
        if not entry.agent.status.is_final:
            died = entry.agent.model_copy(update={
                "status": AgentStatus.FAILED, "finished_at": now_s(),
                "status_reason": f"agent process died: {str(exc).strip().splitlines()[0][:200]}"})
            self.set_agent(entry, died)
            entry.actor = None
        return AgentNotRunning(f"agent {entry.agent.id} is {entry.agent.status.value} "
                               f"({entry.agent.status_reason})", agent_id=entry.agent.id,
                               status=entry.agent.status.value)

    async def ask(self, entry: AgentEntry, call: Callable[[AgentGateway], Call[T]],
                  timeout_s: float | None = None) -> T:
        """``call`` on ``entry``'s actor, awaited (``DeadlineExceeded`` past ``timeout_s``); a failure
        of the actor becomes ``failure``'s error."""
        actor = entry.actor
        if actor is None:
            raise AgentNotRunning(f"agent {entry.agent.id} is {entry.agent.status.value}",
                                  agent_id=entry.agent.id)
        try:
            return await call(actor).result(timeout_s)
        except (rayapi.ActorUnreachable, rayapi.ActorDied) as exc:
            raise self.failure(entry, exc) from None


__all__ = ["AgentEntry", "AgentTable", "record"]
