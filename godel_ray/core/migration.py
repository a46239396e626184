"""Live migration of an agent between clusters, as a pure state machine.

Pure: no ray, no grpc, no clock (``now`` is passed in). ``validate_migration`` refuses a move
before anything happens; ``MigrationMachine`` turns step outcomes (events) into the next steps
(actions), in the style of Dask's worker state machine. The balancer is the shell: it executes
each action in order, reports each outcome with ``handle``, and persists ``machine.migration``
after every call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from godel_ray.core.placement import ClusterView, no_placement_message, place
from godel_ray.errors import (
    AgentNotFound,
    AgentNotRunning,
    ClusterNotFound,
    CooldownActive,
    FailedPrecondition,
    InvalidArgument,
    MigrationInProgress,
    NoPlacement,
)
from godel_ray.models import LOCAL_CLUSTER_ID, Agent, AgentStatus, Migration, MigrationPhase, PhaseStamp


def validate_migration(agent: Agent | None, source: ClusterView, target: ClusterView | None, *, target_id: str,
                       last_attempt_at: float | None, cooldown_s: float, now: float, in_progress: bool,
                       local_id: str = LOCAL_CLUSTER_ID) -> None:
    """Refuse a migration that cannot or must not start; return None when it may.

    Checks, in order: the agent exists and is not finished; the target is registered and is not
    the source; no other migration of this agent is running; the cooldown since the last attempt
    has elapsed; the target passes placement's hard filters for this agent (active, capacity,
    GPU type, ...), by calling ``place`` with the target pinned.
    """
    if agent is None:
        raise AgentNotFound("agent not found: nothing to migrate (swarmctl agent list shows known agents)")
    if agent.status.is_final:
        raise AgentNotRunning(f"agent {agent.id} is {agent.status.value}: only a live agent can migrate",
                              agent_id=agent.id)
    if target is None:
        raise ClusterNotFound(f"target cluster {target_id!r} is not registered (swarmctl cluster list)",
                              cluster_id=target_id, agent_id=agent.id)
    source_id = source.cluster.id
    if target_id == source_id or target_id == agent.cluster_id:
        raise InvalidArgument(f"agent {agent.id} already runs on {target_id}: pick another target cluster",
                              agent_id=agent.id, cluster_id=target_id)
    if in_progress or agent.status is AgentStatus.MIGRATING:
        raise MigrationInProgress(f"agent {agent.id} is already migrating: wait for it to finish",
                                  agent_id=agent.id)
    if last_attempt_at is not None and now - last_attempt_at < cooldown_s:
        retry_after_s = cooldown_s - (now - last_attempt_at)
        raise CooldownActive(f"agent {agent.id} was migrated {now - last_attempt_at:.1f}s ago; "
                             f"retry in {retry_after_s:.1f}s", agent_id=agent.id, retry_after_s=retry_after_s)
    pinned = agent.config.model_copy(update={"cluster": target_id})
    decision = place(pinned, [target], local_id=local_id)
    if decision.chosen is None:
        raise NoPlacement(f"cannot migrate agent {agent.id} to {target_id}: "
                          + no_placement_message(decision, pinned),
                          agent_id=agent.id, cluster_id=target_id, reasons=dict(decision.rejections))


def freeze_wait_s(m: Migration, now: float) -> float | None:
    """How long ``m`` has waited so far for its source to freeze (a busy agent: until it is idle, or
    until the interrupted command stopped); None when it is not waiting for the freeze."""
    if m.phase is not MigrationPhase.FREEZING or m.frozen_at is not None:
        return None
    requested_at = next((s.at for s in reversed(m.phases) if s.phase is MigrationPhase.FREEZING), None)
    return None if requested_at is None else max(0.0, now - requested_at)


# --- actions: what the shell does, in order ------------------------------------------------------


@dataclass(frozen=True)
class Freeze:
    """Source: freeze as ``busy`` says (WAIT: at the first idle moment, serving commands until then,
    given up after ``busy_timeout_s``; INTERRUPT: stop the running command), then hold new ones."""

    step: ClassVar[str] = "freeze"
    agent_id: str
    cluster_id: str


@dataclass(frozen=True)
class Export:
    """Source: export the snapshot, by value, to the balancer."""

    step: ClassVar[str] = "export"
    agent_id: str
    cluster_id: str


@dataclass(frozen=True)
class Transfer:
    """Balancer: put the snapshot in the object store, owned by the balancer (not the source)."""

    step: ClassVar[str] = "transfer"
    agent_id: str


@dataclass(frozen=True)
class Import:
    """Target: import the snapshot as ``epoch_to``."""

    step: ClassVar[str] = "import"
    agent_id: str
    cluster_id: str
    epoch_to: int


@dataclass(frozen=True)
class Verify:
    """Target: the imported agent answers at ``epoch_to`` (and its checksum matched)."""

    step: ClassVar[str] = "verify"
    agent_id: str
    cluster_id: str
    epoch_to: int


@dataclass(frozen=True)
class Commit:
    """State store: write location ``cluster_id`` and ``epoch_to``. THE commit point."""

    step: ClassVar[str] = "commit"
    agent_id: str
    cluster_id: str
    epoch_to: int


@dataclass(frozen=True)
class KillSource:
    """Source: remove the old copy (fenced by epoch already; failure is only noted)."""

    step: ClassVar[str] = "kill_source"
    agent_id: str
    cluster_id: str
    epoch_from: int


@dataclass(frozen=True)
class Resume:
    """Rollback, source: unfreeze; idempotent (resuming an unfrozen agent is a no-op)."""

    step: ClassVar[str] = "resume"
    agent_id: str
    cluster_id: str


@dataclass(frozen=True)
class DeleteTarget:
    """Rollback, target: delete the partial copy at ``epoch_to``, if there is one."""

    step: ClassVar[str] = "delete_target"
    agent_id: str
    cluster_id: str
    epoch_to: int


@dataclass(frozen=True)
class Finish:
    """The migration is over: persist it, emit its event, release the agent. Not reported back."""

    step: ClassVar[str] = "finish"
    outcome: MigrationPhase  # COMPLETED or ROLLED_BACK


Action = Freeze | Export | Transfer | Import | Verify | Commit | KillSource | Resume | DeleteTarget | Finish


# --- events: what the shell reports --------------------------------------------------------------


@dataclass(frozen=True)
class StepSucceeded:
    step: str
    bytes_moved: int = 0
    dirty_bytes: int = 0  # protocol v2, pre-copy: bytes changed since the round's manifest (an estimate)
    frozen_at: float | None = None  # freeze: when the source actually froze (it may wait for idle first)
    interrupted_seq: int | None = None  # freeze with INTERRUPT: the journal entry of the stopped command


@dataclass(frozen=True)
class StepFailed:
    step: str
    error: str


Event = StepSucceeded | StepFailed

# the phase entered when the step awaited in a phase succeeds
_NEXT_PHASE: dict[MigrationPhase, MigrationPhase] = {
    MigrationPhase.FREEZING: MigrationPhase.EXPORTING,
    MigrationPhase.EXPORTING: MigrationPhase.TRANSFERRING,
    MigrationPhase.TRANSFERRING: MigrationPhase.IMPORTING,
    MigrationPhase.IMPORTING: MigrationPhase.VERIFYING,
    MigrationPhase.VERIFYING: MigrationPhase.COMMITTING,
    MigrationPhase.COMMITTING: MigrationPhase.CLEANING_UP,
    MigrationPhase.CLEANING_UP: MigrationPhase.COMPLETED,
}
_BYTES_STEPS = frozenset({Export.step, Transfer.step, Import.step})
_FINAL = frozenset({MigrationPhase.COMPLETED, MigrationPhase.ROLLED_BACK, MigrationPhase.FAILED})


class MigrationMachine:
    """The migration protocol: ``start``/``handle(event)`` -> actions, and nothing else.

    INVARIANTS (exactly-once move):

    * Happy path: Freeze -> Export -> Transfer -> Import(epoch_to) -> Verify -> Commit ->
      KillSource -> Finish(COMPLETED). One action is outstanding at a time; the shell reports it
      with ``StepSucceeded``/``StepFailed`` naming that action's ``step``.
    * THE COMMIT POINT is ``Commit`` succeeding: the new location and epoch written to the state
      store. Before it, the source copy is the agent; after it, the target copy is.
    * Any failure BEFORE the commit point rolls back: ROLLING_BACK, then ``DeleteTarget`` if
      ``Import`` was started (a partial copy may exist), then ``Resume`` of the source, then,
      once both are reported (success or failure, failures noted in ``error``), ROLLED_BACK and
      ``Finish(ROLLED_BACK)``. ``Resume`` is sent even when ``Freeze`` itself failed: a freeze
      that timed out may still have taken effect, and resuming an unfrozen agent is a no-op.
    * AFTER the commit point nothing rolls back: a failed ``KillSource`` is noted in ``error``
      and the migration still COMPLETES; the stale source copy is fenced by its older epoch and
      removed later by reconciliation.
    * An event that is not the one awaited (wrong step, before ``start``, after ``Finish``) is a
      bug in the shell and raises ``FailedPrecondition``; the state is left unchanged.
    * Every transition appends a ``PhaseStamp``; ``bytes_moved`` = the largest byte count
      reported by Export/Transfer/Import.
    * DOWNTIME, defined here only (the shell never rewrites it): ``downtime_s`` = Commit succeeded
      - the moment the source froze: ``frozen_at`` when the freeze reported it (a busy agent keeps
      serving commands until it is idle, so the wait for idle is not downtime), else the freeze
      request (FREEZING entered). From then on a new command waits; from the commit on, it is
      served by the target. None when the move never committed.
    * After a balancer restart, ``recover`` picks up a persisted record from its phase.
    """

    def __init__(self, migration: Migration, now: float) -> None:
        self.migration = migration
        if migration.epoch_to <= migration.epoch_from:
            migration.epoch_to = migration.epoch_from + 1
        self._awaiting: set[str] = set()
        if not migration.phases:
            migration.started_at = now
            migration.phases.append(PhaseStamp(phase=migration.phase, at=now))

    # --- the public surface -----------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.migration.phase in _FINAL

    @property
    def committed(self) -> bool:
        """True once the location switch is written: from here on the move is never undone."""
        return self._reached(MigrationPhase.CLEANING_UP)

    @property
    def awaiting(self) -> frozenset[str]:
        """The steps whose outcome the machine waits for."""
        return frozenset(self._awaiting)

    def start(self, now: float) -> list[Action]:
        if self.migration.phase is not MigrationPhase.VALIDATING or len(self.migration.phases) > 1:
            raise FailedPrecondition(f"migration {self.migration.id} already started "
                                     f"(phase {self.migration.phase.value})", agent_id=self.migration.agent_id)
        return self._advance(MigrationPhase.FREEZING, now)

    def handle(self, event: Event, now: float) -> list[Action]:
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
        if event.step in _BYTES_STEPS:
            self.migration.bytes_moved = max(self.migration.bytes_moved, event.bytes_moved)
        if event.step == Freeze.step:
            self.migration.frozen_at = event.frozen_at
            self.migration.interrupted_seq = event.interrupted_seq
        next_phase = _NEXT_PHASE[phase]
        if next_phase is MigrationPhase.CLEANING_UP:
            self._record_downtime(now)
        if next_phase is MigrationPhase.COMPLETED:
            return self._finish(MigrationPhase.COMPLETED, now)
        return self._advance(next_phase, now)

    def recover(self, now: float, *, committed_in_store: bool) -> list[Action]:
        """Continue a persisted migration after the balancer restarted; nothing was awaited then.

        ``committed_in_store``: the state store already holds the target location at ``epoch_to``
        (the crash came between writing the commit and recording it here).
        """
        phase = self.migration.phase
        if phase in _FINAL:
            return []
        if committed_in_store or phase is MigrationPhase.CLEANING_UP:
            if phase is not MigrationPhase.CLEANING_UP:
                self._record_downtime(now)
                self._set_phase(MigrationPhase.CLEANING_UP, now)
            return self._advance(MigrationPhase.CLEANING_UP, now, stamp=False)
        self._note(f"balancer restarted during {phase.value}")
        if phase is MigrationPhase.VALIDATING:
            return self._finish(MigrationPhase.ROLLED_BACK, now)
        return self._roll_back(now, stamp=phase is not MigrationPhase.ROLLING_BACK)

    # --- internals --------------------------------------------------------------------------

    def _action(self, phase: MigrationPhase) -> Action:
        m = self.migration
        actions: dict[MigrationPhase, Action] = {
            MigrationPhase.FREEZING: Freeze(m.agent_id, m.source),
            MigrationPhase.EXPORTING: Export(m.agent_id, m.source),
            MigrationPhase.TRANSFERRING: Transfer(m.agent_id),
            MigrationPhase.IMPORTING: Import(m.agent_id, m.target, m.epoch_to),
            MigrationPhase.VERIFYING: Verify(m.agent_id, m.target, m.epoch_to),
            MigrationPhase.COMMITTING: Commit(m.agent_id, m.target, m.epoch_to),
            MigrationPhase.CLEANING_UP: KillSource(m.agent_id, m.source, m.epoch_from),
        }
        return actions[phase]

    def _advance(self, phase: MigrationPhase, now: float, *, stamp: bool = True) -> list[Action]:
        if stamp:
            self._set_phase(phase, now)
        action = self._action(phase)
        self._awaiting = {action.step}
        return [action]

    def _roll_back(self, now: float, *, stamp: bool = True) -> list[Action]:
        m = self.migration
        actions: list[Action] = []
        if self._reached(MigrationPhase.IMPORTING):
            actions.append(DeleteTarget(m.agent_id, m.target, m.epoch_to))
        if self._reached(MigrationPhase.FREEZING):
            actions.append(Resume(m.agent_id, m.source))
        if stamp:
            self._set_phase(MigrationPhase.ROLLING_BACK, now)
        if not actions:
            return self._finish(MigrationPhase.ROLLED_BACK, now)
        self._awaiting = {a.step for a in actions}
        return actions

    def _finish(self, outcome: MigrationPhase, now: float) -> list[Action]:
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
        # FREEZING is entered when the freeze is requested; the source says when it froze (at idle).
        requested_at = next((s.at for s in self.migration.phases if s.phase is MigrationPhase.FREEZING), None)
        frozen_at = self.migration.frozen_at if self.migration.frozen_at is not None else requested_at
        self.migration.downtime_s = None if frozen_at is None else max(0.0, committed_at - frozen_at)

    def _note(self, text: str) -> None:
        self.migration.error = f"{self.migration.error}; {text}" if self.migration.error else text


__all__ = [
    "Action", "Commit", "DeleteTarget", "Event", "Export", "Finish", "Freeze", "Import", "KillSource",
    "MigrationMachine", "Resume", "StepFailed", "StepSucceeded", "Transfer", "Verify", "freeze_wait_s",
    "validate_migration",
]
