"""``MigrationExecutor``: the shell that carries out ``LiveMigrationMachine``'s actions for the balancer.

The machine (``godel_ray.core.live_migration``, protocol v2) decides; this class performs each
action against the source and target ClusterActors, reports the outcome back, and persists the
``Migration`` record and a ``migration.<phase>`` event after every step. What each action does here:

    Prepare          target ``prepare(agent at epoch_to)``: an importing copy, resources held, empty
                     staging (a cold worker start happens here, outside the downtime)
    PreCopy(round)   ``stream``: source ``send(FULL)`` (round 1) or ``send(CHANGES)`` as a Ray
                     streaming generator; each piece's object ref is pushed to the target's
                     ``receive`` as it appears (Ray resolves it there): the bytes go source ->
                     object store -> target, a few chunks in flight; this process holds refs only
    Freeze           source ``freeze(options)``, one action on its own (``_freeze``): the record's
                     ``busy`` says what it does with a running command: WAIT freezes at the first
                     idle moment (``AgentBusy`` after ``busy_timeout_s``: rolled back, nothing
                     frozen), INTERRUPT stops it; it reports ``frozen_at`` and ``interrupted_seq``
    Delta            ``stream`` of ``send(FINAL)``: what changed since the last manifest, deletions,
                     and the agent's journal
    Activate         target ``activate``: staging becomes the workdir; it answers as running at epoch_to
    Commit           the agent row with the target cluster and ``epoch_to``: THE commit point,
                     written only over the migrating row ``begin`` wrote (compare-and-set, in memory
                     and in the store): a kill that raced the move wins, the commit fails and
                     the move rolls back (the target copy is deleted), so no copy survives
    KillSource       source ``kill(epoch=epoch_from, reason=migrated)``: its waiting commands fail
                     with ``AgentMoved`` and the proxy retries them at the new location
    Resume           rollback: source ``resume``
    DeleteTarget     rollback: target ``kill(epoch=epoch_to)`` (no copy there counts as done)

A step that raises anything but a cancellation is a failed step; the shell itself failing (a store
error while persisting) is ``machine.abort``: the same rollback, so the source is resumed, never
left frozen. The cooldown is recorded on every attempt that passed validation (state store
``meta``, kept in memory). The target's capacity is held in the ledger from ``begin`` until the
commit switches the agent's own hold there, or released when the move rolls back.
``downtime_s`` is the machine's (source frozen, or else freeze requested -> commit succeeded); never rewritten here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from godel_ray.control.agent_table import AgentTable
from godel_ray.control.eventlog import Emit
from godel_ray.control.ledger import CapacityLedger, Demand
from godel_ray.control.store import Store
from godel_ray.core.cluster_client import KILL_REASON_MIGRATED
from godel_ray.core.live_migration import Activate, Delta, LiveAction, LiveMigrationMachine, PreCopy, Prepare
from godel_ray.core.migration import (
    Commit,
    DeleteTarget,
    Event,
    Finish,
    Freeze,
    KillSource,
    Resume,
    StepFailed,
    StepSucceeded,
    validate_migration,
)
from godel_ray.core.placement import ClusterView
from godel_ray.errors import (
    AgentNotFound,
    ClusterNotFound,
    FailedPrecondition,
    GodelError,
    InvalidArgument,
    StaleEpoch,
)
from godel_ray.models import (
    DEFAULT_INTERRUPT_GRACE_S,
    LOCAL_CLUSTER_ID,
    Agent,
    AgentStatus,
    BusyPolicy,
    EventKind,
    EventType,
    FreezeOptions,
    FreezeReport,
    Migration,
    MigrationPhase,
    TransferMode,
    TransferReport,
)
from godel_ray.raykit import metrics
from godel_ray.settings import busy_timeout_from_env

if TYPE_CHECKING:
    from godel_ray.raykit.gateway import ClusterGateway


log = logging.getLogger(__name__)

MIGRATION_COOLDOWN_S = 30.0  # between two attempts to move the same agent
FREEZE_TIMEOUT_S = 60.0  # the freeze itself, on top of its own wait: busy_timeout_s or the grace
PREPARE_TIMEOUT_S = 600.0  # a new actor may need a fresh worker process
PIECE_TIMEOUT_S = 300.0  # one piece of a workdir stream reaching the target (it waits for the source's)
APPLY_TIMEOUT_S = 600.0  # the target finishing a stream once its last piece arrived
STEP_TIMEOUT_S = 30.0  # activate, kill, resume
COOLDOWN_ENV = "GODEL_MIGRATION_COOLDOWN_S"


def cooldown_from_env(default_s: float = MIGRATION_COOLDOWN_S) -> float:
    """The cooldown between two migrations of one agent: ``$GODEL_MIGRATION_COOLDOWN_S`` or 30 s."""
    raw = os.environ.get(COOLDOWN_ENV, "")
    try:
        value = float(raw) if raw else default_s
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using %g", COOLDOWN_ENV, raw, default_s)
        return default_s
    return max(0.0, value)


def _migrating(previous: Agent) -> Agent:
    """The row ``begin`` writes over ``previous`` (the one the commit expects to replace)."""
    return previous.model_copy(update={"status": AgentStatus.MIGRATING})


LIVE_MOVE_REASONS = frozenset({"manual", "drain", "fail_back"})  # live moves this executor runs (and recovers)
AUTOMATIC_MOVE_REASONS = frozenset({"drain", "failover"})  # moves that remember the agent's home


def home_after_move(previous: Agent, m: Migration) -> str:
    """The agent's home once ``m`` committed: an automatic move remembers where it came from (the
    first home, over several moves); a manual move or a fail-back means it lives where it is now."""
    if m.reason in AUTOMATIC_MOVE_REASONS:
        home = previous.home_cluster_id or m.source
        return "" if home == m.target else home
    return ""


class MigrationExecutor:
    """Runs migrations for the balancer (the single writer of the state store).

    Invariants: at most one migration per agent at a time (``in_progress``); the record is
    persisted after every step, so ``migrations()`` shows the live phase; the agent row changes
    cluster only at Commit, and only over the migrating row (a racing kill wins); no whole
    snapshot passes through this process (it forwards object refs of a workdir stream's pieces);
    the target's capacity is held from ``begin`` on; a source this shell froze is resumed on every
    path that does not reach the commit.
    """

    def __init__(self, store: Store, table: AgentTable, gateway: Callable[[str], ClusterGateway],
                 emit: Emit, *, ledger: CapacityLedger, views: Callable[[str], ClusterView | None],
                 cooldown_s: float = MIGRATION_COOLDOWN_S, clock: Callable[[], float] = time.time,
                 local_id: str = LOCAL_CLUSTER_ID, busy_timeout_s: float | None = None,
                 interrupt_grace_s: float = DEFAULT_INTERRUPT_GRACE_S) -> None:
        self._store = store
        self._table = table
        self._gateway = gateway
        self._emit = emit
        self._ledger = ledger
        self._views = views
        self.cooldown_s = cooldown_s
        self.busy_timeout_s = busy_timeout_s if busy_timeout_s is not None else busy_timeout_from_env()
        self.interrupt_grace_s = interrupt_grace_s
        self._clock = clock
        self._local_id = local_id
        self._last_attempt: dict[str, float] = {}
        self.in_progress: set[str] = set()
        self._tasks: dict[str, asyncio.Task[Migration]] = {}

    def load(self, agent_ids: Iterable[str]) -> None:
        """Read the last attempt of each (live) agent from the store, once."""
        for agent_id in agent_ids:
            value = self._store.migration_attempt(agent_id)
            if value is not None:
                self._last_attempt[agent_id] = value

    # --- validation and start ---------------------------------------------------------------

    def last_attempt_at(self, agent_id: str) -> float | None:
        return self._last_attempt.get(agent_id)

    def validate(self, agent: Agent | None, source: ClusterView | None, target: ClusterView | None,
                 target_id: str) -> None:
        """Refuse a move that must not start (unknown agent or cluster, same cluster, no capacity
        or GPU type on the target, cooldown with the time left, already migrating)."""
        if agent is not None and source is None:
            raise ClusterNotFound(f"agent {agent.id}'s cluster {agent.cluster_id!r} is no longer registered",
                                  agent_id=agent.id, cluster_id=agent.cluster_id)
        source_view = source if source is not None else target
        if source_view is None:  # unknown agent and unknown target: validate_migration names the agent
            raise AgentNotFound("agent not found: nothing to migrate (swarmctl agent list shows known agents)")
        validate_migration(agent, source_view, target, target_id=target_id,
                           last_attempt_at=self.last_attempt_at(agent.id) if agent else None,
                           cooldown_s=self.cooldown_s, now=self._clock(),
                           in_progress=agent is not None and agent.id in self.in_progress,
                           local_id=self._local_id)

    async def migrate(self, agent_id: str, target: str, wait: bool = True, *, reason: str = "manual",
                      busy: BusyPolicy = BusyPolicy.WAIT, busy_timeout_s: float | None = None) -> Migration:
        """Validate, begin and run a move; ``wait=False`` returns the record as it started.
        ``reason``: one of ``LIVE_MOVE_REASONS`` (what asked for the move; recorded and recovered).
        ``busy``/``busy_timeout_s``: what the freeze does with a running command (the executor's
        ``busy_timeout_s`` when None)."""
        agent = self._table.get(agent_id)
        self.validate(agent, self._views(agent.cluster_id) if agent else None, self._views(target), target)
        assert agent is not None  # validate refused an unknown agent
        migration = self.begin(agent, target, reason=reason, busy=busy,
                               busy_timeout_s=self.busy_timeout_s if busy_timeout_s is None else busy_timeout_s)
        task = self.start(migration, agent)
        if not wait:
            return migration.model_copy(deep=True)
        return await asyncio.shield(task)

    def begin(self, agent: Agent, target_id: str, *, reason: str = "manual", busy: BusyPolicy = BusyPolicy.WAIT,
              busy_timeout_s: float | None = None) -> Migration:
        """Record the attempt (cooldown starts now), the Migration, hold the target's capacity, and
        mark the agent migrating."""
        if busy_timeout_s is not None and not busy_timeout_s > 0:
            raise InvalidArgument(f"busy timeout must be a positive number of seconds; got {busy_timeout_s}",
                                  field="busy_timeout_s")
        now = self._clock()
        self.in_progress.add(agent.id)
        self._store.put_migration_attempt(agent.id, now)
        self._last_attempt[agent.id] = now
        migration = Migration(agent_id=agent.id, source=agent.cluster_id, target=target_id,
                              epoch_from=agent.epoch, epoch_to=agent.epoch + 1, reason=reason, started_at=now,
                              busy=busy, busy_timeout_s=busy_timeout_s or self.busy_timeout_s)
        self._store.put_migration(migration)
        self._ledger.hold(target_id, agent.id, Demand.of(agent.config), now, in_flight=True)
        self._table.put(_migrating(agent).model_copy(update={"status_reason": f"migrating to {target_id}"}))
        self._emit(EventKind.MIGRATION, EventType.MIGRATION_STARTED, agent.cluster_id, agent.id,
                   migration_id=migration.id, source=migration.source, target=target_id, reason=reason)
        return migration

    def start(self, migration: Migration, previous: Agent) -> asyncio.Task[Migration]:
        """Run ``migration`` in the background; the task is kept until it ends."""
        task = asyncio.create_task(self.run(migration, previous), name=f"migration-{migration.id}")
        self._tasks[migration.id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(migration.id, None))
        return task

    def task_of(self, migration_id: str) -> asyncio.Task[Migration] | None:
        """The running task of a migration this executor started (None once it ended)."""
        return self._tasks.get(migration_id)

    def records(self, agent_id: str | None = None) -> list[Migration]:
        return self._store.migrations(agent_id)

    # --- the shell loop ---------------------------------------------------------------------

    async def run(self, migration: Migration, previous: Agent) -> Migration:
        """Carry the migration to COMPLETED or ROLLED_BACK. ``previous`` is the agent row before
        ``begin`` (restored on rollback). Never raises for a failed step: the record says why."""
        machine = LiveMigrationMachine(migration, self._clock())
        self.in_progress.add(migration.agent_id)
        return await self._drive(machine, machine.start(self._clock()), _Run(previous=previous))

    async def recover_unfinished(self) -> list[Migration]:
        """After a balancer restart: finish each persisted migration that had not ended, from its
        phase (roll back before the commit point, clean up after it). Returns what it finished."""
        out: list[Migration] = []
        for migration in self._store.migrations():
            if migration.finished_at is not None or migration.reason not in LIVE_MOVE_REASONS:
                continue
            row = self._table.get(migration.agent_id)
            if row is None:
                continue
            committed = (row.cluster_id, row.epoch) == (migration.target, migration.epoch_to)
            previous = row if committed else row.model_copy(update={
                "status": AgentStatus.RUNNING, "status_reason": "", "cluster_id": migration.source,
                "epoch": migration.epoch_from})
            machine = LiveMigrationMachine(migration, self._clock())
            self.in_progress.add(migration.agent_id)
            actions = machine.recover(self._clock(), committed_in_store=committed)
            out.append(await self._drive(machine, actions, _Run(previous=previous)))
        return out

    async def _drive(self, machine: LiveMigrationMachine, actions: list[LiveAction], state: _Run) -> Migration:
        try:
            try:
                self._persist(machine)
                await self._steps(machine, actions, state)
            except Exception as exc:
                log.exception("migration %s: aborted", machine.migration.id)
                await self._steps(machine, machine.abort(f"{type(exc).__name__}: {exc}"[:300], self._clock()),
                                  state, strict=False)
        except BaseException as exc:
            # A cancellation mid-protocol (the balancer stops): leave the record truthful, never a
            # silent loss; recovery after the restart resumes or rolls back from the persisted phase.
            if not machine.done:
                machine.migration.error = f"{machine.migration.error}; aborted: {exc!r}".lstrip("; ")
                if not machine.committed:
                    self._quietly(lambda: self._restore_row(state.previous))
                    self._release_target(machine.migration)
                self._quietly(lambda: self._store.put_migration(machine.migration))
            raise
        finally:
            self.in_progress.discard(machine.migration.agent_id)
        return machine.migration

    async def _steps(self, machine: LiveMigrationMachine, actions: list[LiveAction], state: _Run, *,
                     strict: bool = True) -> None:
        """Execute ``actions`` and what the machine answers, until Finish. ``strict=False`` (an
        abort): a store that keeps failing is logged, and the rollback goes on regardless."""
        actions = list(actions)
        while actions:
            action = actions.pop(0)
            if isinstance(action, Finish):
                if strict:
                    self._finish(machine, action.outcome, state)
                else:
                    self._quietly(functools.partial(self._finish, machine, action.outcome, state))
                return
            event = await self._execute(action, machine.migration, state)
            actions.extend(machine.handle(event, self._clock()))
            if strict:
                self._persist(machine)
            else:
                self._quietly(lambda: self._persist(machine))

    def _quietly(self, write: Callable[[], object]) -> None:
        try:
            write()
        except Exception:
            log.exception("migration: a write failed while rolling back; going on")

    async def _execute(self, action: LiveAction, m: Migration, state: _Run) -> Event:
        try:
            moved, dirty = await self._perform(action, m, state)
        except Exception as exc:  # noqa: BLE001 - any failure of a step (a store error too) is that step's
            log.warning("migration %s: %s failed: %s", m.id, action.step, exc)
            return StepFailed(action.step, f"{type(exc).__name__}: {exc}"[:500])
        if isinstance(action, Freeze) and state.frozen is not None:
            return StepSucceeded(action.step, moved, dirty, frozen_at=state.frozen.frozen_at,
                                 interrupted_seq=state.frozen.interrupted_seq)
        return StepSucceeded(action.step, moved, dirty)

    async def _perform(self, action: LiveAction, m: Migration, state: _Run) -> tuple[int, int]:
        """Do ``action``; return (bytes moved, bytes still dirty). Raise to report a failure."""
        if isinstance(action, Prepare):
            agent = state.previous.model_copy(update={
                "epoch": action.epoch_to, "cluster_id": action.cluster_id, "status": AgentStatus.PENDING,
                "status_reason": "importing", "node_id": "", "gpu_ids": []})
            await self._gateway(action.cluster_id).prepare(agent).result(PREPARE_TIMEOUT_S)
            return 0, 0
        if isinstance(action, PreCopy):
            report = await self._stream(m, TransferMode.FULL if action.round == 1 else TransferMode.CHANGES)
            return report.bytes_moved, report.dirty_bytes
        if isinstance(action, Freeze):
            state.frozen = await self._freeze(action, m)
            return 0, 0
        if isinstance(action, Delta):
            report = await self._stream(m, TransferMode.FINAL)
            return report.bytes_moved, 0
        if isinstance(action, Activate):
            there = await self._gateway(action.cluster_id).activate(action.agent_id, epoch=action.epoch_to
                                                                     ).result(PREPARE_TIMEOUT_S)
            if (there.id, there.epoch, there.status) != (action.agent_id, action.epoch_to, AgentStatus.RUNNING):
                raise FailedPrecondition(f"the activated copy answers id={there.id} epoch={there.epoch} "
                                         f"status={there.status.value}, expected epoch {action.epoch_to} running")
            state.verified = there
            return 0, 0
        if isinstance(action, Commit):
            self._commit(action, state, home_after_move(state.previous, m))
            return 0, 0
        if isinstance(action, KillSource):
            await self._gateway(action.cluster_id).kill(action.agent_id, epoch=action.epoch_from,
                                                        reason=KILL_REASON_MIGRATED).result(STEP_TIMEOUT_S)
            return 0, 0
        if isinstance(action, Resume):
            await self._gateway(action.cluster_id).resume(action.agent_id, epoch=m.epoch_from).result(STEP_TIMEOUT_S)
            return 0, 0
        if isinstance(action, DeleteTarget):
            try:
                await self._gateway(action.cluster_id).kill(action.agent_id, epoch=action.epoch_to,
                                                            reason="migration rolled back").result(STEP_TIMEOUT_S)
            except (AgentNotFound, StaleEpoch):
                pass  # no partial copy at epoch_to there: nothing to delete
            return 0, 0
        raise ValueError(f"unknown migration action {action!r}")

    async def _freeze(self, action: Freeze, m: Migration) -> FreezeReport:
        """The freeze, one action on its own, as the record's ``busy`` says (WAIT: at the first idle
        moment; INTERRUPT: the running command is stopped); new commands wait from then on. The call
        may take the freeze's own wait (``busy_timeout_s`` or the grace) plus ``FREEZE_TIMEOUT_S``."""
        options = FreezeOptions(busy=m.busy, busy_timeout_s=m.busy_timeout_s, grace_s=self.interrupt_grace_s,
                                target=m.target)
        wait_s = self.interrupt_grace_s if m.busy is BusyPolicy.INTERRUPT else m.busy_timeout_s
        return await self._gateway(action.cluster_id).freeze(
            action.agent_id, epoch=m.epoch_from, options=options).result(FREEZE_TIMEOUT_S + wait_s)

    async def _stream(self, m: Migration, mode: TransferMode) -> TransferReport:
        """One workdir stream, source -> target, as a pipeline of chunk objects: each piece the
        source's streaming generator yields is pushed, as an object ref, to the target (Ray
        resolves it there); this process never reads a piece."""
        target = self._gateway(m.target)
        stream_id = await target.receive_open(m.agent_id, epoch=m.epoch_to).result(STEP_TIMEOUT_S)
        source = self._gateway(m.source).send(m.agent_id, mode, epoch=m.epoch_from)
        try:
            async for ref in source.refs():
                await target.push(stream_id, ref).result(PIECE_TIMEOUT_S)
            return await target.receive_close(stream_id).result(APPLY_TIMEOUT_S)
        except BaseException:
            source.cancel()
            with contextlib.suppress(GodelError):
                await target.receive_close(stream_id, abort=True).result(STEP_TIMEOUT_S)
            raise

    def _commit(self, action: Commit, state: _Run, home: str) -> None:
        """THE commit point: the agent row now names the target and ``epoch_to`` -- written only
        over the migrating row; anything else there (a kill, a failure) wins and the move rolls back."""
        there = state.verified
        row = state.previous.model_copy(update={
            "cluster_id": action.cluster_id, "epoch": action.epoch_to, "status": AgentStatus.RUNNING,
            "status_reason": "", "home_cluster_id": home, "node_id": there.node_id if there else "",
            "gpu_ids": list(there.gpu_ids) if there else []})
        if not self._table.replace(_migrating(state.previous), row):
            now = self._table.get(action.agent_id)
            where = f"{now.status.value} on {now.cluster_id} at epoch {now.epoch}" if now else "gone"
            raise FailedPrecondition(f"agent {action.agent_id} changed while it migrated (now {where}): "
                                     "the move is abandoned", agent_id=action.agent_id)

    def _restore_row(self, previous: Agent) -> None:
        current = self._table.get(previous.id)
        if current is not None and current.cluster_id == previous.cluster_id and current.status is AgentStatus.MIGRATING:
            self._table.replace(current, previous)

    def _release_target(self, m: Migration) -> None:
        row = self._table.get(m.agent_id)
        if row is None or row.cluster_id != m.target or row.status.is_final:
            self._ledger.release(m.target, m.agent_id, self._clock())

    def _persist(self, machine: LiveMigrationMachine) -> None:
        m = machine.migration
        self._store.put_migration(m)
        stamp = m.phases[-1]
        cluster = m.target if machine.committed else m.source
        data = {"migration_id": m.id, "source": m.source, "target": m.target, "bytes": str(m.bytes_moved)}
        if m.error:
            data["error"] = m.error[:300]
        self._emit(EventKind.MIGRATION, f"migration.{stamp.phase.value}", cluster, m.agent_id, **data)

    def _finish(self, machine: LiveMigrationMachine, outcome: MigrationPhase, state: _Run) -> None:
        m = machine.migration  # downtime_s: as the machine defined it (core.live_migration), never rewritten here
        if outcome is MigrationPhase.ROLLED_BACK:
            self._restore_row(state.previous)
            self._release_target(m)
        self._store.put_migration(m)
        metrics.record_migration(outcome.value, m.downtime_s)
        log.info("migration %s of %s %s -> %s: %s (%d bytes, downtime %s s)%s", m.id, m.agent_id, m.source,
                 m.target, outcome.value, m.bytes_moved, m.downtime_s, f": {m.error}" if m.error else "")

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()


class _Run:
    """What one migration carries between its steps."""

    def __init__(self, previous: Agent) -> None:
        self.previous = previous
        self.verified: Agent | None = None
        self.frozen: FreezeReport | None = None  # the freeze's report (when the source froze, what it stopped)


__all__ = ["AUTOMATIC_MOVE_REASONS", "COOLDOWN_ENV", "LIVE_MOVE_REASONS", "MIGRATION_COOLDOWN_S", "MigrationExecutor", "cooldown_from_env", "home_after_move"]
