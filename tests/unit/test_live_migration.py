"""Protocol v2 (core/live_migration.py) as a pure state machine: happy path, pre-copy rounds, every
rollback path, and recovery from every phase after a balancer restart. A fake clock; no Ray."""

from __future__ import annotations

import pytest

from godel_ray.core.live_migration import Activate, Delta, LiveAction, LiveMigrationMachine, PreCopy, Prepare
from godel_ray.core.migration import Commit, DeleteTarget, Finish, Freeze, KillSource, Resume, StepFailed, StepSucceeded
from godel_ray.errors import FailedPrecondition
from godel_ray.models import Migration, MigrationPhase

P = MigrationPhase
AGENT, SOURCE, TARGET, T0 = "ag-1", "local", "east", 1000.0
ROUND = 100  # delta_round_bytes in these tests


class Driver:
    def __init__(self, max_rounds: int = 3) -> None:
        self.now = T0
        self.machine = LiveMigrationMachine(Migration(agent_id=AGENT, source=SOURCE, target=TARGET, epoch_from=3),
                                            T0, delta_round_bytes=ROUND, max_rounds=max_rounds)
        self.log: list[LiveAction] = []

    def tick(self) -> float:
        self.now += 1.0
        return self.now

    def start(self) -> list[LiveAction]:
        return self._rec(self.machine.start(self.tick()))

    def ok(self, step: str, moved: int = 0, dirty: int = 0) -> list[LiveAction]:
        return self._rec(self.machine.handle(StepSucceeded(step, moved, dirty), self.tick()))

    def fail(self, step: str) -> list[LiveAction]:
        return self._rec(self.machine.handle(StepFailed(step, f"{step} broke"), self.tick()))

    def _rec(self, actions: list[LiveAction]) -> list[LiveAction]:
        self.log.extend(actions)
        return actions

    @property
    def phases(self) -> list[MigrationPhase]:
        return [s.phase for s in self.machine.migration.phases]


def test_the_happy_path_copies_before_the_freeze_and_counts_downtime_from_it() -> None:
    d = Driver()
    assert d.start() == [Prepare(AGENT, TARGET, 4)]
    assert d.ok("prepare") == [PreCopy(AGENT, SOURCE, TARGET, 1)]
    assert d.ok("pre_copy", moved=1000, dirty=10) == [Freeze(AGENT, SOURCE)]
    assert d.ok("freeze") == [Delta(AGENT, SOURCE, TARGET)]
    assert d.ok("delta", moved=10) == [Activate(AGENT, TARGET, 4)]
    assert d.ok("activate") == [Commit(AGENT, TARGET, 4)]
    assert d.ok("commit") == [KillSource(AGENT, SOURCE, 3)]
    assert d.ok("kill_source") == [Finish(P.COMPLETED)]
    m = d.machine.migration
    assert d.phases == [P.VALIDATING, P.PREPARING, P.PRECOPYING, P.FREEZING, P.DELTA, P.ACTIVATING, P.COMMITTING,
                        P.CLEANING_UP, P.COMPLETED]
    freeze_at = next(s.at for s in m.phases if s.phase is P.FREEZING)
    commit_ok_at = next(s.at for s in m.phases if s.phase is P.CLEANING_UP)
    assert m.downtime_s == commit_ok_at - freeze_at == 4.0  # freeze, delta, activate, commit
    assert m.bytes_moved == 1010 and m.error == "" and d.machine.done and d.machine.committed


def test_a_busy_workdir_gets_more_rounds_but_never_more_than_the_bound() -> None:
    d = Driver(max_rounds=3)
    d.start()
    d.ok("prepare")
    assert d.ok("pre_copy", moved=500, dirty=ROUND + 1) == [PreCopy(AGENT, SOURCE, TARGET, 2)]
    assert d.ok("pre_copy", moved=200, dirty=ROUND + 1) == [PreCopy(AGENT, SOURCE, TARGET, 3)]
    assert d.ok("pre_copy", moved=200, dirty=10 * ROUND) == [Freeze(AGENT, SOURCE)]  # the chase ends
    assert d.machine.migration.bytes_moved == 900
    assert d.phases.count(P.PRECOPYING) == 3


