"""How swarmctl talks to a person or a program: rich tables, colours, JSON, and the one error handler.

- Human output goes through rich consoles; when stdout is not a terminal rich writes no colour
  codes, and nothing here draws a spinner or a live view unless stdout is a terminal.
- ``--json`` output is plain ``json.dumps`` of :func:`jsonable` (env values redacted), nothing else.
- :func:`guarded` wraps every command: a ``GodelError`` (or bad input caught by pydantic) becomes ONE
  line ``error: <message>`` on stderr and an exit code chosen by the error's class
  (:data:`EXIT_CODES`); anything unexpected prints one line plus a hint to re-run with
  ``GODEL_DEBUG=1``, which prints the traceback as well.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from godel_ray import errors
from godel_ray.models import (
    Agent,
    AgentStatus,
    ClusterHealthState,
    ClusterInfo,
    ClusterStats,
    ClusterStatus,
    FederationEvent,
    Isolation,
    JournalEntry,
    Migration,
    MigrationPhase,
    PlacementDecision,
)

# ---------------------------------------------------------------- options shared by every command

StateDirOption = Annotated[str | None, typer.Option(
    "--state-dir", envvar="GODEL_STATE_DIR", show_envvar=True,
    help="Control-plane state directory (default ~/.godel).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")]

# ---------------------------------------------------------------- consoles

_CONSOLES: dict[str, Console] = {}


PIPE_WIDTH = 250  # off a terminal, tables keep whole values (for grep, awk) instead of wrapping at 80


def out() -> Console:
    """stdout console: colour only on a terminal (and never with NO_COLOR)."""
    if "out" not in _CONSOLES:
        console = Console(highlight=False, soft_wrap=False)
        if not console.is_terminal and "COLUMNS" not in os.environ:
            console = Console(highlight=False, soft_wrap=False, width=PIPE_WIDTH)
        _CONSOLES["out"] = console
    return _CONSOLES["out"]


def err() -> Console:
    if "err" not in _CONSOLES:
        _CONSOLES["err"] = Console(stderr=True, highlight=False, soft_wrap=True)
    return _CONSOLES["err"]


def interactive() -> bool:
    """True when stdout is a terminal: live views and progress displays are allowed."""
    return out().is_terminal


# ---------------------------------------------------------------- JSON

def jsonable(value: Any) -> Any:
    """A JSON-safe copy of ``value``; agents (and anything holding one) have env values redacted."""
    if isinstance(value, Agent):
        return value.public_dict()
    if isinstance(value, BaseModel):
        data = value.model_dump(mode="json")
        for name in type(value).model_fields:
            field_value = getattr(value, name)
            if isinstance(field_value, (Agent, BaseModel, list, dict)) and _holds_agent(field_value):
                data[name] = jsonable(field_value)
        return data
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def _holds_agent(value: Any) -> bool:
    if isinstance(value, Agent):
        return True
    if isinstance(value, BaseModel):
        return any(_holds_agent(getattr(value, name)) for name in type(value).model_fields)
    if isinstance(value, dict):
        return any(_holds_agent(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_agent(v) for v in value)
    return False


def emit_json(value: Any, *, compact: bool = False) -> None:
    """Write ``value`` as JSON on stdout (one line when ``compact``: for JSON-lines streams)."""
    text = json.dumps(jsonable(value), indent=None if compact else 2, sort_keys=False)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------- errors

EXIT_CODES: dict[type[errors.GodelError], int] = {
    errors.InvalidArgument: 2,
    errors.NotFound: 3,
    errors.AlreadyExists: 4,
    errors.Unauthenticated: 5,
    errors.FailedPrecondition: 6,
    errors.ResourceExhausted: 7,
    errors.ClusterUnavailable: 8,
    errors.DeadlineExceeded: 9,
    errors.ControlPlaneNotRunning: 10,
}
UNEXPECTED_EXIT_CODE = 70  # EX_SOFTWARE
DEBUG_ENV = "GODEL_DEBUG"

F = TypeVar("F", bound=Callable[..., Any])


def exit_code_for(exc: errors.GodelError) -> int:
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return 1


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``error: message`` as one line on stderr and exit with ``code``."""
    lines = [" ".join(line.split()) for line in str(message).splitlines() if line.strip()] or ["failed"]
    # a header ending in ':' followed by one line per item reads as "header: a; b; c"
    one_line = lines[0] + (" " if lines[0].endswith(":") else "; ") + "; ".join(lines[1:]) if len(lines) > 1 \
        else lines[0]
    sys.stdout.flush()
    sys.stderr.write(f"error: {one_line}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


def guarded(fn: F) -> F:
    """Run a command; map every failure to one ``error:`` line and an exit code (the one place)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            sys.stderr.write("\n")
            raise typer.Exit(130) from None
        except errors.GodelError as exc:
            _debug_traceback()
            fail(_with_reasons(exc), exit_code_for(exc))
        except ValidationError as exc:
            _debug_traceback()
            from godel_ray.inputs import describe_validation_error

            fail(describe_validation_error(exc, names={}), EXIT_CODES[errors.InvalidArgument])
        except BrokenPipeError:
            # `swarmctl ... | head`: the reader left; say nothing more
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(141) from None
        except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, no traceback
            if os.environ.get(DEBUG_ENV):
                traceback.print_exc()
            hint = "" if os.environ.get(DEBUG_ENV) else f" (re-run with {DEBUG_ENV}=1 for the traceback)"
            fail(f"unexpected {type(exc).__name__}: {exc}{hint}", UNEXPECTED_EXIT_CODE)

    return wrapper  # type: ignore[return-value]


def _with_reasons(exc: errors.GodelError) -> str:
    message = exc.message
    reasons = exc.fields.get("reasons")
    if isinstance(reasons, dict) and reasons and not all(str(k) in message for k in reasons):
        message += " (" + "; ".join(f"{k}: {v}" for k, v in reasons.items()) + ")"
    return message


def _debug_traceback() -> None:
    if os.environ.get(DEBUG_ENV):
        traceback.print_exc()


# ---------------------------------------------------------------- small formatters

CLUSTER_STATUS_STYLE = {
    ClusterStatus.ACTIVE: "green", ClusterStatus.DEGRADED: "yellow", ClusterStatus.OFFLINE: "red",
    ClusterStatus.MAINTENANCE: "blue",
}
AGENT_STATUS_STYLE = {
    AgentStatus.PENDING: "yellow", AgentStatus.RUNNING: "green", AgentStatus.MIGRATING: "cyan",
    AgentStatus.COMPLETED: "dim", AgentStatus.FAILED: "red", AgentStatus.TERMINATED: "dim",
}


def cluster_status(status: ClusterStatus | str) -> Text:
    status = ClusterStatus(status)
    return Text(status.value, style=CLUSTER_STATUS_STYLE[status])


def agent_status(status: AgentStatus | str) -> Text:
    status = AgentStatus(status)
    return Text(status.value, style=AGENT_STATUS_STYLE[status])


def cost(usd_per_hour: float) -> Text:
    if usd_per_hour <= 0:
        return Text("free", style="green")
    return Text(f"${usd_per_hour:.2f}/h", style="yellow" if usd_per_hour >= 1 else "green")


def latency(rtt_ms: float | None) -> Text:
    if rtt_ms is None:
        return Text("-", style="dim")
    style = "green" if rtt_ms < 50 else "yellow" if rtt_ms < 250 else "red"
    return Text(f"{rtt_ms:.1f} ms", style=style)


def isolation(value: Isolation | None) -> Text:
    """A cluster's isolation; ``none`` is a warning: its agents run without a sandbox."""
    if value is None:
        return Text("-", style="dim")
    if value == Isolation.NONE:
        return Text("none (no sandbox!)", style="bold red")
    return Text(value.value, style="green")


def ago(ts: float | None) -> str:
    if not ts:
        return "-"
    seconds = max(0.0, time.time() - ts)
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def size(num_bytes: int) -> str:
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s" if value < 60 else f"{value / 60:.1f} min"


def kv(pairs: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in pairs.items()) or "-"


# ---------------------------------------------------------------- tables

def new_table(title: str) -> Table:
    """The one table style of swarmctl."""
    return Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD)


