"""``Reconciler``: keeps the agent table true to what the clusters really host.

- At start: each cluster's ``ListAgents`` against the table. An agent still there is refreshed from
  it; a ``local`` agent that ``swarmctl down`` checkpointed is restored from its checkpoint (Ray was
  restarted under it); any other agent the cluster no longer has is marked failed, with why.
- Orphans: a live agent a cluster hosts that the table does not know can only come from a spawn
  the balancer died in the middle of (its row was never written, so its spawn was never
  acknowledged and nobody holds its id). Adopting it would hand out an agent nobody asked for;
  killing it is the safe rule. Swept at start and every ``ORPHAN_SWEEP_INTERVAL_S``.
- Ingestion, every control-loop tick: each cluster's health (to the cluster set and its ledger)
  and its buffered events (into the merged log). An agent's end reported by its cluster (lifetime,
  crash, kill) is followed into the table, and so is the reason a running agent was given (a limit
  its command hit), but only for the copy the table points at: same cluster and, where the event
  carries one, same epoch.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

from godel_ray.control.agent_table import AgentTable
from godel_ray.control.checkpoints import Checkpoints
from godel_ray.control.clusters import CONTROL_CALL_TIMEOUT_S, ClusterSet
from godel_ray.control.eventlog import Emitter, EventCursors
from godel_ray.core.cluster_client import KILL_REASON_MIGRATED
from godel_ray.errors import AgentNotFound, GodelError
from godel_ray.models import (
    LOCAL_CLUSTER_ID,
    Agent,
    AgentStatus,
    EventKind,
    EventType,
    FederationEvent,
)

log = logging.getLogger(__name__)

RECONCILE_TIMEOUT_S = 30.0  # one cluster's ListAgents at startup
ORPHAN_SWEEP_INTERVAL_S = 5.0  # how often every cluster's agents are checked against the table
ORPHAN_REASON = "orphan: its spawn was never acknowledged (the balancer restarted mid-spawn)"
CLEANUP_TIMEOUT_S = 10.0


def final_status(event: FederationEvent) -> AgentStatus | None:
    """The final status an agent event reports (``agent.status`` with a final ``status``), if any."""
    if event.type != EventType.AGENT_STATUS:
        return None
    try:
        status = AgentStatus(event.data.get("status", ""))
    except ValueError:
        return None
    return status if status.is_final else None


class Reconciler:
    """Start-up reconciliation, the orphan sweep, and event ingestion.

    Invariants: an agent is never dropped silently (one a cluster lost is marked failed with why);
    an event changes only the row of the copy it is about; agents being spawned now (``spawning``)
    are never orphans; every cluster call is bounded and the clusters are asked concurrently, so
    one slow cluster never holds up the others; nothing here raises into the control loop.
    """

    def __init__(self, clusters: ClusterSet, table: AgentTable, checkpoints: Checkpoints, cursors: EventCursors,
                 emitter: Emitter, *, spawning: Callable[[], Collection[str]], local_workdir_root: Path,
                 clock: Callable[[], float] = time.monotonic, local_id: str = LOCAL_CLUSTER_ID) -> None:
        self._clusters = clusters
        self._table = table
        self._checkpoints = checkpoints
        self._cursors = cursors
        self._emitter = emitter
        self._spawning = spawning
        self._local_workdir_root = local_workdir_root
        self._clock = clock
        self._local_id = local_id
        self._last_sweep = clock()

    # --- at start -----------------------------------------------------------------------------------

    async def reconcile_all(self) -> None:
        await asyncio.gather(*(self.reconcile(cid) for cid in self._clusters.ids()))

    async def reconcile(self, cluster_id: str) -> None:
        """Compare the table with what ``cluster_id`` really hosts; refresh, restore or mark failed."""
        try:
            present = {a.id: a for a in await self._clusters.gateway(cluster_id).list_agents()
                       .result(RECONCILE_TIMEOUT_S)}
        except GodelError as exc:
            log.warning("cluster %s: cannot reconcile now (%s); its agents keep their last known state",
                        cluster_id, exc)
            return
        for agent in self._table.live(cluster_id):
            there = present.get(agent.id)
            if there is not None:
                self._table.refresh(agent, there)
            elif cluster_id == self._local_id and self._checkpoints.record(agent.id) is not None:
                await self._restore_local(agent)
            else:
                self._table.mark_failed(agent, f"not found on cluster {cluster_id} after restart")
        await self.remove_orphans(cluster_id, present.values())

    async def _restore_local(self, agent: Agent) -> None:
        """Bring back a ``local`` agent from the checkpoint ``swarmctl down`` took, at epoch+1."""
        # The old working directory outlived Ray; the checkpoint is the truth now.
        shutil.rmtree(self._local_workdir_root / agent.id, ignore_errors=True)
        try:
            restored = await self._checkpoints.restore(agent, self._local_id)
        except (GodelError, OSError, ValueError) as exc:
            self._table.mark_failed(agent, f"not found on cluster {self._local_id} after restart, and its "
                                           f"checkpoint could not be restored: {exc}")
            return
        if restored is None:
            return  # the row changed meanwhile: the restored copy was removed
        self._checkpoints.discard(agent.id)
        self._emitter(EventKind.AGENT, EventType.AGENT_RESTORED, self._local_id, agent.id,
                      epoch=str(restored.epoch))

    # --- orphans ------------------------------------------------------------------------------------

    async def remove_orphans(self, cluster_id: str, present: Iterable[Agent]) -> None:
        """Kill the live agents ``cluster_id`` hosts that the table does not know (see the module doc)."""
        for there in present:
            if there.status.is_final or there.id in self._spawning() or self._table.get(there.id) is not None:
                continue
            try:
                await self._clusters.gateway(cluster_id).kill(there.id, reason=ORPHAN_REASON).result(CLEANUP_TIMEOUT_S)
            except AgentNotFound:
                pass
            except GodelError as exc:
                log.warning("cluster %s: orphan agent %s not removed yet: %s", cluster_id, there.id, exc)
                continue
            self._emitter(EventKind.AGENT, EventType.AGENT_ORPHAN_REMOVED, cluster_id, there.id, reason=ORPHAN_REASON)
            log.warning("cluster %s: killed orphan agent %s (%s)", cluster_id, there.id, ORPHAN_REASON)

    async def sweep_orphans(self, cluster_id: str) -> None:
        try:
            present = await self._clusters.gateway(cluster_id).list_agents().result(CONTROL_CALL_TIMEOUT_S)
        except GodelError as exc:
            log.info("cluster %s: orphan sweep skipped: %s", cluster_id, exc)
            return
        if self._clusters.get(cluster_id) is not None:
            await self.remove_orphans(cluster_id, present)

    # --- ingestion ----------------------------------------------------------------------------------

    async def tick(self) -> None:
        """One control-loop step: poll every cluster (and sweep orphans when due), concurrently."""
        now = self._clock()
        ids = self._clusters.ids()
        work = [self.poll(cid) for cid in ids]
        if now - self._last_sweep >= ORPHAN_SWEEP_INTERVAL_S:
            self._last_sweep = now
            work += [self.sweep_orphans(cid) for cid in ids]
        await asyncio.gather(*work)

    async def poll(self, cluster_id: str) -> None:
        """The cluster's health and the events its actor buffered since the last drain."""
        try:
            gateway = self._clusters.gateway(cluster_id)
            health_call = gateway.health()
            drain_call = gateway.drain_events(self._cursors.buffer_seq(cluster_id))
            health = await health_call.result(CONTROL_CALL_TIMEOUT_S)
            events, site_seq = await drain_call.result(CONTROL_CALL_TIMEOUT_S)
        except GodelError as exc:
            log.warning("cluster %s: poll failed: %s", cluster_id, exc)
            return
        if self._clusters.get(cluster_id) is None:
            return  # unregistered meanwhile
        self._clusters.set_health(cluster_id, health)
        if events:
            self._emitter.append(e.model_copy(update={"cluster_id": cluster_id}) for e in events)
            self._cursors.advance(cluster_id, buffer_seq=events[-1].seq)
            for event in events:
                self.apply_event(cluster_id, event)
        self._cursors.advance(cluster_id, site_seq=site_seq)

    def apply_event(self, cluster_id: str, event: FederationEvent) -> None:
        """Follow an agent's end (lifetime, crash, kill) reported by its cluster into the table, and
        the reason a running agent's cluster gave it (a limit its last command hit)."""
        if event.type != EventType.AGENT_STATUS or not event.agent_id:
            return
        agent = self._table.get(event.agent_id)
        if agent is None or agent.cluster_id != cluster_id or agent.status.is_final:
            return  # unknown, or an event from a copy that moved away
        reason = event.data.get("reason", "")
        if reason == KILL_REASON_MIGRATED:
            return  # the end of a copy that moved away (it may have moved back here since)
        epoch = event.data.get("epoch", "")
        if epoch.isdigit() and int(epoch) != agent.epoch:
            return  # another copy of the agent (older, or a restore's before its commit)
        final = final_status(event)
        if final is not None:
            self._table.put(agent.model_copy(update={
                "status": final, "status_reason": event.data.get("reason", agent.status_reason),
                "finished_at": event.ts}))
        elif (reason and reason != agent.status_reason and agent.status is AgentStatus.RUNNING
              and event.data.get("status") == AgentStatus.RUNNING.value):
            # only a reason that says something: a start's empty one keeps a failover's loss note
            self._table.replace(agent, agent.model_copy(update={"status_reason": reason}))


__all__ = ["ORPHAN_REASON", "ORPHAN_SWEEP_INTERVAL_S", "Reconciler", "final_status"]
