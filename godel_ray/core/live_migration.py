"""Live migration, protocol version 2, as a pure state machine (no ray, no grpc, no clock).

validate -> prepare -> pre-copy (rounds) -> freeze -> delta -> activate -> commit -> kill source.
Version 1 (gone) froze first and copied everything frozen; here the target is prepared and the
bulk of the bytes move while the source keeps running, so the downtime is the freeze, the delta
and the activation only. The shell (``control.migrator``)
executes each action in order and reports each outcome with ``handle`` (the ``StepSucceeded``/
``StepFailed`` events and the ``Freeze``/``Commit``/``KillSource``/``Resume``/``DeleteTarget``/``Finish``
actions of ``core.migration``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

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
)
from godel_ray.errors import FailedPrecondition
from godel_ray.models import Migration, MigrationPhase, PhaseStamp

DELTA_ROUND_BYTES = 64 * 1024 * 1024  # dirty bytes above this after a round: another pre-copy round
MAX_PRECOPY_ROUNDS = 4  # never more rounds than this, however busy the workdir (no endless chase)


@dataclass(frozen=True)
class Prepare:
    """Target: create the agent at ``epoch_to`` in an importing state (resources held, a staging
    directory, a worker started; from the warm pool when one fits). Outside the downtime."""

    step: ClassVar[str] = "prepare"
    agent_id: str
    cluster_id: str
    epoch_to: int


@dataclass(frozen=True)
class PreCopy:
    """Source -> target, source running: stream the workdir (round 1) or what changed since the
    last round's manifest (round > 1) into the staging directory. Reports ``bytes_moved`` and
    ``dirty_bytes`` (changed since this round's manifest)."""

    step: ClassVar[str] = "pre_copy"
    agent_id: str
    source: str
    target: str
    round: int


@dataclass(frozen=True)
class Delta:
    """Source -> target, source frozen: what changed, appeared or vanished since the manifest (by
    size, mtime_ns, ctime_ns, inode), and the journal."""

    step: ClassVar[str] = "delta"
    agent_id: str
    source: str
    target: str


@dataclass(frozen=True)
class Activate:
    """Target: rename staging to the workdir and run at ``epoch_to``; answers as running there."""

    step: ClassVar[str] = "activate"
    agent_id: str
    cluster_id: str
    epoch_to: int


LiveAction = Prepare | PreCopy | Freeze | Delta | Activate | Commit | KillSource | Resume | DeleteTarget | Finish

_FINAL = frozenset({MigrationPhase.COMPLETED, MigrationPhase.ROLLED_BACK, MigrationPhase.FAILED})
_BYTES_STEPS = frozenset({PreCopy.step, Delta.step})


class LiveMigrationMachine:
    """Protocol v2: ``start``/``handle(event)`` -> actions, and nothing else.

    INVARIANTS (exactly-once move, short downtime):

    * Happy path: Prepare -> PreCopy(1) [-> PreCopy(2..n)] -> Freeze -> Delta -> Activate ->
      Commit -> KillSource -> Finish(COMPLETED). One action is outstanding at a time.
    * Pre-copy rounds: after round k the shell reports ``dirty_bytes``; another round follows when
      it is over ``delta_round_bytes`` and k < ``max_rounds``; otherwise the source is frozen. So
      the source is never frozen before a whole round reached the target, and the chase ends.
    * Before Freeze the source serves commands as usual; from Freeze to Commit new commands wait.
      The target's copy is never reachable before Activate, and never the agent before Commit.
    * THE COMMIT POINT is ``Commit`` succeeding: the location switch in the store, written only
      over the row the migration started from (a racing kill or failover wins: the commit fails
      and the move rolls back). Before it the source copy is the agent; after it the target's is.
    * Any failure BEFORE the commit point rolls back: ROLLING_BACK, then ``DeleteTarget`` once
      Prepare was requested (staging, partial copy and held resources go), then ``Resume`` once
      Freeze was requested (resuming an unfrozen agent is a no-op), then ROLLED_BACK when both are
      reported (a failure of either is noted in ``error``, never retried here).
    * AFTER the commit point nothing rolls back: a failed ``KillSource`` is noted and the
      migration COMPLETES; the stale source is fenced by its older epoch.
    * An event that is not the one awaited raises ``FailedPrecondition``; nothing changes.
    * ``downtime_s`` = Commit succeeded - the moment the source froze: ``frozen_at`` when the
      freeze reported it (a busy agent keeps serving commands until it is idle, so that wait is not
      downtime), else the freeze request (FREEZING entered); the Freeze success also records
      ``interrupted_seq`` (INTERRUPT: the stopped command's journal entry). ``bytes_moved`` sums
      every pre-copy round and the delta.
    * ``recover`` after a balancer restart, from any persisted phase: committed in the store (or
      CLEANING_UP) -> KillSource; otherwise the rollback above (VALIDATING: nothing to undo).
    * ``abort`` when the shell itself cannot carry on (a store error, a bug): before the commit
      point the same rollback as a failed step (DeleteTarget once prepared, Resume once frozen:
      the source never stays frozen); during a rollback, the undo steps still awaited, again;
      after the commit point it COMPLETES with the reason noted (the source is fenced by epoch).
    """

    def __init__(self, migration: Migration, now: float, *, delta_round_bytes: int = DELTA_ROUND_BYTES,
                 max_rounds: int = MAX_PRECOPY_ROUNDS) -> None:
        if max_rounds < 1:
            raise FailedPrecondition("a live migration needs at least one pre-copy round")
        self.migration = migration
        if migration.epoch_to <= migration.epoch_from:
            migration.epoch_to = migration.epoch_from + 1
        self.delta_round_bytes = delta_round_bytes
        self.max_rounds = max_rounds
        self.round = 0
        self._awaiting: set[str] = set()
        if not migration.phases:
            migration.started_at = now
            migration.phases.append(PhaseStamp(phase=migration.phase, at=now))

    @property
    def done(self) -> bool:
        return self.migration.phase in _FINAL

    @property
    def committed(self) -> bool:
        return self._reached(MigrationPhase.CLEANING_UP)

    @property
    def awaiting(self) -> frozenset[str]:
        return frozenset(self._awaiting)

    def start(self, now: float) -> list[LiveAction]:
        if self.migration.phase is not MigrationPhase.VALIDATING or len(self.migration.phases) > 1:
            raise FailedPrecondition(f"migration {self.migration.id} already started "
                                     f"(phase {self.migration.phase.value})", agent_id=self.migration.agent_id)
        return self._advance(MigrationPhase.PREPARING, now)

    def handle(self, event: Event, now: float) -> list[LiveAction]:
        phase = self.migration.phase
        if event.step not in self._awaiting:
            waiting = ", ".join(sorted(self._awaiting)) or "nothing"
            raise FailedPrecondition(
                f"migration {self.migration.id}: unexpected {type(event).__name__}({event.step!r}) in phase "
                f"{phase.value}; waiting for {waiting}", agent_id=self.migration.agent_id)
        self._awaiting.discard(event.step)
        if phase is MigrationPhase.ROLLING_BACK:
            if isinstance(event, StepFailed):
                self._note(f"{event.step} failed during rollback: {event.error}")
            return self._finish(MigrationPhase.ROLLED_BACK, now) if not self._awaiting else []
        if isinstance(event, StepFailed):
            if phase is MigrationPhase.CLEANING_UP:
                self._note(f"kill_source on {self.migration.source} failed ({event.error}); the stale copy is "
                           f"fenced by epoch {self.migration.epoch_to} and removed later")
                return self._finish(MigrationPhase.COMPLETED, now)
            self._note(f"{event.step} failed: {event.error}")
            return self._roll_back(now)
        assert isinstance(event, StepSucceeded)
        if event.step in _BYTES_STEPS:
            self.migration.bytes_moved += max(event.bytes_moved, 0)
        if phase is MigrationPhase.PRECOPYING:
            if event.dirty_bytes > self.delta_round_bytes and self.round < self.max_rounds:
                return self._advance(MigrationPhase.PRECOPYING, now)
            return self._advance(MigrationPhase.FREEZING, now)
        if phase is MigrationPhase.FREEZING:
            self.migration.frozen_at = event.frozen_at
            self.migration.interrupted_seq = event.interrupted_seq
        next_phase = _NEXT[phase]
        if next_phase is MigrationPhase.CLEANING_UP:
            self._record_downtime(now)
        if next_phase is MigrationPhase.COMPLETED:
            return self._finish(MigrationPhase.COMPLETED, now)
        return self._advance(next_phase, now)

    def recover(self, now: float, *, committed_in_store: bool) -> list[LiveAction]:
        phase = self.migration.phase
        if phase in _FINAL:
            return []
        if committed_in_store or phase is MigrationPhase.CLEANING_UP:
            if phase is not MigrationPhase.CLEANING_UP:
                self._record_downtime(now)
            return self._advance(MigrationPhase.CLEANING_UP, now, stamp=phase is not MigrationPhase.CLEANING_UP)
        self._note(f"balancer restarted during {phase.value}")
        if phase is MigrationPhase.VALIDATING:
            return self._finish(MigrationPhase.ROLLED_BACK, now)
        return self._roll_back(now, stamp=phase is not MigrationPhase.ROLLING_BACK)

    def abort(self, reason: str, now: float) -> list[LiveAction]:
        """The shell could not go on (``reason``): the actions that leave no copy frozen or half made."""
        if self.done:
            return []
        self._note(f"aborted: {reason}")
        if self.committed:
            return self._finish(MigrationPhase.COMPLETED, now)
        if self.migration.phase is MigrationPhase.ROLLING_BACK:
            pending = [a for a in self._rollback_actions() if a.step in self._awaiting]
            if not pending:
                return self._finish(MigrationPhase.ROLLED_BACK, now)
            self._awaiting = {a.step for a in pending}
            return list(pending)
        return self._roll_back(now)

    # --- internals --------------------------------------------------------------------------

    def _action(self, phase: MigrationPhase) -> LiveAction:
        m = self.migration
        if phase is MigrationPhase.PRECOPYING:
            self.round += 1
            return PreCopy(m.agent_id, m.source, m.target, self.round)
        actions: dict[MigrationPhase, LiveAction] = {
            MigrationPhase.PREPARING: Prepare(m.agent_id, m.target, m.epoch_to),
            MigrationPhase.FREEZING: Freeze(m.agent_id, m.source),
            MigrationPhase.DELTA: Delta(m.agent_id, m.source, m.target),
            MigrationPhase.ACTIVATING: Activate(m.agent_id, m.target, m.epoch_to),
            MigrationPhase.COMMITTING: Commit(m.agent_id, m.target, m.epoch_to),
            MigrationPhase.CLEANING_UP: KillSource(m.agent_id, m.source, m.epoch_from),
        }
        return actions[phase]

    def _advance(self, phase: MigrationPhase, now: float, *, stamp: bool = True) -> list[LiveAction]:
        if stamp:
            self._set_phase(phase, now)
        action = self._action(phase)
        self._awaiting = {action.step}
        return [action]

    def _rollback_actions(self) -> list[LiveAction]:
        m = self.migration
        actions: list[LiveAction] = []
        if self._reached(MigrationPhase.PREPARING):
            actions.append(DeleteTarget(m.agent_id, m.target, m.epoch_to))
        if self._reached(MigrationPhase.FREEZING):
            actions.append(Resume(m.agent_id, m.source))
        return actions

    def _roll_back(self, now: float, *, stamp: bool = True) -> list[LiveAction]:
        actions = self._rollback_actions()
        if stamp:
            self._set_phase(MigrationPhase.ROLLING_BACK, now)
        if not actions:
            return self._finish(MigrationPhase.ROLLED_BACK, now)
        self._awaiting = {a.step for a in actions}
        return actions

    def _finish(self, outcome: MigrationPhase, now: float) -> list[LiveAction]:
        self._set_phase(outcome, now)
        self._awaiting = set()
        self.migration.finished_at = now
        return [Finish(outcome)]

    def _set_phase(self, phase: MigrationPhase, now: float) -> None:
        self.migration.phase = phase
        self.migration.phases.append(PhaseStamp(phase=phase, at=now))

    def _reached(self, phase: MigrationPhase) -> bool:
        return any(stamp.phase is phase for stamp in self.migration.phases)

    def _record_downtime(self, committed_at: float) -> None:
        requested = [s.at for s in self.migration.phases if s.phase is MigrationPhase.FREEZING]
        frozen_at = self.migration.frozen_at if self.migration.frozen_at is not None else (
            requested[0] if requested else None)
        self.migration.downtime_s = None if frozen_at is None else max(0.0, committed_at - frozen_at)

    def _note(self, message: str) -> None:
        m = self.migration
        m.error = f"{m.error}; {message}" if m.error else message


_NEXT: dict[MigrationPhase, MigrationPhase] = {
    MigrationPhase.PREPARING: MigrationPhase.PRECOPYING,
    MigrationPhase.FREEZING: MigrationPhase.DELTA,
    MigrationPhase.DELTA: MigrationPhase.ACTIVATING,
    MigrationPhase.ACTIVATING: MigrationPhase.COMMITTING,
    MigrationPhase.COMMITTING: MigrationPhase.CLEANING_UP,
    MigrationPhase.CLEANING_UP: MigrationPhase.COMPLETED,
}

__all__ = ["DELTA_ROUND_BYTES", "MAX_PRECOPY_ROUNDS", "Activate", "Delta", "LiveAction", "LiveMigrationMachine",
           "PreCopy", "Prepare"]