ROLLBACKS = [
    # (steps that succeed first, the step that fails, the rollback it must send)
    ([], "prepare", ["delete_target"]),
    (["prepare"], "pre_copy", ["delete_target"]),
    (["prepare", "pre_copy"], "freeze", ["delete_target", "resume"]),
    (["prepare", "pre_copy", "freeze"], "delta", ["delete_target", "resume"]),
    (["prepare", "pre_copy", "freeze", "delta"], "activate", ["delete_target", "resume"]),
    (["prepare", "pre_copy", "freeze", "delta", "activate"], "commit", ["delete_target", "resume"]),  # a kill won
]


@pytest.mark.parametrize(("before", "failing", "undo"), ROLLBACKS, ids=[r[1] for r in ROLLBACKS])
@pytest.mark.parametrize("undo_fails", [False, True])
def test_every_failure_before_the_commit_rolls_back_exactly_what_was_done(
        before: list[str], failing: str, undo: list[str], undo_fails: bool) -> None:
    d = Driver()
    d.start()
    for step in before:
        d.ok(step)
    actions = d.fail(failing)
    assert [a.step for a in actions] == undo
    assert d.phases[-1] is P.ROLLING_BACK and not d.machine.done
    assert f"{failing} failed: {failing} broke" in d.machine.migration.error
    for i, step in enumerate(undo):
        last = d.fail(step) if undo_fails else d.ok(step)
        assert last == ([Finish(P.ROLLED_BACK)] if i == len(undo) - 1 else [])
    m = d.machine.migration
    assert m.phase is P.ROLLED_BACK and m.downtime_s is None and not d.machine.committed
    assert all(isinstance(a, DeleteTarget | Resume) for a in actions)
    if undo_fails:
        assert all(f"{step} failed during rollback" in m.error for step in undo)


def test_after_the_commit_a_failed_kill_of_the_source_still_completes() -> None:
    d = Driver()
    d.start()
    for step in ("prepare", "pre_copy", "freeze", "delta", "activate", "commit"):
        d.ok(step)
    assert d.fail("kill_source") == [Finish(P.COMPLETED)]
    assert "fenced by epoch 4" in d.machine.migration.error and d.machine.migration.phase is P.COMPLETED


def test_an_unexpected_event_is_refused_and_changes_nothing() -> None:
    d = Driver()
    d.start()
    before = d.machine.migration.model_copy(deep=True)
    with pytest.raises(FailedPrecondition, match="waiting for prepare"):
        d.machine.handle(StepSucceeded("freeze"), d.tick())
    assert d.machine.migration == before
    with pytest.raises(FailedPrecondition, match="already started"):
        d.machine.start(d.tick())


RECOVERY = [
    (P.VALIDATING, [], ["finish"]),
    (P.PREPARING, ["prepare"], ["delete_target"]),
    (P.PRECOPYING, ["prepare", "pre_copy"], ["delete_target"]),
    (P.FREEZING, ["prepare", "pre_copy", "freeze"], ["delete_target", "resume"]),
    (P.DELTA, ["prepare", "pre_copy", "freeze", "delta"], ["delete_target", "resume"]),
    (P.ACTIVATING, ["prepare", "pre_copy", "freeze", "delta", "activate"], ["delete_target", "resume"]),
    (P.COMMITTING, ["prepare", "pre_copy", "freeze", "delta", "activate", "commit"], ["delete_target", "resume"]),
]


def _persisted_at(steps: list[str]) -> Migration:
    """The record as the shell had persisted it when the balancer died awaiting the last of ``steps``."""
    d = Driver()
    d.start()
    for step in steps[:-1]:
        d.ok(step)
    return d.machine.migration.model_copy(deep=True)


