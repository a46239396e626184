"""The runtime's share of direct calls: commands a proxy sent straight to an agent's actor (one hop).

The runtime did not see those calls, so the actor keeps their ``command.started`` and
``command.finished`` phases (``AgentActor.command_events``) and the runtime collects them here, in
batches, off the caller's path: ``follow`` waits on the actor for the next batch until the actor
ends, and ``settle`` (once the actor was terminated) lets it record the last batch, so every phase
is recorded before the runtime records the agent's end. Each phase becomes
the same event the runtime records for a call it carried itself, and the exec latency metric
(which the ClusterActor observes for the calls it carries).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from godel_ray.agents.actor import COMMAND_STARTED
from godel_ray.agents.table import AgentEntry, record
from godel_ray.core.events import EventLog
from godel_ray.errors import GodelError
from godel_ray.models import EventKind, EventType, JournalEntry
from godel_ray.raykit import metrics
from godel_ray.raykit.gateway import AgentGateway

log = logging.getLogger(__name__)

SETTLE_TIMEOUT_S = 5.0  # for the last batch, once an actor was terminated


def started(log_: EventLog, cluster_id: str, agent_id: str, command: str, *, later: bool = False) -> None:
    """Record ``command.started`` (the one place its fields are decided); ``later``: deferred."""
    record(log_, cluster_id, EventType.COMMAND_STARTED, agent_id, EventKind.COMMAND, later=later,
           command=command[:200])


def finished(log_: EventLog, cluster_id: str, agent_id: str, exit_code: int | None, duration_s: float,
             timed_out: bool, *, later: bool = False) -> None:
    """Record ``command.finished`` (the one place its fields are decided); ``later``: deferred."""
    record(log_, cluster_id, EventType.COMMAND_FINISHED, agent_id, EventKind.COMMAND, later=later,
           exit_code=exit_code, duration_s=f"{duration_s:.3f}", timed_out=timed_out)


def record_phases(log_: EventLog, cluster_id: str, agent_id: str, phases: list[tuple[str, JournalEntry]]) -> None:
    for phase, entry in phases:
        if phase == COMMAND_STARTED:
            started(log_, cluster_id, agent_id, entry.command)
        else:
            finished(log_, cluster_id, agent_id, entry.exit_code, entry.duration_s, entry.timed_out)
            # the ClusterActor observes the calls it carries; these it never saw
            metrics.observe_exec_latency(cluster_id, entry.duration_s)


async def follow(log_: EventLog, cluster_id: str, entry: AgentEntry, actor: AgentGateway) -> None:
    """Record the direct calls' command phases of ``actor`` until it ends."""
    while True:
        try:
            phases, ended = await actor.command_events().result()
        except GodelError:  # the actor is gone: its end is the watcher's business
            return
        record_phases(log_, cluster_id, entry.agent.id, phases)
        if ended:
            return


async def settle(log_: EventLog, cluster_id: str, entry: AgentEntry, actor: AgentGateway,
                 follower: asyncio.Task[None] | None) -> None:
    """After ``actor`` was terminated (it answers ``ended`` now): let ``follower`` record the last
    batch; if it does not finish in time, take what is left directly. Best effort, never raises."""
    if follower is None:
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.shield(follower), SETTLE_TIMEOUT_S)
        return
    follower.cancel()
    with contextlib.suppress(GodelError):
        phases, _ = await actor.command_events(False).result(SETTLE_TIMEOUT_S)
        record_phases(log_, cluster_id, entry.agent.id, phases)


__all__ = ["SETTLE_TIMEOUT_S", "finished", "follow", "record_phases", "settle", "started"]
