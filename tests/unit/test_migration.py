"""The migration protocol as a pure state machine, with a fake clock; and validate_migration."""

from __future__ import annotations

import pytest

from godel_ray.core.migration import (
    Action,
    Commit,
    DeleteTarget,
    Export,
    Finish,
    Freeze,
    Import,
    KillSource,
    MigrationMachine,
    Resume,
    StepFailed,
    StepSucceeded,
    Transfer,
    Verify,
    validate_migration,
)
from godel_ray.core.placement import ClusterView
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
from godel_ray.models import (
    Agent,
    AgentStatus,
    Cluster,
    ClusterCapabilities,
    ClusterHealthState,
    ClusterStatus,
    Migration,
    MigrationPhase,
    SpawnConfig,
)

AGENT = "ag-1"
SOURCE = "local"
TARGET = "gpu-east"
T0 = 1000.0
P = MigrationPhase


def new_machine() -> MigrationMachine:
    return MigrationMachine(Migration(agent_id=AGENT, source=SOURCE, target=TARGET, epoch_from=3), T0)


class Driver:
    """Plays the shell: runs the machine with a fake clock, one second per step."""

    def __init__(self) -> None:
        self.now = T0
        self.machine = new_machine()
        self.log: list[Action] = []

    def start(self) -> list[Action]:
        return self._record(self.machine.start(self.tick()))

    def ok(self, step: str, bytes_moved: int = 0) -> list[Action]:
        return self._record(self.machine.handle(StepSucceeded(step, bytes_moved), self.tick()))

    def fail(self, step: str, error: str = "boom") -> list[Action]:
        return self._record(self.machine.handle(StepFailed(step, error), self.tick()))

    def tick(self) -> float:
        self.now += 1.0
        return self.now

    def _record(self, actions: list[Action]) -> list[Action]:
        self.log.extend(actions)
        return actions

    @property
    def migration(self) -> Migration:
        return self.machine.migration

    def phases(self) -> list[MigrationPhase]:
        return [stamp.phase for stamp in self.migration.phases]


FORWARD_STEPS = ["freeze", "export", "transfer", "import", "verify", "commit"]


def run_until(driver: Driver, failing_step: str) -> list[Action]:
    """Start and succeed every step before ``failing_step``; return the actions its failure yields."""
    driver.start()
    for step in FORWARD_STEPS[:FORWARD_STEPS.index(failing_step)]:
        driver.ok(step)
    return driver.fail(failing_step, f"{failing_step} broke")


# --- the happy path -----------------------------------------------------------------------------


def test_happy_path_every_transition() -> None:
    d = Driver()
    assert d.migration.epoch_to == 4  # epoch_from + 1
    assert d.start() == [Freeze(AGENT, SOURCE)]
    assert d.ok("freeze") == [Export(AGENT, SOURCE)]
    assert d.ok("export", bytes_moved=4096) == [Transfer(AGENT)]
    assert d.ok("transfer", bytes_moved=4096) == [Import(AGENT, TARGET, 4)]
    assert d.ok("import") == [Verify(AGENT, TARGET, 4)]
    assert not d.machine.committed
    assert d.ok("verify") == [Commit(AGENT, TARGET, 4)]
    assert d.ok("commit") == [KillSource(AGENT, SOURCE, 3)]
    assert d.machine.committed and d.migration.phase is P.CLEANING_UP
    assert d.ok("kill_source") == [Finish(P.COMPLETED)]
    assert d.machine.done and d.migration.error == ""
    assert d.phases() == [P.VALIDATING, P.FREEZING, P.EXPORTING, P.TRANSFERRING, P.IMPORTING, P.VERIFYING,
                          P.COMMITTING, P.CLEANING_UP, P.COMPLETED]
    assert [s.at for s in d.migration.phases] == [T0 + i for i in range(9)]
    assert d.migration.finished_at == d.now


def test_downtime_is_freeze_requested_to_commit_succeeded_and_bytes_recorded() -> None:
    d = Driver()
    d.start()               # t = T0 + 1: the freeze is requested; new commands wait from here
    d.ok("freeze")
    d.ok("export", 1000)
    d.ok("transfer", 1200)  # the larger report wins (a framing overhead, say)
    d.ok("import")
    d.ok("verify")
    d.ok("commit")          # t = T0 + 7: the target serves
    assert d.migration.downtime_s == pytest.approx(6.0)
    assert d.migration.bytes_moved == 1200
    d.ok("kill_source")
    assert d.migration.downtime_s == pytest.approx(6.0)


