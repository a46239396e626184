"""swarmctl renders what users and sites wrote as inert text: never rich markup, never raw control
characters. Hostile strings through every table and line, and through the real light-path commands
(`agent list`, `agent status`, `events`, `cluster list`) on a real state file. No Ray."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from godel_cli import render, safetext, tables
from godel_cli.main import app
from rich.console import Console
from typer.testing import CliRunner

from godel_ray.control.store import StateStore
from godel_ray.models import (
    Agent,
    AgentStatus,
    CandidateScore,
    Cluster,
    ClusterHealthState,
    ClusterInfo,
    ClusterStats,
    EventKind,
    FederationEvent,
    JournalEntry,
    Migration,
    PlacementDecision,
    SpawnConfig,
)

HOSTILE = ["[/]", "[bold]x[/bold]", "[red]", "\x1b[31mred\x1b[0m", "a\nb", "\x07\x08\r", "\u202egnp.exe",
           ":smile:", "[link=file:///etc/passwd]x[/link]"]
EVIL = "[/] [bold]b \x1b[31mred \x1b]0;title\x07 \u202e"


def _render(*renderables: object) -> str:
    buf = io.StringIO()
    console = Console(file=buf, width=400, highlight=False, soft_wrap=False)
    for renderable in renderables:
        console.print(renderable)
    return buf.getvalue()


@pytest.mark.parametrize("hostile", HOSTILE)
def test_clean_leaves_no_control_character(hostile: str) -> None:
    cleaned = safetext.clean(hostile)
    assert not any(ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0 or c == "\u202e" for c in cleaned)
    assert safetext.clean(cleaned) == cleaned, "idempotent"


def test_clean_shows_what_was_there() -> None:
    assert safetext.clean("\x1b[31m") == "\\x1b[31m"
    assert safetext.clean("a\nb\tc") == "a\\nb\\tc"
    assert safetext.clean("\u202e") == "\\u202e"
    assert safetext.clean("plain [text] é ✔") == "plain [text] é ✔"


def _hostile_agent(value: str) -> Agent:
    return Agent(id="ag-1", cluster_id="local", status=AgentStatus.FAILED, status_reason=value, node_id=value,
                 config=SpawnConfig(model=value, labels={"k": value, "team": "x"}, env={"SECRET": value}))


@pytest.mark.parametrize("value", HOSTILE)
def test_every_table_shows_hostile_values_as_text(value: str) -> None:
    agent = _hostile_agent(value)
    cluster = Cluster(id="east", endpoint=f"h:1{value}", region=value)
    health = ClusterHealthState(cluster_id="east", last_error=value)
    decision = PlacementDecision(agent_id="ag-1", chosen=value, rule=value,
                                 candidates=[CandidateScore(cluster_id=value, score=1, factors={"cost": 1})],
                                 rejections={value: value})
    migration = Migration(agent_id="ag-1", source=value, target=value, error=value, reason=value)
    event = FederationEvent(seq=1, kind=EventKind.AGENT, type=value, cluster_id=value, agent_id=value,
                            data={value: value})
    text = _render(
        tables.agents_table([agent]), tables.agent_panel(agent),
        tables.clusters_table([ClusterInfo(cluster=cluster, health=health)]),
        tables.health_table([health]),
        tables.stats_table([ClusterStats(cluster_id=value, status=health.status, agents_by_status={value: 1})]),
        tables.regions_table({value: [value, "east"]}, [ClusterInfo(cluster=cluster, health=health)]),
        tables.placement_table(decision), tables.rejections_table(decision),
        tables.migrations_table([migration]),
        tables.journal_table([JournalEntry(seq=1, command=f"echo {value}", started_at=0.0)]),
        tables.event_line(event), safetext.line("x ", (value, "bold"), value))
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text and "\r" not in text
    assert safetext.clean(value) in text, "shown, escaped, not interpreted"
    assert "SECRET=***" in text and value not in text.split("SECRET=")[1][:3]


def test_fail_escapes_a_hostile_error(capsys: pytest.CaptureFixture[str]) -> None:
    import typer

    with pytest.raises(typer.Exit):
        render.fail(f"site said: {EVIL}")
    err = capsys.readouterr().err
    assert err.startswith("error: site said: [/] [bold]b \\x1b[31mred") and err.count("\n") == 1
    assert "\x1b" not in err and "\x07" not in err and "\u202e" not in err


def test_light_path_commands_survive_hostile_state(tmp_path: Path) -> None:
    """A label `[/]` in one agent used to crash `agent list` for everyone."""
    store = StateStore.for_state_dir(tmp_path)
    try:
        store.put_cluster(Cluster(id="east", endpoint="127.0.0.1:1", region=EVIL))
        store.put_agent(_hostile_agent(EVIL))
        store.append_events([FederationEvent(kind=EventKind.COMMAND, type="command.started", agent_id="ag-1",
                                             data={"command": EVIL})])
    finally:
        store.close()
    env = {"GODEL_STATE_DIR": str(tmp_path), "NO_COLOR": "1", "COLUMNS": "300"}
    for args in (["agent", "list"], ["agent", "status", "ag-1"], ["events"], ["cluster", "list"],
                 ["cluster", "regions"]):
        result = CliRunner().invoke(app, args, env=env)
        assert result.exit_code == 0, (args, result.output)
        assert "\x1b" not in result.stdout and "\x07" not in result.stdout, args
        assert "\\x1b[31mred" in result.stdout, args
