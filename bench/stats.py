"""Rows of the benchmark table: a figure, its floor, the ratio between them, and the target.

Every row carries its raw samples; ``median``/``p99`` are computed here. ``ratio`` is always "how
many times worse than the floor": time ratios for times, floor/figure for rates (higher is better).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any


def median(samples: list[float]) -> float | None:
    return statistics.median(samples) if samples else None


def p99(samples: list[float]) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


@dataclass
class Target:
    """``kind``: "ratio_max" (ratio <= value), "max" (median <= value), "min" (median >= value) or
    "p99_max" (p99 <= value)."""

    kind: str
    value: float

    def text(self, unit: str) -> str:
        if self.kind == "ratio_max":
            return f"<= {self.value:g}x"
        if self.kind == "p99_max":
            return f"p99 < {self.value:,.4g} {unit}"
        return f"{'<' if self.kind == 'max' else '>='} {self.value:,.4g} {unit}"


@dataclass
class Row:
    name: str
    unit: str  # "ms", "s", "MB/s", "decisions/s", "MB"
    samples: list[float] = field(default_factory=list)
    floor_name: str = ""
    floor_samples: list[float] = field(default_factory=list)
    higher_is_better: bool = False
    target: Target | None = None
    note: str = ""
    unavailable: str = ""  # why the figure could not be measured ("n/a (...)")

    @property
    def median(self) -> float | None:
        return median(self.samples)

    @property
    def p99(self) -> float | None:
        return p99(self.samples)

    @property
    def floor_median(self) -> float | None:
        return median(self.floor_samples)

    @property
    def ratio(self) -> float | None:
        fig, floor = self.median, self.floor_median
        if fig is None or floor is None or fig <= 0 or floor <= 0:
            return None
        return floor / fig if self.higher_is_better else fig / floor

    @property
    def met(self) -> bool | None:
        if self.target is None or self.unavailable:
            return None
        if self.target.kind == "ratio_max":
            return None if self.ratio is None else self.ratio <= self.target.value
        value = self.p99 if self.target.kind == "p99_max" else self.median
        if value is None:
            return None
        return value >= self.target.value if self.target.kind == "min" else value <= self.target.value

    def miss_note(self) -> str:
        """How far a missed target is off, in words."""
        if self.met is not False or self.target is None:
            return ""
        if self.target.kind == "ratio_max" and self.ratio is not None:
            return f"missed by {self.ratio / self.target.value:.2f}x"
        value = self.p99 if self.target.kind == "p99_max" else self.median
        if value is not None:
            factor = value / self.target.value if self.target.kind != "min" else self.target.value / value
            return f"missed by {factor:.2f}x"
        return ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "unit": self.unit, "median": self.median, "p99": self.p99,
            "n": len(self.samples), "floor": self.floor_name, "floor_median": self.floor_median,
            "floor_p99": p99(self.floor_samples), "ratio": self.ratio,
            "target": self.target.text(self.unit) if self.target else None, "met": self.met,
            "note": " ".join(x for x in (self.miss_note(), self.note) if x),
            "unavailable": self.unavailable or None,
        }


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("decisions/s",):
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def render(rows: list[Row]) -> str:
    """A fixed-width table: figure, median, p99, floor median, ratio, target, met?"""
    header = ("figure", "unit", "median", "p99", "floor", "floor med", "ratio", "target", "met?")
    lines = []
    for row in rows:
        if row.unavailable:
            lines.append((row.name, row.unit, row.unavailable, "", row.floor_name, _fmt(row.floor_median, row.unit),
                          "", row.target.text(row.unit) if row.target else "", ""))
            continue
        met = {True: "yes", False: "NO", None: ""}[row.met]
        lines.append((row.name, row.unit, _fmt(row.median, row.unit), _fmt(row.p99, row.unit), row.floor_name,
                      _fmt(row.floor_median, row.unit), "" if row.ratio is None else f"{row.ratio:.2f}x",
                      row.target.text(row.unit) if row.target else "", met))
    widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(len(header))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in lines]
    notes = [f"- {r.name}: {' '.join(x for x in (r.miss_note(), r.note) if x)}" for r in rows
             if r.note or r.miss_note()]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)


__all__ = ["Row", "Target", "median", "p99", "render"]