def test_failed_kill_after_commit_still_completes_with_a_note() -> None:
    d = Driver()
    d.start()
    for step in FORWARD_STEPS:
        d.ok(step)
    assert d.fail("kill_source", "source unreachable") == [Finish(P.COMPLETED)]
    assert d.migration.phase is P.COMPLETED
    assert "kill_source" in d.migration.error and "source unreachable" in d.migration.error
    assert "epoch 4" in d.migration.error
    assert not any(isinstance(a, (Resume, DeleteTarget)) for a in d.log)  # never rolled back


# --- rollback -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("failing_step", "rollback"), [
    ("freeze", [Resume(AGENT, SOURCE)]),   # a timed-out freeze may have taken effect
    ("export", [Resume(AGENT, SOURCE)]),
    ("transfer", [Resume(AGENT, SOURCE)]),
    ("import", [DeleteTarget(AGENT, TARGET, 4), Resume(AGENT, SOURCE)]),
    ("verify", [DeleteTarget(AGENT, TARGET, 4), Resume(AGENT, SOURCE)]),
    ("commit", [DeleteTarget(AGENT, TARGET, 4), Resume(AGENT, SOURCE)]),
])
def test_failure_before_commit_rolls_back(failing_step: str, rollback: list[Action]) -> None:
    d = Driver()
    assert run_until(d, failing_step) == rollback
    assert d.migration.phase is P.ROLLING_BACK
    assert d.migration.error == f"{failing_step} failed: {failing_step} broke"
    assert not d.machine.committed
    assert d.machine.awaiting == {a.step for a in rollback}
    *first, last = rollback
    for action in first:
        assert d.ok(action.step) == []
    assert d.ok(last.step) == [Finish(P.ROLLED_BACK)]
    assert d.phases()[-2:] == [P.ROLLING_BACK, P.ROLLED_BACK]
    assert d.migration.downtime_s is None
    assert not any(isinstance(a, (Commit, KillSource)) for a in d.log[d.log.index(rollback[0]):])


def test_rollback_step_failures_are_noted_and_still_finish() -> None:
    d = Driver()
    run_until(d, "verify")
    assert d.fail("delete_target", "target gone") == []
    assert d.fail("resume", "source gone") == [Finish(P.ROLLED_BACK)]
    assert d.migration.phase is P.ROLLED_BACK
    assert d.migration.error == ("verify failed: verify broke; delete_target failed during rollback: target gone; "
                                 "resume failed during rollback: source gone")


def test_rollback_reports_may_arrive_in_either_order() -> None:
    d = Driver()
    run_until(d, "import")
    assert d.ok("resume") == []
    assert d.ok("delete_target") == [Finish(P.ROLLED_BACK)]


# --- events out of order ------------------------------------------------------------------------


def test_event_before_start_is_rejected() -> None:
    d = Driver()
    with pytest.raises(FailedPrecondition, match="waiting for nothing"):
        d.ok("freeze")


def test_wrong_step_is_rejected_and_state_unchanged() -> None:
    d = Driver()
    d.start()
    d.ok("freeze")
    stamps = list(d.migration.phases)
    with pytest.raises(FailedPrecondition, match=r"unexpected StepSucceeded\('import'\) in phase exporting; "
                                                 r"waiting for export"):
        d.ok("import")
    with pytest.raises(FailedPrecondition):
        d.ok("freeze")  # a duplicate report
    assert d.migration.phases == stamps and d.migration.phase is P.EXPORTING
    assert d.ok("export") == [Transfer(AGENT)]


def test_events_after_finish_and_double_start_are_rejected() -> None:
    d = Driver()
    run_until(d, "freeze")
    d.ok("resume")
    with pytest.raises(FailedPrecondition):
        d.ok("resume")
    with pytest.raises(FailedPrecondition, match="already started"):
        d.start()


def test_forward_step_rejected_while_rolling_back() -> None:
    d = Driver()
    run_until(d, "import")
    with pytest.raises(FailedPrecondition, match="rolling_back"):
        d.ok("verify")


# --- recovery after a balancer restart ----------------------------------------------------------


def restored(d: Driver) -> MigrationMachine:
    return MigrationMachine(Migration.model_validate(d.migration.model_dump(mode="json")), d.now)


