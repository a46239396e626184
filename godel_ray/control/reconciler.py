"""``Reconciler``: keeps the agent table true to what the clusters really host.

- At start: each cluster's ``ListAgents`` against the table. An agent still there is refreshed from
  it; a ``local`` agent that ``swarmctl down`` checkpointed is restored from its checkpoint (Ray was
  restarted under it); any other agent the cluster no longer has is marked failed, with why.
- Orphans: a live agent a cluster hosts that the table does not know can only come from a spawn
  the balancer died in the middle of (its row was never written, so its spawn was never
  acknowledged and nobody holds its id), or from a spawn whose clean-up could not reach the
  cluster. Adopting it would hand out an agent nobody asked for; killing it is the safe rule.
  Swept when a cluster is first seen (start-up reconciliation, registration), whenever it
  (re)connects (back from offline, or a restarted ClusterActor), when it reports ``agent.spawned``
  for an agent this balancer neither knows nor is spawning (a spawn a previous balancer started
  that landed after the start-up sweep), and after a failed clean-up (``sweep_soon``); a sweep
  that failed is tried again at the cluster's next answer. Never on a timer: at a hundred clusters
  a periodic sweep was a burst of calls every few seconds.
- Ingestion: one watcher task per cluster keeps one ``wait_changes`` long poll outstanding on its
  ClusterActor, answered when the cluster's health changed or it buffered events (else after
  ``WATCH_TIMEOUT_S``): the health goes to the cluster set (and its ledger), the events into the
  merged log, in the order the cluster buffered them. An agent's end reported by its cluster
  (lifetime, crash, kill) is followed into the table, and so is the reason a running agent was
  given (a limit its command hit), but only for the copy the table points at: same cluster and,
  where the event carries one, same epoch.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
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
    ClusterChanges,
    ClusterStatus,
    EventKind,
    EventType,
    FederationEvent,
)

log = logging.getLogger(__name__)

RECONCILE_TIMEOUT_S = 30.0  # one cluster's ListAgents at startup
WATCH_TIMEOUT_S = 10.0  # one long poll of a ClusterActor, when nothing changes
WATCH_RETRY_S = 1.0  # after a long poll failed (the actor restarting, say)
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


@dataclass
class _Watch:
    """What the balancer knows of one ClusterActor's life, and the orphan sweeps it owes it."""

    incarnation: str = ""  # unknown until its first answer
    health_version: int = -1
    reconnects: int = 0
    sweeps_wanted: int = 1  # a cluster first seen is swept
    swept: int = 0  # the ``sweeps_wanted`` the last successful sweep started under
    watcher: asyncio.Task[None] | None = None
    sweep: asyncio.Task[None] | None = None


