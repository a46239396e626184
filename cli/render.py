"""How swarmctl talks to a person or a program: rich tables, colours, JSON, and the one error handler.

- Human output goes through rich consoles; when stdout is not a terminal rich writes no colour
  codes, and nothing here draws a spinner or a live view unless stdout is a terminal.
- ``--json`` output is plain ``json.dumps`` of :func:`jsonable` (env values redacted), nothing else.
- Nothing a user or a site supplied (ids, labels, commands, reasons, errors, event data) is ever
  parsed as rich markup or reaches the terminal raw: it goes through :func:`clean` (control
  characters shown escaped, e.g. ``\\x1b``) into ``rich.text.Text`` objects (:func:`plain`,
  :func:`line`); every table is a :class:`SafeTable`, whose string cells are plain text.
- :func:`guarded` wraps every command: a ``GodelError`` (or bad input caught by pydantic) becomes ONE
  line ``error: <message>`` on stderr and an exit code chosen by the error's class
  (:data:`EXIT_CODES`); anything unexpected prints one line plus a hint to re-run with
  ``GODEL_DEBUG=1``, which prints the traceback as well.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Annotated, Any, NoReturn, TypeAlias, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich import box
from rich.console import Console, RenderableType
from rich.style import StyleType
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


# ---------------------------------------------------------------- untrusted text

# C0 and C1 controls, DEL, and the invisible format characters that reorder or hide text (bidi
# overrides and isolates, zero-width characters, line/paragraph separators, BOM).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED_ESCAPES.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def clean(value: object) -> str:
    """``value`` as one line of inert text: every control character is shown escaped (``\\x1b``, ``\\n``),
    so nothing a user or a site wrote can move the cursor, recolour the terminal or hide text."""
    return _UNSAFE.sub(_escape, str(value))


def plain(value: object, style: StyleType = "") -> Text:
    """Untrusted ``value`` as a ``Text``: never parsed as markup, control characters escaped."""
    return Text(clean(value), style=style)


Part: TypeAlias = str | tuple[str, StyleType] | Text


def line(*parts: Part) -> Text:
    """A line from pieces (``"text"``, ``("text", style)`` or ``Text``), each string cleaned."""
    out_text = Text()
    for part in parts:
        if isinstance(part, Text):
            out_text.append_text(part)
        elif isinstance(part, tuple):
            out_text.append(clean(part[0]), style=part[1])
        else:
            out_text.append(clean(part))
    return out_text


def say(*parts: Part) -> None:
    """Print one :func:`line` on stdout."""
    out().print(line(*parts))


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
    lines = [clean(" ".join(text.split())) for text in str(message).splitlines() if text.strip()] or ["failed"]
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
    """``k=v,k=v`` (cleaned: keys and values may come from anyone)."""
    return clean(",".join(f"{k}={v}" for k, v in pairs.items())) or "-"


# ---------------------------------------------------------------- tables

class SafeTable(Table):
    """A rich table whose string cells are plain text: never parsed as markup, control characters
    escaped. (``Text`` cells are taken as they are: build them with :func:`plain` or :func:`line`.)"""

    def add_row(self, *renderables: RenderableType | None, style: StyleType | None = None,
                end_section: bool = False) -> None:
        super().add_row(*(plain(cell) if isinstance(cell, str) else cell for cell in renderables),
                        style=style, end_section=end_section)


def new_table(title: str) -> SafeTable:
    """The one table style of swarmctl."""
    return SafeTable(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD)


def grid() -> Table:
    """Two columns, key and value, no borders (for one object's details)."""
    table = SafeTable.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    return table


def clusters_table(infos: Iterable[ClusterInfo]) -> Table:
    table = new_table("clusters")
    for column in ("ID", "ENDPOINT", "REGION", "STATUS", "GPUS", "AGENTS", "COST", "RTT", "LAST HEARTBEAT"):
        table.add_column(column, no_wrap=column in ("ID", "STATUS"))
    for info in infos:
        c, h = info.cluster, info.health
        gpus = ",".join(c.capabilities.gpu_types or h.capacity.gpu_types) or ("yes" if c.capabilities.gpu else "-")
        table.add_row(c.id, c.endpoint or "(this ray cluster)", c.region, cluster_status(h.status), gpus,
                      f"{info.agents}/{c.max_agents}", cost(c.cost_per_hour), latency(h.rtt_ms),
                      ago(h.last_success_at))
    return table


def health_table(states: Iterable[ClusterHealthState]) -> Table:
    table = new_table("cluster health")
    for column in ("CLUSTER", "STATUS", "RTT", "FAILS", "OKS", "LAST OK", "FREE CPUS", "FREE GPUS", "LAST ERROR"):
        table.add_column(column)
    for s in states:
        free_gpus = ",".join(f"{t}:{n:g}" for t, n in s.capacity.free_gpus.items()) or "-"
        table.add_row(s.cluster_id, cluster_status(s.status), latency(s.rtt_ms), str(s.consecutive_failures),
                      str(s.consecutive_successes), ago(s.last_success_at), f"{s.capacity.free_cpus:g}",
                      free_gpus, plain(s.last_error or "", "red"))
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
    table = grid()
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
                      plain(c.cluster_id, "bold green" if chosen else ""),
                      *(f"{c.factors[n]:.1f}" if n in c.factors else "-" for n in factors),
                      Text(f"{c.score:.1f}", style="bold" if chosen else ""))
    return table


def rejections_table(decision: PlacementDecision) -> Table:
    table = new_table("rejected")
    table.add_column("CLUSTER", no_wrap=True)
    table.add_column("REASON")
    for cluster_id, reason in sorted(decision.rejections.items()):
        table.add_row(cluster_id, plain(reason, "red"))
    return table


def regions_table(regions: dict[str, list[str]], infos: Iterable[ClusterInfo]) -> Table:
    """Clusters by region, each id coloured by its status."""
    status = {info.cluster.id: info.health.status for info in infos}
    table = new_table("regions")
    table.add_column("REGION")
    table.add_column("CLUSTERS")
    for region, ids in regions.items():
        table.add_row(region, Text(", ").join(
            plain(cid, CLUSTER_STATUS_STYLE.get(status.get(cid, ClusterStatus.OFFLINE), "")) for cid in ids))
    return table


def print_placement(decision: PlacementDecision) -> None:
    console = out()
    if decision.candidates:
        console.print(placement_table(decision))
    if decision.rejections:
        console.print(rejections_table(decision))
    if decision.chosen:
        console.print(line("chosen: ", (decision.chosen, "bold green"),
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
                      ago(m.started_at), plain(m.error, "red"))
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
    return line((f"{event.seq:>6} ", "dim"), f"{stamp} ", (f"{event.type:<22}", style),
                " ".join(p for p in parts if p))


__all__ = [
    "EXIT_CODES",
    "JsonOption",
    "SafeTable",
    "StateDirOption",
    "agent_panel",
    "agent_status",
    "agents_table",
    "ago",
    "clean",
    "cluster_status",
    "clusters_table",
    "cost",
    "emit_json",
    "err",
    "event_line",
    "exit_code_for",
    "fail",
    "grid",
    "guarded",
    "health_table",
    "interactive",
    "journal_table",
    "jsonable",
    "latency",
    "line",
    "migrations_table",
    "new_table",
    "out",
    "placement_table",
    "plain",
    "print_placement",
    "regions_table",
    "rejections_table",
    "say",
    "seconds",
    "size",
    "stats_table",
]