def clusters_table(infos: Iterable[ClusterInfo]) -> Table:
    table = new_table("clusters")
    for column in ("ID", "ENDPOINT", "REGION", "STATUS", "GPUS", "AGENTS", "COST", "RTT", "ISOLATION",
                   "LAST HEARTBEAT"):
        table.add_column(column, no_wrap=column in ("ID", "STATUS"))
    for info in infos:
        c, h = info.cluster, info.health
        gpus = ",".join(c.capabilities.gpu_types or h.capacity.gpu_types) or ("yes" if c.capabilities.gpu else "-")
        table.add_row(c.id, c.endpoint or "(this ray cluster)", c.region, cluster_status(h.status), gpus,
                      f"{info.agents}/{c.max_agents}", cost(c.cost_per_hour), latency(h.rtt_ms),
                      isolation(h.capacity.isolation), ago(h.last_success_at))
    return table


def health_table(states: Iterable[ClusterHealthState]) -> Table:
    table = new_table("cluster health")
    for column in ("CLUSTER", "STATUS", "RTT", "FAILS", "OKS", "LAST OK", "FREE CPUS", "FREE GPUS", "LAST ERROR"):
        table.add_column(column)
    for s in states:
        free_gpus = ",".join(f"{t}:{n:g}" for t, n in s.capacity.free_gpus.items()) or "-"
        table.add_row(s.cluster_id, cluster_status(s.status), latency(s.rtt_ms), str(s.consecutive_failures),
                      str(s.consecutive_successes), ago(s.last_success_at), f"{s.capacity.free_cpus:g}",
                      free_gpus, Text(s.last_error or "", style="red"))
    return table