def test_recover_before_commit_rolls_back() -> None:
    d = Driver()
    d.start()
    for step in ("freeze", "export", "transfer"):
        d.ok(step)  # now importing
    machine = restored(d)
    assert machine.recover(d.tick(), committed_in_store=False) == [DeleteTarget(AGENT, TARGET, 4),
                                                                   Resume(AGENT, SOURCE)]
    assert "balancer restarted during importing" in machine.migration.error


def test_recover_when_commit_reached_the_store_kills_the_source() -> None:
    d = Driver()
    d.start()
    for step in ("freeze", "export", "transfer", "import", "verify"):
        d.ok(step)  # now committing; the write landed but was not reported
    machine = restored(d)
    assert machine.recover(d.tick(), committed_in_store=True) == [KillSource(AGENT, SOURCE, 3)]
    assert machine.committed and machine.migration.downtime_s is not None
    assert machine.handle(StepSucceeded("kill_source"), d.tick()) == [Finish(P.COMPLETED)]


def test_recover_final_migration_does_nothing() -> None:
    d = Driver()
    run_until(d, "freeze")
    d.ok("resume")
    assert restored(d).recover(d.tick(), committed_in_store=False) == []


# --- validate_migration -------------------------------------------------------------------------


def cluster_view(cluster_id: str, *, status: ClusterStatus = ClusterStatus.ACTIVE, active: int = 0,
                 gpu_types: list[str] | None = None) -> ClusterView:
    caps = ClusterCapabilities(gpu=gpu_types is not None, gpu_types=gpu_types or [])
    return ClusterView(cluster=Cluster(id=cluster_id, endpoint=f"{cluster_id}:1", max_agents=4, capabilities=caps),
                       health=ClusterHealthState(cluster_id=cluster_id, status=status, rtt_ms=5.0),
                       active_agents=active)


def agent(**config: object) -> Agent:
    return Agent(id=AGENT, config=SpawnConfig.model_validate(config), cluster_id=SOURCE,
                 status=AgentStatus.RUNNING, epoch=3)


def validate(a: Agent | None, target: ClusterView | None, *, target_id: str = TARGET,
             last_attempt_at: float | None = None, in_progress: bool = False) -> None:
    validate_migration(a, cluster_view(SOURCE), target, target_id=target_id, last_attempt_at=last_attempt_at,
                       cooldown_s=30.0, now=T0, in_progress=in_progress)


def test_validate_accepts_a_good_move() -> None:
    validate(agent(), cluster_view(TARGET))
    validate(agent(gpu_type="nvidia-a100"), cluster_view(TARGET, gpu_types=["A100"]))
    validate(agent(cluster=SOURCE), cluster_view(TARGET))  # the original pin does not bind the move


def test_validate_refusals() -> None:
    with pytest.raises(AgentNotFound):
        validate(None, cluster_view(TARGET))
    with pytest.raises(AgentNotRunning):
        validate(agent().model_copy(update={"status": AgentStatus.TERMINATED}), cluster_view(TARGET))
    with pytest.raises(ClusterNotFound, match="nowhere"):
        validate(agent(), None, target_id="nowhere")
    with pytest.raises(InvalidArgument, match="already runs on local"):
        validate(agent(), cluster_view(SOURCE), target_id=SOURCE)
    with pytest.raises(MigrationInProgress):
        validate(agent(), cluster_view(TARGET), in_progress=True)


def test_validate_cooldown_says_when_to_retry() -> None:
    with pytest.raises(CooldownActive) as info:
        validate(agent(), cluster_view(TARGET), last_attempt_at=T0 - 10.0)
    assert info.value.retry_after_s == pytest.approx(20.0)
    validate(agent(), cluster_view(TARGET), last_attempt_at=T0 - 30.0)  # exactly elapsed: allowed


@pytest.mark.parametrize(("target", "reason"), [
    (cluster_view(TARGET, status=ClusterStatus.OFFLINE), "status is offline"),
    (cluster_view(TARGET, active=4), "full: 4/4 agents"),
])
def test_validate_target_must_pass_placement_filters(target: ClusterView, reason: str) -> None:
    with pytest.raises(NoPlacement) as info:
        validate(agent(), target)
    assert info.value.reasons == {TARGET: reason}
    assert reason in str(info.value)


def test_validate_gpu_agent_never_moves_to_a_cluster_without_its_gpu_type() -> None:
    with pytest.raises(NoPlacement, match="no nvidia-a100 GPU"):
        validate(agent(gpu_type="nvidia-a100"), cluster_view(TARGET, gpu_types=["T4"]))