class Reconciler:
    """Start-up reconciliation, the orphan sweep, and event ingestion.

    Invariants: an agent is never dropped silently (one a cluster lost is marked failed with why);
    an event changes only the row of the copy it is about; agents being spawned now (``spawning``)
    are never orphans; a cluster's events are ingested in its order, by its one watcher; every
    cluster call is bounded and each cluster is watched and swept by its own task, so one slow
    cluster never holds up the others; nothing here raises into the control loop.
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
        self._watches: dict[str, _Watch] = {}

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
        watch = self._watch(cluster_id)
        wanted = watch.sweeps_wanted
        for agent in self._table.live(cluster_id):
            there = present.get(agent.id)
            if there is not None:
                self._table.refresh(agent, there)
            elif cluster_id == self._local_id and self._checkpoints.record(agent.id) is not None:
                await self._restore_local(agent)
            else:
                self._table.mark_failed(agent, f"not found on cluster {cluster_id} after restart")
        await self.remove_orphans(cluster_id, present.values())
        watch.swept = max(watch.swept, wanted)

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

    async def sweep_orphans(self, cluster_id: str) -> bool:
        """List ``cluster_id``'s agents and remove its orphans; False if it could not be asked."""
        try:
            present = await self._clusters.gateway(cluster_id).list_agents().result(CONTROL_CALL_TIMEOUT_S)
        except GodelError as exc:
            log.info("cluster %s: orphan sweep skipped: %s", cluster_id, exc)
            return False
        if self._clusters.get(cluster_id) is not None:
            await self.remove_orphans(cluster_id, present)
        return True

    def sweep_soon(self, cluster_id: str) -> None:
        """``cluster_id`` may host an orphan now (a failed spawn's clean-up did not reach it): sweep it."""
        watch = self._watch(cluster_id)
        watch.sweeps_wanted += 1
        self._start_sweep(cluster_id, watch)

    def _start_sweep(self, cluster_id: str, watch: _Watch) -> None:
        if watch.sweep is None and watch.swept < watch.sweeps_wanted:
            watch.sweep = asyncio.create_task(self._sweep(cluster_id, watch), name=f"orphans-{cluster_id}")

    async def _sweep(self, cluster_id: str, watch: _Watch) -> None:
        wanted = watch.sweeps_wanted
        try:
            if await self.sweep_orphans(cluster_id):
                watch.swept = max(watch.swept, wanted)
        except Exception:  # a background task never dies silently
            log.exception("cluster %s: orphan sweep failed; trying again at its next answer", cluster_id)
        finally:
            watch.sweep = None

    # --- ingestion ----------------------------------------------------------------------------------

    def _watch(self, cluster_id: str) -> _Watch:
        watch = self._watches.get(cluster_id)
        if watch is None:
            watch = self._watches[cluster_id] = _Watch()
        return watch

    async def tick(self) -> None:
        """One control-loop step: a watcher for every registered cluster, none for a removed one.
        Asks no cluster anything (the watchers do, each on its own)."""
        ids = set(self._clusters.ids())
        for cluster_id in [c for c in self._watches if c not in ids]:
            self._forget(self._watches.pop(cluster_id))
        for cluster_id in ids:
            watch = self._watch(cluster_id)
            if watch.watcher is None or watch.watcher.done():
                watch.watcher = asyncio.create_task(self._watch_loop(cluster_id), name=f"watch-{cluster_id}")

    async def idle(self) -> None:
        """Return once no orphan sweep is running (those started meanwhile included)."""
        while sweeps := [w.sweep for w in self._watches.values() if w.sweep is not None]:
            await asyncio.wait(sweeps)

    def stop(self) -> None:
        """Cancel every watcher and sweep (the balancer stopped serving)."""
        for watch in self._watches.values():
            self._forget(watch)

    @staticmethod
    def _forget(watch: _Watch) -> None:
        for task in (watch.watcher, watch.sweep):
            if task is not None:
                task.cancel()
        watch.watcher = watch.sweep = None

    async def _watch_loop(self, cluster_id: str) -> None:
        """Keep one long poll outstanding on ``cluster_id``'s actor, forever (the tick cancels it)."""
        while True:
            try:
                answered = await self.poll(cluster_id, WATCH_TIMEOUT_S)
            except asyncio.CancelledError:
                raise
            except Exception:  # a control loop never dies
                log.exception("cluster %s: ingesting its changes failed; carrying on", cluster_id)
                answered = False
            if not answered:
                await asyncio.sleep(WATCH_RETRY_S)

    async def poll(self, cluster_id: str, timeout_s: float = 0.0) -> bool:
        """Ingest the cluster's health and the events its actor buffered since the last answer,
        waiting up to ``timeout_s`` for a change. False if the actor could not be asked."""
        watch = self._watch(cluster_id)
        try:
            changes = await self._clusters.gateway(cluster_id).wait_changes(
                watch.incarnation, self._cursors.buffer_seq(cluster_id), watch.health_version, timeout_s,
            ).result(timeout_s + CONTROL_CALL_TIMEOUT_S)
        except GodelError as exc:
            log.warning("cluster %s: poll failed: %s", cluster_id, exc)
            return False
        if self._clusters.get(cluster_id) is None or self._watches.get(cluster_id) is not watch:
            return True  # unregistered meanwhile
        self._ingest(cluster_id, watch, changes)
        return True

    def _ingest(self, cluster_id: str, watch: _Watch, changes: ClusterChanges) -> None:
        if changes.incarnation != watch.incarnation:
            if watch.incarnation:  # the actor restarted: its cluster may have changed under it
                watch.sweeps_wanted += 1
            watch.incarnation, watch.reconnects = changes.incarnation, changes.reconnects
        elif changes.reconnects != watch.reconnects:
            watch.reconnects = changes.reconnects
            watch.sweeps_wanted += 1
        watch.health_version = changes.health_version
        self._clusters.set_health(cluster_id, changes.health)
        events = changes.events
        if events:
            self._emitter.append(e.model_copy(update={"cluster_id": cluster_id}) for e in events)
            self._cursors.advance(cluster_id, buffer_seq=events[-1].seq)
            spawning = self._spawning()
            for event in events:
                self.apply_event(cluster_id, event)
                if (event.type == EventType.AGENT_SPAWNED and event.agent_id and event.agent_id not in spawning
                        and self._table.get(event.agent_id) is None):
                    watch.sweeps_wanted += 1  # a spawn nobody here asked for: an orphan, unless it ended
        self._cursors.advance(cluster_id, site_seq=changes.site_seq)
        if changes.health.status is not ClusterStatus.OFFLINE:
            self._start_sweep(cluster_id, watch)

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


__all__ = ["ORPHAN_REASON", "WATCH_TIMEOUT_S", "Reconciler", "final_status"]