def stats_table(stats: Iterable[ClusterStats]) -> Table:
    table = new_table("cluster stats")
    for column in ("CLUSTER", "STATUS", "LOAD", "AGENTS", "CPUS FREE/TOTAL", "GPUS", "RTT"):
        table.add_column(column)
    for s in stats:
        load_style = "green" if s.load < 0.5 else "yellow" if s.load < 0.8 else "red"
        table.add_row(s.cluster_id, cluster_status(s.status), Text(f"{s.load:.0%}", style=load_style),
                      kv({k: str(v) for k, v in s.agents_by_status.items()}),
                      f"{s.capacity.free_cpus:g}/{s.capacity.total_cpus:g}",
                      f"{sum(s.capacity.free_gpus.values()):g}/{s.capacity.total_gpus:g}", latency(s.rtt_ms))
    return table


def agents_table(agents: Iterable[Agent]) -> Table:
    table = new_table("agents")
    for column in ("ID", "CLUSTER", "STATUS", "MODEL", "LABELS", "GPUS", "EPOCH", "CREATED"):
        table.add_column(column, no_wrap=column in ("ID", "STATUS"))
    for a in agents:
        gpus = f"{a.config.num_gpus}x{a.config.gpu_type or 'any'}" if a.config.needs_gpu else "-"
        table.add_row(a.id, a.cluster_id or "-", agent_status(a.status), a.model, kv(a.labels), gpus,
                      str(a.epoch), ago(a.created_at))
    return table


