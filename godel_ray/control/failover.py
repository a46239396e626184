"""``Failover``: checkpoints, restore after a cluster's death, and removal of stale copies.

The balancer's control loop calls ``tick()`` every iteration. A tick only decides (with the pure
functions of ``godel_ray.core.failover``) and starts background tasks; it never waits on a cluster,
so the loop never blocks. Per tick:

1. checkpoints: each agent with ``restart_policy=checkpoint`` is exported (not frozen: the export
   takes the agent's command lock, so it lands between two commands) every
   ``checkpoint_interval_s`` into ``<state_dir>/checkpoints/<agent_id>.tar.gz`` + ``.json`` (the
   snapshot's metadata and journal), with a ``CheckpointRecord`` row in the state store;
2. failover: for each cluster OFFLINE longer than its grace period -- which scales with the failure
   detector's evidence (``core.failover.grace_s``: ``dead_grace_period_s`` when its connections are
   refused, ``grace_period_s`` when it is silent; none while it is degraded or answering again) --
   its checkpointed agents are placed again (same ``place()`` rules, the dead cluster excluded) and restored from
   the latest checkpoint with epoch+1; what was lost (the commands after the checkpoint) goes into
   ``status_reason`` and an ``agent.restored`` event. The others are marked FAILED with the reason;
3. stale copies: when a cluster comes back (ACTIVE after being OFFLINE), and every
   ``SWEEP_INTERVAL_S`` for every active cluster, its live copies the table does not recognise
   (placed elsewhere, older epoch, ended) are killed with reason ``migrated``: their waiting
   commands fail with ``AgentMoved`` and the proxy retries them at the agent's real location.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from godel_ray.control.migrator import ClusterCall, Emit
from godel_ray.control.store import CheckpointRecord, StateStore
from godel_ray.core.cluster_client import KILL_REASON_MIGRATED
from godel_ray.core.failover import (
    MarkFailed,
    Restore,
    due_checkpoints,
    failover_plan,
    grace_s,
    loss_note,
    offline_for,
    stale_copies,
)
from godel_ray.core.placement import ClusterView, no_placement_message, place
from godel_ray.errors import GodelError
from godel_ray.models import (
    LOCAL_CLUSTER_ID,
    Agent,
    AgentSnapshot,
    AgentStatus,
    ClusterHealthState,
    ClusterStatus,
    EventKind,
    EventType,
    Migration,
    MigrationPhase,
    PhaseStamp,
)
from godel_ray.raykit import metrics

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_TIMEOUT_S = 300.0  # the export waits for the running command, then packs the workdir
RESTORE_TIMEOUT_S = 600.0
SWEEP_TIMEOUT_S = 30.0
SWEEP_INTERVAL_S = 30.0  # also catches a rollback's partial copy whose deletion failed


def checkpoint_paths(state_dir: str | os.PathLike[str], agent_id: str) -> tuple[Path, Path]:
    """(archive, metadata) files of ``agent_id``'s checkpoint."""
    root = Path(state_dir) / CHECKPOINT_DIR
    return root / f"{agent_id}.tar.gz", root / f"{agent_id}.json"


