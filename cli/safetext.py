"""Inert text for swarmctl: what a user or a site wrote is shown, never interpreted.

Nothing a user or a site supplied (ids, labels, commands, reasons, errors, event data) is parsed as
rich markup or reaches the terminal raw: it goes through :func:`clean` (control characters shown
escaped, e.g. ``\\x1b``) into ``rich.text.Text`` objects (:func:`plain`, :func:`line`), and every
table is a :class:`SafeTable`, whose string cells are plain text. Also the small formatters that
turn values into styled text (statuses, cost, latency, ages, sizes).
"""

from __future__ import annotations

import re
import time
from typing import TypeAlias

from rich import box
from rich.console import RenderableType
from rich.style import StyleType
from rich.table import Table
from rich.text import Text

from godel_ray.models import AgentStatus, ClusterStatus

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


__all__ = ["AGENT_STATUS_STYLE", "CLUSTER_STATUS_STYLE", "Part", "SafeTable", "agent_status", "ago", "clean",
           "cluster_status", "cost", "grid", "kv", "latency", "line", "new_table", "plain", "seconds", "size"]
