"""``Failover``: checkpoints, restore after a cluster's death, and removal of stale copies.

The balancer's control loop calls ``tick()`` every iteration. A tick only decides (with the pure
functions of ``godel_ray.core.failover``) and starts background tasks; it never waits on a cluster,
so the loop never blocks. Per tick:

1. checkpoints: each agent with ``restart_policy=checkpoint`` is exported (not frozen: the export
   takes the agent's command lock, so it lands between two commands) every
   ``checkpoint_interval_s``, through ``Checkpoints.take`` (the one format and write path);
2. failover: for each cluster OFFLINE longer than its grace period -- which scales with the failure
   detector's evidence (``core.failover.grace_s``: ``dead_grace_period_s`` when its connections are
   refused, ``grace_period_s`` when it is silent; none while it is degraded or answering again) --
   its checkpointed agents are placed again (same ``place()`` rules, the dead cluster excluded) and
   restored from the latest checkpoint with epoch+1 (``Checkpoints.restore``: a kill that races it
   wins); what was lost (the commands after the checkpoint) goes into ``status_reason`` and an
   ``agent.restored`` event; the dead cluster's ClusterActor is told (``fence``) so that the stale
   copy there serves nothing, even before it is removed. The others are marked FAILED with the reason;
3. stale copies and lost agents: when a cluster comes back (ACTIVE after being DEGRADED or
   OFFLINE), and every ``SWEEP_INTERVAL_S`` for every active cluster, its live copies the table
   does not recognise (placed elsewhere, older epoch, ended) are killed with reason ``migrated``:
   their waiting commands fail with ``AgentMoved`` and the proxy retries them at the agent's real
   location. The agents it no longer hosts at all (it restarted within its grace period) are
   restored from their latest checkpoint (``core.failover.lost_agents``; placed by the normal
   rules, that cluster included), or marked FAILED with why when there is none to restore.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from godel_ray.control.agent_table import AgentTable
from godel_ray.control.checkpoints import Checkpoints
from godel_ray.control.clusters import ClusterSet
from godel_ray.control.eventlog import Emit
from godel_ray.control.store import Store
from godel_ray.core.cluster_client import KILL_REASON_MIGRATED
from godel_ray.core.failover import (
    MarkFailed,
    Restore,
    due_checkpoints,
    failover_plan,
    grace_s,
    loss_note,
    lost_agents,
    offline_for,
    stale_copies,
)
from godel_ray.core.placement import no_placement_message, place
from godel_ray.errors import GodelError
from godel_ray.models import (
    LOCAL_CLUSTER_ID,
    Agent,
    AgentStatus,
    ClusterStatus,
    EventKind,
    EventType,
    Migration,
    MigrationPhase,
    PhaseStamp,
)
from godel_ray.raykit import metrics

log = logging.getLogger(__name__)

SWEEP_TIMEOUT_S = 30.0
SWEEP_INTERVAL_S = 30.0  # also catches a rollback's partial copy whose deletion failed


class Failover:
    """Checkpoints and failover for the balancer.

    Invariants: at most one background task per agent (checkpoint or restore) and one sweep per
    cluster at a time; an agent being migrated (``busy()``) is never checkpointed, restored or
    swept; the agent row changes cluster only after the restored copy answered, and only over the
    row the restore read (the commit point of a restore: a racing kill wins); nothing here raises
    into the control loop. Reads come from memory (the cluster set, the agent table).
    """

    def __init__(self, clusters: ClusterSet, table: AgentTable, checkpoints: Checkpoints, store: Store,
                 emit: Emit, *, busy: Callable[[], set[str]], clock: Callable[[], float] = time.time,
                 local_id: str = LOCAL_CLUSTER_ID, sweep_interval_s: float = SWEEP_INTERVAL_S) -> None:
        self._clusters = clusters
        self._table = table
        self._checkpoints = checkpoints
        self._store = store
        self._emit = emit
        self._busy_elsewhere = busy
        self._clock = clock
        self._local_id = local_id
        self._sweep_interval_s = sweep_interval_s
        self._last_checkpoint_at: dict[str, float] = {}
        self._agent_tasks: dict[str, asyncio.Task[None]] = {}
        self._restoring: set[str] = set()  # agents whose restored copy may exist before its commit
        self._sweeps: dict[str, asyncio.Task[None]] = {}
        self._was_away: set[str] = set()  # clusters seen DEGRADED or OFFLINE since their last sweep
        self._last_sweep_at: dict[str, float] = {}

    # --- the tick -----------------------------------------------------------------------------

    def busy(self) -> set[str]:
        """Agents a checkpoint or restore is running for, plus the caller's (migrations)."""
        return set(self._agent_tasks) | self._busy_elsewhere()

    def _copies_in_flight(self) -> set[str]:
        """Agents that may have a second copy before its commit point: restores and migrations.

        A checkpoint does not count: it reads the agent where the table says it lives, so a stale
        copy elsewhere must still be removed while one runs (they run every few seconds).
        """
        return self._restoring | self._busy_elsewhere()

    async def tick(self) -> None:
        """One control-loop iteration: start what is due; never waits on a cluster, never raises."""
        try:
            self._tick(self._clock())
        except Exception:
            log.exception("failover tick failed; carrying on")

    def _tick(self, now: float) -> None:
        clusters = self._clusters.clusters()
        health = {c.id: self._clusters.health_of(c.id) for c in clusters}
        agents = self._table.live()
        busy = frozenset(self.busy())
        unreachable = frozenset(cid for cid, h in health.items()
                                if h.status in (ClusterStatus.OFFLINE, ClusterStatus.DEGRADED))
        for agent_id in due_checkpoints(agents, self._checkpoint_times(agents), now, busy=busy,
                                        unreachable=unreachable):
            self._start(agent_id, self._checkpoint(agent_id))
        offline = {cid: offline_for(h, now) for cid, h in health.items()}
        grace = {c.id: g for c in clusters if (g := grace_s(health.get(c.id), c.health)) is not None}
        has_checkpoint = frozenset(a.id for a in agents if self._checkpoints.record(a.id) is not None)
        for action in failover_plan(agents, offline, grace, has_checkpoint, busy=busy):
            if isinstance(action, Restore):
                self._start(action.agent_id, self._restore(action), restoring=True)
            elif isinstance(action, MarkFailed):
                self._mark_failed(action)
        for cid, h in health.items():
            if h.status in (ClusterStatus.OFFLINE, ClusterStatus.DEGRADED):
                self._was_away.add(cid)  # a restart within the grace period may show only as degraded
            elif h.status is ClusterStatus.ACTIVE:
                returned = cid in self._was_away
                periodic = now - self._last_sweep_at.get(cid, now) >= self._sweep_interval_s
                self._last_sweep_at.setdefault(cid, now)
                if (returned or periodic) and cid not in self._sweeps:
                    self._was_away.discard(cid)
                    self._last_sweep_at[cid] = now
                    self._start_sweep(cid)

    def _start_sweep(self, cluster_id: str) -> None:
        task = asyncio.create_task(self._sweep(cluster_id), name=f"sweep-{cluster_id}")
        self._sweeps[cluster_id] = task
        task.add_done_callback(lambda _t: self._sweeps.pop(cluster_id, None))

    def _checkpoint_times(self, agents: list[Agent]) -> dict[str, float]:
        for agent in agents:
            if agent.id not in self._last_checkpoint_at:
                record = self._checkpoints.record(agent.id)
                if record is not None:
                    self._last_checkpoint_at[agent.id] = record.taken_at
        return self._last_checkpoint_at

    def _start(self, agent_id: str, work: Coroutine[Any, Any, None], *, restoring: bool = False) -> None:
        task = asyncio.create_task(work, name=f"failover-{agent_id}")
        self._agent_tasks[agent_id] = task
        if restoring:
            self._restoring.add(agent_id)

        def done(_task: asyncio.Task[None]) -> None:
            self._agent_tasks.pop(agent_id, None)
            self._restoring.discard(agent_id)

        task.add_done_callback(done)

    # --- checkpoints --------------------------------------------------------------------------

    async def _checkpoint(self, agent_id: str) -> None:
        agent = self._table.get(agent_id)
        if agent is None or agent.status is not AgentStatus.RUNNING:
            return
        started = self._clock()
        try:
            record = await self._checkpoints.take(agent, freeze=False)
        except (GodelError, OSError) as exc:
            self._last_checkpoint_at[agent.id] = started  # do not hammer a failing agent every tick
            log.warning("agent %s: checkpoint failed: %s", agent.id, exc)
            return
        if record is not None:
            self._last_checkpoint_at[agent.id] = started

    # --- failover -----------------------------------------------------------------------------

    def _mark_failed(self, action: MarkFailed) -> None:
        agent = self._table.get(action.agent_id)
        if agent is None or agent.status.is_final or agent.cluster_id != action.dead_cluster:
            return
        self._table.mark_failed(agent, action.reason)
        metrics.record_failover(action.dead_cluster, "failed")

    def _lost_commands(self, agent_id: str, cluster_id: str, taken_at: float) -> int:
        started = self._store.events(agent_id=agent_id, types=(EventType.COMMAND_STARTED,), limit=1_000_000)
        return sum(1 for e in started if e.cluster_id == cluster_id and e.ts > taken_at)

    async def _restore(self, action: Restore) -> None:
        agent = self._table.get(action.agent_id)
        record = self._checkpoints.record(action.agent_id)
        if agent is None or agent.status.is_final or agent.cluster_id != action.dead_cluster or record is None:
            return
        views = [v for v in self._clusters.views() if action.returned or v.cluster.id != action.dead_cluster]
        pinned_to_dead = agent.config.cluster == action.dead_cluster and not action.returned
        config = agent.config.model_copy(update={"cluster": None}) if pinned_to_dead else agent.config
        decision = place(config, views, local_id=self._local_id)
        if decision.chosen is None:
            why = (f"cluster {action.dead_cluster} restarted without the agent and no cluster can take it"
                   if action.returned else
                   f"cluster {action.dead_cluster} offline for {action.offline_s:.1f}s and no other cluster can "
                   "take the agent")
            self._mark_failed(MarkFailed(agent.id, action.dead_cluster,
                                         f"{why}: {no_placement_message(decision, config)}"))
            return
        target = decision.chosen
        started = self._clock()
        lost = self._lost_commands(agent.id, action.dead_cluster, record.taken_at)
        note = loss_note(record.taken_at, lost, action.dead_cluster, returned=action.returned)
        try:
            restored = await self._checkpoints.restore(agent, target, reason=note)
        except (GodelError, OSError, ValueError) as exc:
            # Retried at the next tick; a partial copy on ``target`` is removed by its sweep.
            log.warning("agent %s: restore on %s failed: %s", agent.id, target, exc)
            self._emit(EventKind.AGENT, EventType.AGENT_RESTORE_FAILED, target, agent.id, error=str(exc)[:300])
            return
        if restored is None:
            return  # the table moved on meanwhile (killed by the user, say): that copy was removed
        row = self._table.get(agent.id)
        home = agent.home_cluster_id or action.dead_cluster  # remembered for fail-back (control.failback)
        if row is not None and row.cluster_id == target and row.home_cluster_id != home:
            self._table.put(row.model_copy(update={"home_cluster_id": "" if home == target else home}))
        self._store.put_decision(decision.model_copy(update={"agent_id": agent.id}))
        done = self._clock()
        self._store.put_migration(Migration(
            agent_id=agent.id, source=action.dead_cluster, target=target, reason="failover",
            phase=MigrationPhase.COMPLETED, epoch_from=agent.epoch, epoch_to=restored.epoch,
            bytes_moved=record.size_bytes, downtime_s=None, error=note, started_at=started, finished_at=done,
            phases=[PhaseStamp(phase=MigrationPhase.IMPORTING, at=started),
                    PhaseStamp(phase=MigrationPhase.COMMITTING, at=done),
                    PhaseStamp(phase=MigrationPhase.COMPLETED, at=done)]))
        self._last_checkpoint_at.pop(agent.id, None)  # checkpoint the new copy soon
        self._emit(EventKind.AGENT, EventType.AGENT_RESTORED, target, agent.id, source=action.dead_cluster,
                   epoch=str(restored.epoch), checkpoint_taken_at=f"{record.taken_at:.3f}", lost_commands=str(lost),
                   reason=note)
        metrics.record_failover(action.dead_cluster, "restored")
        log.warning("agent %s: %s; now on %s at epoch %d", agent.id, note, target, restored.epoch)
        await self._fence(action.dead_cluster, agent.id, restored.epoch)

    async def _fence(self, cluster_id: str, agent_id: str, epoch: int) -> None:
        """Tell the dead cluster's ClusterActor that the agent lives at ``epoch`` now: its stale copy
        there serves no command, even before the sweep removes it (best effort: the sweep remains)."""
        try:
            await self._clusters.gateway(cluster_id).fence(agent_id, epoch).result(SWEEP_TIMEOUT_S)
        except GodelError as exc:
            log.warning("agent %s: could not fence its stale copy on %s: %s", agent_id, cluster_id, exc)

    # --- stale copies -------------------------------------------------------------------------

    async def _sweep(self, cluster_id: str) -> None:
        before = self._table.live(cluster_id)  # read before asking: see ``core.failover.lost_agents``
        try:
            present = await self._clusters.gateway(cluster_id).list_agents().result(SWEEP_TIMEOUT_S)
        except GodelError as exc:
            log.info("cluster %s: stale-copy sweep postponed: %s", cluster_id, exc)
            self._was_away.add(cluster_id)  # try again at the next tick it is active
            return
        table = {a.id: a for a in self._table.all()}
        for stale in stale_copies(cluster_id, present, table, busy=frozenset(self._copies_in_flight())):
            if await self._kill_quietly(cluster_id, stale.agent_id, stale.epoch, stale.reason):
                self._emit(EventKind.AGENT, EventType.AGENT_STALE_REMOVED, cluster_id, stale.agent_id,
                           epoch=str(stale.epoch), reason=stale.reason)
                log.warning("agent %s: removed from %s: %s", stale.agent_id, cluster_id, stale.reason)
        table = {a.id: a for a in self._table.all()}
        has_checkpoint = frozenset(a.id for a in before if self._checkpoints.record(a.id) is not None)
        for action in lost_agents(cluster_id, before, present, table, has_checkpoint,
                                  busy=frozenset(self._copies_in_flight())):
            checkpointing = self._agent_tasks.get(action.agent_id)
            if checkpointing is not None:  # of the lost copy: it fails at once; then the restore may start
                await asyncio.wait({checkpointing}, timeout=SWEEP_TIMEOUT_S)
            if isinstance(action, MarkFailed):
                self._mark_failed(action)
            elif isinstance(action, Restore) and action.agent_id not in self._agent_tasks:
                self._start(action.agent_id, self._restore(action), restoring=True)

    async def _kill_quietly(self, cluster_id: str, agent_id: str, epoch: int, why: str) -> bool:
        try:
            await self._clusters.gateway(cluster_id).kill(agent_id, epoch=epoch, reason=KILL_REASON_MIGRATED
                                                          ).result(SWEEP_TIMEOUT_S)
        except GodelError as exc:
            log.warning("agent %s: could not remove the copy on %s (%s): %s", agent_id, cluster_id, why, exc)
            return False
        return True

    async def close(self) -> None:
        for task in [*self._agent_tasks.values(), *self._sweeps.values()]:
            task.cancel()


__all__ = ["SWEEP_INTERVAL_S", "Failover"]