def agent_panel(agent: Agent) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    c = agent.config
    rows: list[tuple[str, str | Text]] = [
        ("id", agent.id), ("cluster", agent.cluster_id or "-"), ("status", agent_status(agent.status)),
        ("reason", agent.status_reason or "-"), ("model", c.model), ("labels", kv(c.labels)),
        ("env", ",".join(f"{k}=***" for k in c.env) or "-"),
        ("resources", f"{c.cpus:g} cpu" + (f", {c.num_gpus} gpu {c.gpu_type or ''}".rstrip() if c.needs_gpu else "")),
        ("timeout", seconds(c.timeout_s) if c.timeout_s else "none"), ("restart", c.restart_policy.value),
        ("epoch", str(agent.epoch)), ("created", ago(agent.created_at)), ("node", agent.node_id or "-"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


def placement_table(decision: PlacementDecision) -> Table:
    """SkyPilot-optimizer style: every candidate with its factor scores, the chosen one marked."""
    factors = sorted({name for c in decision.candidates for name in c.factors})
    table = new_table("placement candidates")
    table.add_column("")
    table.add_column("CLUSTER", no_wrap=True)
    for name in factors:
        table.add_column(name.upper(), justify="right")
    table.add_column("TOTAL", justify="right")
    for c in sorted(decision.candidates, key=lambda c: (-c.score, c.cluster_id)):
        chosen = c.cluster_id == decision.chosen
        table.add_row(Text("✔", style="bold green") if chosen else "",
                      Text(c.cluster_id, style="bold green" if chosen else ""),
                      *(f"{c.factors[n]:.1f}" if n in c.factors else "-" for n in factors),
                      Text(f"{c.score:.1f}", style="bold" if chosen else ""))
    return table


def rejections_table(decision: PlacementDecision) -> Table:
    table = new_table("rejected")
    table.add_column("CLUSTER", no_wrap=True)
    table.add_column("REASON")
    for cluster_id, reason in sorted(decision.rejections.items()):
        table.add_row(cluster_id, Text(reason, style="red"))
    return table


def print_placement(decision: PlacementDecision) -> None:
    console = out()
    if decision.candidates:
        console.print(placement_table(decision))
    if decision.rejections:
        console.print(rejections_table(decision))
    if decision.chosen:
        console.print(Text.assemble("chosen: ", (decision.chosen, "bold green"),
                                    f" (rule {decision.rule or '-'}, priority {decision.priority.value})"))
    else:
        console.print(Text("no cluster fits", style="bold red"))


MIGRATION_DONE = frozenset({MigrationPhase.COMPLETED, MigrationPhase.ROLLED_BACK, MigrationPhase.FAILED})


def migration_style(phase: MigrationPhase) -> str:
    return {MigrationPhase.COMPLETED: "green", MigrationPhase.ROLLED_BACK: "yellow",
            MigrationPhase.FAILED: "red"}.get(phase, "cyan")


def migrations_table(migrations: Iterable[Migration]) -> Table:
    table = new_table("migrations")
    for column in ("ID", "FROM", "TO", "PHASE", "REASON", "EPOCH", "BYTES", "DOWNTIME", "STARTED", "ERROR"):
        table.add_column(column)
    for m in migrations:
        table.add_row(m.id, m.source, m.target, Text(m.phase.value, style=migration_style(m.phase)), m.reason,
                      f"{m.epoch_from}→{m.epoch_to}", size(m.bytes_moved), seconds(m.downtime_s),
                      ago(m.started_at), Text(m.error, style="red"))
    return table


def journal_table(entries: Iterable[JournalEntry]) -> Table:
    table = new_table("journal")
    for column in ("SEQ", "STARTED", "DURATION", "EXIT", "COMMAND"):
        table.add_column(column)
    for e in entries:
        if e.timed_out:
            code = Text("timeout", style="red")
        elif e.exit_code is None:
            code = Text("running", style="cyan")
        else:
            code = Text(str(e.exit_code), style="green" if e.exit_code == 0 else "red")
        table.add_row(str(e.seq), time.strftime("%H:%M:%S", time.localtime(e.started_at)), seconds(e.duration_s),
                      code, e.command)
    return table


def event_line(event: FederationEvent) -> Text:
    stamp = time.strftime("%H:%M:%S", time.localtime(event.ts))
    style = {"cluster": "blue", "migration": "cyan", "agent": "green", "command": ""}.get(event.kind.value, "")
    parts = [event.cluster_id and f"cluster={event.cluster_id}", event.agent_id and f"agent={event.agent_id}",
             kv(event.data) if event.data else ""]
    return Text.assemble((f"{event.seq:>6} ", "dim"), f"{stamp} ", (f"{event.type:<22}", style),
                         " ".join(p for p in parts if p))


__all__ = [
    "EXIT_CODES",
    "JsonOption",
    "StateDirOption",
    "agent_panel",
    "agent_status",
    "agents_table",
    "ago",
    "cluster_status",
    "clusters_table",
    "cost",
    "emit_json",
    "err",
    "event_line",
    "exit_code_for",
    "fail",
    "guarded",
    "health_table",
    "interactive",
    "journal_table",
    "jsonable",
    "latency",
    "migrations_table",
    "new_table",
    "out",
    "placement_table",
    "print_placement",
    "rejections_table",
    "seconds",
    "size",
    "stats_table",
]