def write_checkpoint(state_dir: str | os.PathLike[str], snapshot: AgentSnapshot, epoch: int) -> CheckpointRecord:
    """Write the snapshot's files (atomically: write then rename) and return their record."""
    archive_path, meta_path = checkpoint_paths(state_dir, snapshot.agent.id)
    archive_path.parent.mkdir(parents=True, exist_ok=True)
    for path, data in ((archive_path, snapshot.archive),
                       (meta_path, snapshot.model_copy(update={"archive": b""}).model_dump_json().encode())):
        tmp = path.with_suffix(path.suffix + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return CheckpointRecord(snapshot.agent.id, epoch, snapshot.taken_at, str(archive_path), str(meta_path),
                            snapshot.sha256, snapshot.size_bytes)


def read_checkpoint(record: CheckpointRecord) -> AgentSnapshot:
    """The snapshot a checkpoint record points at (``OSError``/``ValueError`` when unreadable)."""
    meta = AgentSnapshot.model_validate_json(Path(record.meta_path).read_text())
    return meta.model_copy(update={"archive": Path(record.archive_path).read_bytes(), "sha256": record.sha256})


class Failover:
    """Checkpoints and failover for the balancer (the single writer of the state store).

    Invariants: at most one background task per agent (checkpoint or restore) and one sweep per
    cluster at a time; an agent being migrated (``busy()``) is never checkpointed, restored or
    swept; the agent row changes cluster only after the restored copy answered (the commit point of
    a restore); nothing here raises into the control loop.
    """

    def __init__(self, store: StateStore, state_dir: str | os.PathLike[str], call: ClusterCall, emit: Emit, *,
                 views: Callable[[], list[ClusterView]], health: Callable[[str], ClusterHealthState | None],
                 busy: Callable[[], set[str]], clock: Callable[[], float] = time.time,
                 local_id: str = LOCAL_CLUSTER_ID, sweep_interval_s: float = SWEEP_INTERVAL_S) -> None:
        self.store = store
        self.state_dir = Path(state_dir)
        self._call = call
        self._emit = emit
        self._views = views
        self._health = health
        self._busy_elsewhere = busy
        self._clock = clock
        self._local_id = local_id
        self._sweep_interval_s = sweep_interval_s
        self._last_checkpoint_at: dict[str, float] = {}
        self._agent_tasks: dict[str, asyncio.Task[None]] = {}
        self._restoring: set[str] = set()  # agents whose restored copy may exist before its commit
        self._sweeps: dict[str, asyncio.Task[None]] = {}
        self._was_offline: set[str] = set()
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
        clusters = self.store.clusters()
        health = {c.id: self._health(c.id) for c in clusters}
        agents = [a for a in self.store.agents() if not a.status.is_final]
        busy = frozenset(self.busy())
        unreachable = frozenset(cid for cid, h in health.items()
                                if h is not None and h.status in (ClusterStatus.OFFLINE, ClusterStatus.DEGRADED))
        for agent_id in due_checkpoints(agents, self._checkpoint_times(agents), now, busy=busy,
                                        unreachable=unreachable):
            self._start(agent_id, self._checkpoint(agent_id))
        offline = {cid: offline_for(h, now) for cid, h in health.items()}
        grace = {c.id: g for c in clusters if (g := grace_s(health.get(c.id), c.health)) is not None}
        has_checkpoint = frozenset(a.id for a in agents if self.store.checkpoint(a.id) is not None)
        for action in failover_plan(agents, offline, grace, has_checkpoint, busy=busy):
            if isinstance(action, Restore):
                self._start(action.agent_id, self._restore(action), restoring=True)
            elif isinstance(action, MarkFailed):
                self._mark_failed(action)
        for cid, h in health.items():
            status = h.status if h is not None else ClusterStatus.ACTIVE
            if status is ClusterStatus.OFFLINE:
                self._was_offline.add(cid)
            elif status is ClusterStatus.ACTIVE:
                returned = cid in self._was_offline
                periodic = now - self._last_sweep_at.get(cid, now) >= self._sweep_interval_s
                self._last_sweep_at.setdefault(cid, now)
                if (returned or periodic) and cid not in self._sweeps:
                    self._was_offline.discard(cid)
                    self._last_sweep_at[cid] = now
                    self._start_sweep(cid)

    def _start_sweep(self, cluster_id: str) -> None:
        task = asyncio.create_task(self._sweep(cluster_id), name=f"sweep-{cluster_id}")
        self._sweeps[cluster_id] = task
        task.add_done_callback(lambda _t: self._sweeps.pop(cluster_id, None))

    def _checkpoint_times(self, agents: list[Agent]) -> dict[str, float]:
        for agent in agents:
            if agent.id not in self._last_checkpoint_at:
                record = self.store.checkpoint(agent.id)
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
        agent = self.store.agent(agent_id)
        if agent is None or agent.status is not AgentStatus.RUNNING:
            return
        started = self._clock()
        try:
            snapshot: AgentSnapshot = await self._call(agent.cluster_id, "export", agent.id, epoch=agent.epoch,
                                                       freeze=False, timeout_s=CHECKPOINT_TIMEOUT_S)
            record = await asyncio.to_thread(write_checkpoint, self.state_dir, snapshot, agent.epoch)
        except (GodelError, OSError) as exc:
            self._last_checkpoint_at[agent.id] = started  # do not hammer a failing agent every tick
            log.warning("agent %s: checkpoint failed: %s", agent.id, exc)
            return
        current = self.store.agent(agent.id)
        if current is None or (current.cluster_id, current.epoch) != (agent.cluster_id, agent.epoch):
            return  # moved meanwhile: this snapshot is not the agent's latest state
        self.store.put_checkpoint(record)
        self._last_checkpoint_at[agent.id] = started
        self._emit(EventKind.AGENT, EventType.AGENT_CHECKPOINTED, agent.cluster_id, agent.id, epoch=str(agent.epoch),
                   bytes=str(record.size_bytes), journal=str(len(snapshot.journal)),
                   taken_at=f"{record.taken_at:.3f}")

    # --- failover -----------------------------------------------------------------------------

    def _mark_failed(self, action: MarkFailed) -> None:
        agent = self.store.agent(action.agent_id)
        if agent is None or agent.status.is_final or agent.cluster_id != action.dead_cluster:
            return
        self.store.put_agent(agent.model_copy(update={
            "status": AgentStatus.FAILED, "status_reason": action.reason, "finished_at": self._clock()}))
        self._emit(EventKind.AGENT, EventType.AGENT_FAILED, action.dead_cluster, agent.id, reason=action.reason)
        metrics.record_failover(action.dead_cluster, "failed")
        log.warning("agent %s: %s", agent.id, action.reason)

    def _lost_commands(self, agent_id: str, cluster_id: str, taken_at: float) -> int:
        started = self.store.events(agent_id=agent_id, types=(EventType.COMMAND_STARTED,), limit=1_000_000)
        return sum(1 for e in started if e.cluster_id == cluster_id and e.ts > taken_at)

    async def _restore(self, action: Restore) -> None:
        agent = self.store.agent(action.agent_id)
        record = self.store.checkpoint(action.agent_id)
        if agent is None or agent.status.is_final or agent.cluster_id != action.dead_cluster or record is None:
            return
        views = [v for v in self._views() if v.cluster.id != action.dead_cluster]
        pinned_to_dead = agent.config.cluster == action.dead_cluster
        config = agent.config.model_copy(update={"cluster": None}) if pinned_to_dead else agent.config
        decision = place(config, views, local_id=self._local_id)
        if decision.chosen is None:
            self._mark_failed(MarkFailed(agent.id, action.dead_cluster, (
                f"cluster {action.dead_cluster} offline for {action.offline_s:.1f}s and no other cluster can "
                f"take the agent: {no_placement_message(decision, config)}")))
            return
        target, epoch_to = decision.chosen, agent.epoch + 1
        started = self._clock()
        try:
            saved = await asyncio.to_thread(read_checkpoint, record)
            snapshot = saved.model_copy(update={"agent": saved.agent.model_copy(update={
                "epoch": epoch_to, "cluster_id": target, "config": agent.config})})
            there: Agent = await self._call(target, "import_", snapshot, timeout_s=RESTORE_TIMEOUT_S)
        except (GodelError, OSError, ValueError) as exc:
            # Retried at the next tick; a partial copy on ``target`` is removed by its sweep.
            log.warning("agent %s: restore on %s failed: %s", agent.id, target, exc)
            self._emit(EventKind.AGENT, EventType.AGENT_RESTORE_FAILED, target, agent.id, error=str(exc)[:300])
            return
        current = self.store.agent(agent.id)
        if current is None or (current.cluster_id, current.epoch) != (agent.cluster_id, agent.epoch):
            # The table moved on meanwhile (killed by the user, say): this copy is not the agent.
            await self._kill_quietly(target, agent.id, epoch_to, "restore superseded")
            return
        lost = self._lost_commands(agent.id, action.dead_cluster, record.taken_at)
        note = loss_note(record.taken_at, lost, action.dead_cluster)
        self.store.put_agent(agent.model_copy(update={
            "cluster_id": target, "epoch": epoch_to, "status": AgentStatus.RUNNING, "status_reason": note,
            "node_id": there.node_id, "gpu_ids": list(there.gpu_ids)}))
        self.store.put_decision(decision.model_copy(update={"agent_id": agent.id}))
        done = self._clock()
        self.store.put_migration(Migration(
            agent_id=agent.id, source=action.dead_cluster, target=target, reason="failover",
            phase=MigrationPhase.COMPLETED, epoch_from=agent.epoch, epoch_to=epoch_to,
            bytes_moved=record.size_bytes, downtime_s=None, error=note, started_at=started, finished_at=done,
            phases=[PhaseStamp(phase=MigrationPhase.IMPORTING, at=started),
                    PhaseStamp(phase=MigrationPhase.COMMITTING, at=done),
                    PhaseStamp(phase=MigrationPhase.COMPLETED, at=done)]))
        self._last_checkpoint_at.pop(agent.id, None)  # checkpoint the new copy soon
        self._emit(EventKind.AGENT, EventType.AGENT_RESTORED, target, agent.id, source=action.dead_cluster,
                   epoch=str(epoch_to), checkpoint_taken_at=f"{record.taken_at:.3f}", lost_commands=str(lost),
                   reason=note)
        metrics.record_failover(action.dead_cluster, "restored")
        await self._fence(action.dead_cluster, agent.id, epoch_to)
        log.warning("agent %s: %s; now on %s at epoch %d", agent.id, note, target, epoch_to)

    async def _fence(self, cluster_id: str, agent_id: str, epoch: int) -> None:
        """Tell the dead cluster's ClusterActor that the agent lives at ``epoch`` now: its stale copy
        there serves no command, even before the sweep removes it (best effort: the sweep remains)."""
        try:
            await self._call(cluster_id, "fence", agent_id, epoch, timeout_s=SWEEP_TIMEOUT_S)
        except GodelError as exc:
            log.warning("agent %s: could not fence its stale copy on %s: %s", agent_id, cluster_id, exc)

    # --- stale copies -------------------------------------------------------------------------

    async def _sweep(self, cluster_id: str) -> None:
        try:
            present: list[Agent] = await self._call(cluster_id, "list_agents", timeout_s=SWEEP_TIMEOUT_S)
        except GodelError as exc:
            log.info("cluster %s: stale-copy sweep postponed: %s", cluster_id, exc)
            self._was_offline.add(cluster_id)  # try again at the next tick it is active
            return
        table = {a.id: a for a in self.store.agents()}
        for stale in stale_copies(cluster_id, present, table, busy=frozenset(self._copies_in_flight())):
            if await self._kill_quietly(cluster_id, stale.agent_id, stale.epoch, stale.reason):
                self._emit(EventKind.AGENT, EventType.AGENT_STALE_REMOVED, cluster_id, stale.agent_id,
                           epoch=str(stale.epoch), reason=stale.reason)
                log.warning("agent %s: removed from %s: %s", stale.agent_id, cluster_id, stale.reason)

    async def _kill_quietly(self, cluster_id: str, agent_id: str, epoch: int, why: str) -> bool:
        try:
            await self._call(cluster_id, "kill", agent_id, epoch=epoch, reason=KILL_REASON_MIGRATED,
                             timeout_s=SWEEP_TIMEOUT_S)
        except GodelError as exc:
            log.warning("agent %s: could not remove the copy on %s (%s): %s", agent_id, cluster_id, why, exc)
            return False
        return True

    async def close(self) -> None:
        for task in [*self._agent_tasks.values(), *self._sweeps.values()]:
            task.cancel()


__all__ = ["CHECKPOINT_DIR", "Failover", "checkpoint_paths", "read_checkpoint", "write_checkpoint"]