@pytest.mark.parametrize(("phase", "steps", "expected"), RECOVERY, ids=[r[0].value for r in RECOVERY])
def test_recovery_from_every_phase_before_the_commit_rolls_back(
        phase: MigrationPhase, steps: list[str], expected: list[str]) -> None:
    record = _persisted_at(steps) if steps else Migration(agent_id=AGENT, source=SOURCE, target=TARGET, epoch_from=3)
    assert record.phase is phase
    machine = LiveMigrationMachine(record, T0 + 50)
    actions = machine.recover(T0 + 50, committed_in_store=False)
    assert [a.step for a in actions] == expected
    assert "balancer restarted during" in machine.migration.error
    for action in actions:
        if not isinstance(action, Finish):
            actions = machine.handle(StepSucceeded(action.step), T0 + 51)
    assert machine.migration.phase is P.ROLLED_BACK


@pytest.mark.parametrize("phase_steps", [RECOVERY[-1][1], RECOVERY[-1][1] + ["kill_source"]], ids=["committing",
                                                                                                  "cleaning_up"])
def test_recovery_after_the_commit_only_cleans_up(phase_steps: list[str]) -> None:
    record = _persisted_at(phase_steps)
    machine = LiveMigrationMachine(record, T0 + 50)
    assert machine.recover(T0 + 50, committed_in_store=True) == [KillSource(AGENT, SOURCE, 3)]
    assert machine.migration.downtime_s is not None
    assert machine.handle(StepSucceeded("kill_source"), T0 + 51) == [Finish(P.COMPLETED)]


def test_recovery_of_a_rollback_in_progress_finishes_it_and_a_finished_record_is_left_alone() -> None:
    d = Driver()
    d.start()
    d.ok("prepare")
    d.ok("pre_copy")
    d.fail("freeze")
    record = d.machine.migration.model_copy(deep=True)
    machine = LiveMigrationMachine(record, T0 + 50)
    assert [a.step for a in machine.recover(T0 + 50, committed_in_store=False)] == ["delete_target", "resume"]
    assert machine.migration.phases[-1].phase is P.ROLLING_BACK
    assert [s.phase for s in machine.migration.phases].count(P.ROLLING_BACK) == 1
    machine.handle(StepSucceeded("delete_target"), T0 + 51)
    assert machine.handle(StepFailed("resume", "gone"), T0 + 52) == [Finish(P.ROLLED_BACK)]
    assert LiveMigrationMachine(machine.migration, T0 + 60).recover(T0 + 60, committed_in_store=False) == []


def test_an_abort_before_the_commit_resumes_the_frozen_source_and_deletes_the_target() -> None:
    """A store error in the shell (not a failed step) rolls back like one: the source never stays frozen."""
    d = Driver()
    d.start()
    d.ok("prepare")
    d.ok("pre_copy", moved=10, dirty=0)
    d.ok("freeze")
    actions = d.machine.abort("OperationalError('database is locked')", d.tick())
    assert actions == [DeleteTarget(AGENT, TARGET, 4), Resume(AGENT, SOURCE)]
    assert d.machine.migration.phase is P.ROLLING_BACK and "database is locked" in (d.machine.migration.error or "")
    d.ok("delete_target")
    assert d.ok("resume") == [Finish(P.ROLLED_BACK)]
    # an abort during the rollback re-issues only what is still awaited
    e = Driver()
    e.start()
    e.ok("prepare")
    e.ok("pre_copy")
    e.ok("freeze")
    e.fail("delta")
    e.ok("delete_target")
    assert e.machine.abort("again", e.tick()) == [Resume(AGENT, SOURCE)]
    assert e.ok("resume") == [Finish(P.ROLLED_BACK)]


def test_an_abort_after_the_commit_completes_and_one_after_the_end_does_nothing() -> None:
    d = Driver()
    d.start()
    for step in ("prepare", "pre_copy", "freeze", "delta", "activate", "commit"):
        d.ok(step)
    assert d.machine.abort("boom", d.tick()) == [Finish(P.COMPLETED)]
    assert d.machine.abort("later", d.tick()) == []
