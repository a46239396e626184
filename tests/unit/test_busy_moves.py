"""Moving a busy agent, the pure and control-plane parts (no Ray): the machine counts downtime from
the moment the source froze, ``freeze_wait_s`` says how long a move waits for idle, the executor
passes the busy policy down and rolls back on ``AgentBusy`` with the reason, the drain reports who
waits for idle, the wire keeps the options and the journal's interrupted mark, and user input is
checked."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from godel_ray.control.drainer import Drainer
from godel_ray.control.migrator import MigrationExecutor
from godel_ray.core.live_migration import LiveMigrationMachine
from godel_ray.core.migration import StepSucceeded, freeze_wait_s
from godel_ray.errors import AgentBusy, InvalidArgument
from godel_ray.inputs import busy_policy, busy_timeout
from godel_ray.models import (
    Agent,
    AgentStatus,
    BusyPolicy,
    EventKind,
    FreezeOptions,
    FreezeReport,
    JournalEntry,
    Migration,
    MigrationPhase,
    SiteCapacity,
    SpawnConfig,
)
from godel_ray.rpc import convert
from godel_ray.settings import BUSY_TIMEOUT_ENV, busy_timeout_from_env
from tests.fakes import Control

T0 = 1000.0


def test_downtime_counts_from_when_the_source_froze_not_from_the_request() -> None:
    m = LiveMigrationMachine(Migration(agent_id="ag-1", source="a", target="b", epoch_from=1), T0)
    m.start(T0)
    m.handle(StepSucceeded("prepare"), T0)
    m.handle(StepSucceeded("pre_copy", dirty_bytes=0), T0 + 1)  # freeze requested: the agent is busy, it keeps serving
    assert m.migration.phase is MigrationPhase.FREEZING
    assert freeze_wait_s(m.migration, T0 + 5) == pytest.approx(4.0)
    m.handle(StepSucceeded("freeze", frozen_at=T0 + 11, interrupted_seq=7), T0 + 12)
    assert m.migration.frozen_at == T0 + 11 and freeze_wait_s(m.migration, T0 + 20) is None
    assert m.migration.interrupted_seq == 7
    for step, at in (("delta", 13), ("activate", 14), ("commit", 17)):
        m.handle(StepSucceeded(step), T0 + at)
    assert m.migration.phase is MigrationPhase.CLEANING_UP
    assert m.migration.downtime_s == pytest.approx(6.0)  # frozen at +11, committed at +17


def test_downtime_counts_from_the_freeze_request_when_no_frozen_at_was_reported() -> None:
    m = LiveMigrationMachine(Migration(agent_id="ag-1", source="a", target="b", epoch_from=1), T0)
    m.start(T0)
    m.handle(StepSucceeded("prepare"), T0)
    m.handle(StepSucceeded("pre_copy", dirty_bytes=0), T0 + 1)  # FREEZING stamped at +1
    for step, at in (("freeze", 2), ("delta", 3), ("activate", 4), ("commit", 5)):
        m.handle(StepSucceeded(step), T0 + at)
    assert m.migration.frozen_at is None and m.migration.downtime_s == pytest.approx(4.0)


def test_freeze_wait_is_none_outside_the_freezing_phase() -> None:
    assert freeze_wait_s(Migration(agent_id="ag-1", source="a", target="b"), T0) is None


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.control = Control(tmp_path)
        self.executor = MigrationExecutor(self.control.store, self.control.table, self.control.gateway, self.emit,
                                          ledger=self.control.ledger, views=self.control.clusters.view,
                                          cooldown_s=0.0, clock=self.control.clock,
                                          busy_timeout_s=42.0, interrupt_grace_s=3.0)
        cpus = SiteCapacity(max_agents=10, available_agents=10, total_cpus=8, free_cpus=8)
        for cid in ("src", "dst", "local"):
            self.control.report(cid, cpus)
        self.control.put_agent(Agent(id="ag-1", config=SpawnConfig(), cluster_id="src", status=AgentStatus.RUNNING,
                                     epoch=1))

    def emit(self, kind: EventKind, type_: str, cluster_id: str, agent_id: str = "", **data: str) -> None:
        pass

    def freeze_options(self) -> list[FreezeOptions | None]:
        return [kw.get("options") for m, kw in self.control.fakes["src"].calls if m == "freeze"]


def test_the_busy_policy_travels_to_the_source_and_is_recorded(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    done = asyncio.run(h.executor.migrate("ag-1", "dst", busy=BusyPolicy.INTERRUPT))
    assert done.phase is MigrationPhase.COMPLETED and done.busy is BusyPolicy.INTERRUPT
    assert h.freeze_options() == [FreezeOptions(busy=BusyPolicy.INTERRUPT, busy_timeout_s=42.0, grace_s=3.0,
                                                target="dst")]
    assert h.control.store.migrations("ag-1")[-1].busy is BusyPolicy.INTERRUPT


def test_a_busy_timeout_rolls_back_with_the_reason_and_the_source_keeps_running(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.control.fakes["src"].fail["freeze"] = AgentBusy("agent ag-1 stayed busy for 5 s: nothing was frozen",
                                                      agent_id="ag-1")
    done = asyncio.run(h.executor.migrate("ag-1", "dst", busy_timeout_s=5.0))
    assert done.phase is MigrationPhase.ROLLED_BACK and done.busy_timeout_s == 5.0
    assert "AgentBusy" in done.error and "nothing was frozen" in done.error and done.frozen_at is None
    assert h.freeze_options() == [FreezeOptions(busy=BusyPolicy.WAIT, busy_timeout_s=5.0, grace_s=3.0,
                                                target="dst")]
    row = h.control.store.agent("ag-1")
    assert row is not None and (row.cluster_id, row.status) == ("src", AgentStatus.RUNNING)
    with pytest.raises(InvalidArgument):
        h.executor.begin(h.control.table.get("ag-1"), "dst", busy_timeout_s=0.0)  # type: ignore[arg-type]


def test_drain_progress_lists_the_agents_whose_move_waits_for_idle(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    drainer = Drainer(h.control.clusters, h.control.table, h.executor, h.emit, clock=h.control.clock)

    async def go() -> None:
        gate = h.control.fakes["src"].gate("freeze")  # the source is busy: its freeze does not return
        report = await drainer.drain("src", busy=BusyPolicy.WAIT, busy_timeout_s=30.0)
        await h.control.fakes["src"].reached("freeze")
        h.control.now += 7.0
        progress = drainer.progress(report)
        assert report.busy is BusyPolicy.WAIT
        assert list(progress.waiting_for_idle) == ["ag-1"] and progress.waiting_for_idle["ag-1"] >= 7.0
        gate.set()
        task = h.executor.task_of(report.migrations[0].id)
        assert task is not None
        await task
        assert drainer.progress(report).waiting_for_idle == {}

    asyncio.run(go())


def test_freeze_options_journal_marks_and_frozen_at_cross_the_wire() -> None:
    options = FreezeOptions(busy=BusyPolicy.INTERRUPT, busy_timeout_s=12.0, grace_s=2.5, target="west")
    request = convert.freeze_request_to_pb("ag-1", 3, options)
    assert (request.agent_id, request.epoch) == ("ag-1", 3)
    assert convert.freeze_options_from_pb(request) == options
    assert convert.freeze_options_from_pb(convert.freeze_request_to_pb("ag-1", 3, None)) is None
    report = FreezeReport(agent=Agent(id="ag-1", config=SpawnConfig(), cluster_id="west"), frozen_at=T0 + 2,
                          interrupted_seq=4)
    assert convert.freeze_report_from_pb(convert.freeze_report_to_pb(report), "west") == report
    plain = FreezeReport(agent=report.agent)
    assert convert.freeze_report_from_pb(convert.freeze_report_to_pb(plain), "west") == plain
    entry = JournalEntry(seq=4, command="train", exit_code=143, started_at=T0, interrupted=True,
                         interrupt_reason="interrupted to move agent ag-1 to west")
    assert convert.journal_entry_from_pb(convert.journal_entry_to_pb(entry)) == entry
    old = convert.journal_entry_from_pb(convert.journal_entry_to_pb(JournalEntry(seq=1, command="c", started_at=T0)))
    assert not old.interrupted and old.interrupt_reason == ""
    agent = Agent(id="ag-1", config=SpawnConfig())
    header = convert.snapshot_header_to_pb(agent, 0, 0, "0" * 64, T0, frozen_at=T0 + 1)
    assert convert.snapshot_from_header(header, b"").frozen_at == T0 + 1
    unfrozen = convert.snapshot_header_to_pb(agent, 0, 0, "0" * 64, T0)
    assert convert.snapshot_from_header(unfrozen, b"").frozen_at is None


def test_busy_input_is_checked() -> None:
    assert busy_policy("Interrupt") is BusyPolicy.INTERRUPT and busy_policy(BusyPolicy.WAIT) is BusyPolicy.WAIT
    with pytest.raises(InvalidArgument, match="wait., .interrupt. or .live_process"):
        busy_policy("later")
    assert busy_timeout(None) is None and busy_timeout(5.0) == 5.0
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(InvalidArgument):
            busy_timeout(bad)


def test_the_default_busy_timeout_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BUSY_TIMEOUT_ENV, raising=False)
    assert busy_timeout_from_env() == 600.0
    monkeypatch.setenv(BUSY_TIMEOUT_ENV, "90")
    assert busy_timeout_from_env() == 90.0
    for bad in ("soon", "-3", "0", "inf"):
        monkeypatch.setenv(BUSY_TIMEOUT_ENV, bad)
        assert busy_timeout_from_env() == 600.0


def test_the_mirrored_journal_keeps_the_interrupted_mark() -> None:
    from godel_ray.control.agent_ops import journal_from_events
    from godel_ray.models import EventKind, FederationEvent

    def event(type_: str, ts: float, **data: str) -> FederationEvent:
        return FederationEvent(kind=EventKind.COMMAND, type=type_, cluster_id="east", agent_id="ag-1", ts=ts,
                               data=data)

    [entry] = journal_from_events([
        event("command.started", T0, command="train"),
        event("command.finished", T0 + 5, exit_code="143", duration_s="5.000", timed_out="False", interrupted="True",
              interrupt_reason="interrupted to move agent ag-1 to west")])
    assert (entry.command, entry.exit_code, entry.duration_s, entry.interrupted) == ("train", 143, 5.0, True)
    assert entry.interrupt_reason == "interrupted to move agent ag-1 to west"


def test_fail_back_rules_can_be_shortened_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from godel_ray.control.failback import COOLDOWN_ENV, HYSTERESIS_ENV, rules_from_env
    from godel_ray.core.failback import DEFAULT_RULES

    monkeypatch.delenv(HYSTERESIS_ENV, raising=False)
    monkeypatch.delenv(COOLDOWN_ENV, raising=False)
    assert rules_from_env() == DEFAULT_RULES
    monkeypatch.setenv(HYSTERESIS_ENV, "1.5")
    monkeypatch.setenv(COOLDOWN_ENV, "0")
    rules = rules_from_env()
    assert (rules.hysteresis_s, rules.cooldown_s, rules.max_in_flight) == (1.5, 0.0, DEFAULT_RULES.max_in_flight)
    monkeypatch.setenv(HYSTERESIS_ENV, "-1")
    monkeypatch.setenv(COOLDOWN_ENV, "soon")
    assert rules_from_env() == DEFAULT_RULES


def test_interrupt_and_live_process_exclude_each_other() -> None:
    from godel_ray.inputs import move_policy

    assert move_policy(interrupt=False, live_process=False) is BusyPolicy.WAIT
    assert move_policy(interrupt=True, live_process=False) is BusyPolicy.INTERRUPT
    assert move_policy(interrupt=False, live_process=True) is BusyPolicy.LIVE_PROCESS
    with pytest.raises(InvalidArgument, match="exclude each other"):
        move_policy(interrupt=True, live_process=True)
    request = convert.freeze_request_to_pb("ag-1", 1, FreezeOptions(busy=BusyPolicy.LIVE_PROCESS))
    assert convert.freeze_options_from_pb(request) == FreezeOptions(busy=BusyPolicy.LIVE_PROCESS)


def test_a_site_agents_row_keeps_its_control_plane_fields(tmp_path: Path) -> None:
    """A site's answer carries only what ``AgentSpec`` holds; ``fail_back`` and the placement fields
    the user asked for must stay in the row, or fail-back and a later move's placement ignore them."""
    from godel_ray.control.spawner import CONTROL_PLANE_FIELDS, Spawner
    from godel_ray.rpc.convert import spec_from_pb, spec_to_pb

    c = Control(tmp_path)
    c.report("src", SiteCapacity(max_agents=10, available_agents=10, total_cpus=8, free_cpus=8))
    site = c.fakes["src"]
    answer = site.handle

    async def over_the_wire(method: str, *args: object, **kwargs: object) -> object:
        result = await answer(method, *args, **kwargs)
        if method == "spawn":
            agent, created = result  # type: ignore[misc]
            return agent.model_copy(update={"config": spec_from_pb(spec_to_pb(agent.config))}), created
        return result

    site.handle = over_the_wire  # type: ignore[method-assign]
    config = SpawnConfig(cluster="src", fail_back="auto", excluded_regions=["mars"], priority="cost")
    agent = asyncio.run(Spawner(c.clusters, c.table, c.emitter, clock=c.clock).spawn(config))
    row = c.store.agent(agent.id)
    assert row is not None and row.cluster_id == "src"
    for name in CONTROL_PLANE_FIELDS:
        assert getattr(row.config, name) == getattr(config, name), name
