"""Fail-back: the pure decision (core/failback.py), the home an automatic move remembers
(migrator.home_after_move), and the shell over the real owners and fake clusters (no Ray)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from godel_ray.control.failback import FAIL_BACK_REASON, FailBack
from godel_ray.control.migrator import MigrationExecutor, home_after_move
from godel_ray.core.failback import FailBackRules, fail_back_moves
from godel_ray.core.placement import ClusterView
from godel_ray.models import (
    Agent,
    AgentStatus,
    Cluster,
    ClusterHealthState,
    ClusterStatus,
    EventKind,
    Migration,
    MigrationPhase,
    SiteCapacity,
    SpawnConfig,
)
from tests.fakes import Control

RULES = FailBackRules(hysteresis_s=60, cooldown_s=300, max_in_flight=2)
NOW = 10_000.0
CAP = SiteCapacity(max_agents=10, available_agents=10, total_cpus=8, free_cpus=8)


def _view(cid: str, *, status: ClusterStatus = ClusterStatus.ACTIVE, fail_back: str = "auto",
          maintenance: bool = False) -> ClusterView:
    return ClusterView(cluster=Cluster(id=cid, endpoint=f"{cid}:1", fail_back=fail_back,  # type: ignore[arg-type]
                                       maintenance=maintenance),
                       health=ClusterHealthState(cluster_id=cid, status=status, capacity=CAP), active_agents=0)


def _agent(agent_id: str, home: str = "home", **config: Any) -> Agent:
    return Agent(id=agent_id, config=SpawnConfig(**config), cluster_id="away", status=AgentStatus.RUNNING,
                 home_cluster_id=home)


def _moves(agents: list[Agent], views: dict[str, ClusterView] | None = None, *, since: float = NOW - 61,
           last: dict[str, float] | None = None, moving: set[str] | None = None, in_flight: int = 0) -> list[str]:
    views = views if views is not None else {"home": _view("home"), "away": _view("away")}
    return [m.agent_id for m in fail_back_moves(agents, views, {"home": since}, last or {}, moving or set(),
                                                in_flight, NOW, RULES)]


def test_an_agent_goes_home_once_home_was_active_for_the_hysteresis_window() -> None:
    moves = fail_back_moves([_agent("a")], {"home": _view("home")}, {"home": NOW - 61}, {}, set(), 0, NOW, RULES)
    assert [(m.agent_id, m.home) for m in moves] == [("a", "home")]
    assert "home cluster home active for 61s" in moves[0].reason and "fail_back auto" in moves[0].reason
    assert _moves([_agent("a")], since=NOW - 59) == []  # not long enough: a flapping cluster never qualifies


@pytest.mark.parametrize(("why", "agent", "views", "kwargs"), [
    ("no home", _agent("a", home=""), None, {}),
    ("already home", _agent("a", home="away"), None, {}),
    ("agent policy never", _agent("a", fail_back="never"), None, {}),
    ("cluster default never", _agent("a"), {"home": _view("home", fail_back="never")}, {}),
    ("home offline", _agent("a"), {"home": _view("home", status=ClusterStatus.OFFLINE)}, {}),
    ("home in maintenance", _agent("a"), {"home": _view("home", maintenance=True)}, {}),
    ("home unknown", _agent("a"), {}, {}),
    ("cooldown", _agent("a"), None, {"last": {"a": NOW - 10}}),
    ("already moving", _agent("a"), None, {"moving": {"a"}}),
    ("bound reached", _agent("a"), None, {"in_flight": 2}),
    ("home cannot take it", _agent("a", gpu_type="nvidia-a100"), None, {}),
])
def test_no_fail_back_when_a_rule_says_no(why: str, agent: Agent, views: dict[str, ClusterView] | None,
                                          kwargs: dict[str, Any]) -> None:
    assert _moves([agent], views, **kwargs) == [], why


def test_an_agent_policy_overrides_the_cluster_default_and_the_bound_counts_moves_chosen_now() -> None:
    views = {"home": _view("home", fail_back="never")}
    assert _moves([_agent("a", fail_back="auto")], views) == ["a"]
    assert _moves([_agent(f"a{i}") for i in range(5)], in_flight=1) == ["a0"]
    assert _moves([_agent("a")], last={"a": NOW - 301}) == ["a"]


def test_an_automatic_move_remembers_the_first_home_and_a_manual_move_or_fail_back_clears_it() -> None:
    agent = Agent(id="a", config=SpawnConfig(), cluster_id="home")
    drain = Migration(agent_id="a", source="home", target="away", reason="drain")
    assert home_after_move(agent, drain) == "home"
    moved = agent.model_copy(update={"cluster_id": "away", "home_cluster_id": "home"})
    assert home_after_move(moved, Migration(agent_id="a", source="away", target="third", reason="drain")) == "home"
    assert home_after_move(moved, Migration(agent_id="a", source="away", target="home", reason="drain")) == ""
    assert home_after_move(moved, Migration(agent_id="a", source="away", target="x", reason="manual")) == ""
    assert home_after_move(moved, Migration(agent_id="a", source="away", target="home", reason="fail_back")) == ""


def test_the_shell_moves_the_agent_home_live_with_an_event_and_clears_its_home(tmp_path: Path) -> None:
    control = Control(tmp_path, cluster_ids=("local", "src", "dst"))
    events: list[tuple[str, str, dict[str, str]]] = []

    def emit(kind: EventKind, type_: str, cluster_id: str, agent_id: str = "", **data: str) -> None:
        events.append((type_, agent_id, data))

    executor = MigrationExecutor(control.store, control.table, control.gateway, emit, ledger=control.ledger,
                                 views=control.clusters.view, cooldown_s=0.0, clock=control.clock)
    shell = FailBack(control.clusters, control.table, executor, emit,
                     rules=FailBackRules(hysteresis_s=60, cooldown_s=0, max_in_flight=1), clock=control.clock)
    for cid in ("src", "dst", "local"):
        control.report(cid, CAP)
    asyncio.run(control.clusters.update("src", {"fail_back": "auto"}))
    control.put_agent(Agent(id="ag-1", config=SpawnConfig(), cluster_id="dst", status=AgentStatus.RUNNING,
                            home_cluster_id="src"))

    async def tick() -> list[str]:
        moved = await shell.tick()
        for task in list(executor._tasks.values()):
            await task
        return moved

    assert asyncio.run(tick()) == []  # home seen active just now: the hysteresis starts
    control.now += 61
    assert asyncio.run(tick()) == ["ag-1"]
    row = control.store.agent("ag-1")
    assert row is not None and (row.cluster_id, row.home_cluster_id, row.status) == ("src", "", AgentStatus.RUNNING)
    last = control.store.migrations("ag-1")[-1]
    assert (last.reason, last.phase, last.source, last.target) == (FAIL_BACK_REASON, MigrationPhase.COMPLETED,
                                                                    "dst", "src")
    fail_back = [d for t, a, d in events if t == "agent.fail_back" and a == "ag-1"]
    assert len(fail_back) == 1 and fail_back[0]["target"] == "src" and "active for 61s" in fail_back[0]["reason"]
    control.now += 1000
    assert asyncio.run(tick()) == []  # home cleared: nothing moves again
