"""The capacity ledger: what the federation holds on each cluster, so that freed room is usable at once.

A site reports its capacity in heartbeats, but a heartbeat is up to an interval old, and Ray's own
view of free resources lags an actor's start or end. The ledger closes the gap. A spawn *reserves*
CPUs, GPUs by type and an agent slot on its cluster the moment it is placed (in flight until the
cluster answered); a kill, an exit, a failure or a move *releases* them the moment the balancer
writes it. Placement reads ``capacity(cluster_id)``:

    the last quiet report, moved by what the ledger changed since that report was taken

A report is *quiet* when nothing changed on its cluster for ``settle_s`` before it was measured and
no reservation is in flight: it then reflects every hold, so it becomes the new baseline, and the
site's truth wins wherever the two disagree (an agent that ended unseen, another workload on the
site's Ray). The balancer passes the cluster's heartbeat interval (at least a couple of seconds, the
lag of Ray's own view) as ``settle_s``: a disagreement outlives the last change by about one heartbeat. Before its first report a cluster's capacity is
unknown (``None``: placement reads the cluster's health as it is).

Pure: no Ray, no I/O, no clock (times are passed in).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from godel_ray.core.placement import gpu_type_matches
from godel_ray.models import Agent, SiteCapacity, SpawnConfig


@dataclass(frozen=True)
class Demand:
    """What one agent holds on its cluster: CPUs, GPUs (of the site's type ``gpu_key``) and a slot."""

    cpus: float = 0.0
    gpus: float = 0.0
    gpu_type: str | None = None  # as the request spells it

    @classmethod
    def of(cls, config: SpawnConfig) -> Demand:
        return cls(cpus=config.cpus, gpus=float(config.num_gpus), gpu_type=config.gpu_type if config.needs_gpu
                   else None)


@dataclass(frozen=True)
class _Hold:
    demand: Demand
    gpu_key: str | None  # the site's spelling of the GPU type taken (None: no GPU, or types unknown)


@dataclass(frozen=True)
class _Totals:
    agents: int = 0
    cpus: float = 0.0
    gpus: tuple[tuple[str, float], ...] = ()

    @classmethod
    def of(cls, holds: dict[str, _Hold]) -> _Totals:
        gpus: dict[str, float] = {}
        cpus = 0.0
        for hold in holds.values():
            cpus += hold.demand.cpus
            if hold.gpu_key is not None:
                gpus[hold.gpu_key] = gpus.get(hold.gpu_key, 0.0) + hold.demand.gpus
        return cls(agents=len(holds), cpus=cpus, gpus=tuple(sorted(gpus.items())))


@dataclass
class _ClusterBook:
    holds: dict[str, _Hold] = field(default_factory=dict)  # agent id -> what it holds here
    in_flight: set[str] = field(default_factory=set)  # reservations whose operation has not answered
    last_change_at: float = -math.inf
    latest: SiteCapacity | None = None
    baseline: SiteCapacity | None = None
    held_at_baseline: _Totals = field(default_factory=_Totals)
    version: int = 0
    view: SiteCapacity | None = None
    view_version: int = -1


def _clamp(value: float, high: float) -> float:
    return max(0.0, min(value, high)) if high > 0 else max(0.0, value)


class CapacityLedger:
    """Holds per cluster, reconciled with the sites' reports.

    Invariants: an agent holds on a cluster at most once (``hold`` is idempotent); ``release`` of
    what is not held is a no-op; the view never shows less than 0 or more than the site's total;
    ``version(cluster_id)`` rises on every change that can alter the view (callers cache on it).
    Single-threaded: the balancer's event loop is its only user, and a reserve happens in the same
    step as the placement that chose the cluster, so two spawns can never take one last slot.
    """

    def __init__(self) -> None:
        self._books: dict[str, _ClusterBook] = {}

    def _book(self, cluster_id: str) -> _ClusterBook:
        book = self._books.get(cluster_id)
        if book is None:
            book = self._books[cluster_id] = _ClusterBook()
        return book

    def _changed(self, book: _ClusterBook, now: float) -> None:
        book.last_change_at = max(book.last_change_at, now)
        book.version += 1

    # --- holds ------------------------------------------------------------------------------------

    def hold(self, cluster_id: str, agent_id: str, demand: Demand, now: float, *, in_flight: bool = False) -> None:
        """``agent_id`` holds ``demand`` on ``cluster_id`` (reserved in flight, or settled)."""
        book = self._book(cluster_id)
        if agent_id not in book.holds:
            book.holds[agent_id] = _Hold(demand, _gpu_key(demand, book.latest))
            if in_flight:
                book.in_flight.add(agent_id)
        elif not in_flight:
            book.in_flight.discard(agent_id)
        self._changed(book, now)

    def settle(self, cluster_id: str, agent_id: str, now: float) -> None:
        """The operation behind a reservation answered (the agent exists there now, or never will)."""
        book = self._books.get(cluster_id)
        if book is not None and agent_id in book.in_flight:
            book.in_flight.discard(agent_id)
            self._changed(book, now)

    def release(self, cluster_id: str, agent_id: str, now: float) -> None:
        book = self._books.get(cluster_id)
        if book is not None and agent_id in book.holds:
            del book.holds[agent_id]
            book.in_flight.discard(agent_id)
            self._changed(book, now)

    def track(self, previous: Agent | None, new: Agent, now: float) -> None:
        """Follow an agent row change: a live agent holds on its cluster; a final one holds nowhere."""
        before = previous.cluster_id if previous is not None and not previous.status.is_final else None
        after = new.cluster_id if not new.status.is_final else None
        if before is not None and before != after:
            self.release(before, new.id, now)
        if after is not None:
            book = self._books.get(after)
            if book is None or new.id not in book.holds or new.id in book.in_flight:
                self.hold(after, new.id, Demand.of(new.config), now)

    def holds(self, cluster_id: str) -> int:
        """Agent slots held on ``cluster_id`` (live agents placed there, and reservations)."""
        book = self._books.get(cluster_id)
        return len(book.holds) if book is not None else 0

    def forget(self, cluster_id: str) -> None:
        self._books.pop(cluster_id, None)

    # --- reports ------------------------------------------------------------------------------------

    def report(self, cluster_id: str, capacity: SiteCapacity, measured_at: float, settle_s: float) -> None:
        """A heartbeat's capacity, measured at ``measured_at``; a quiet one becomes the baseline."""
        book = self._book(cluster_id)
        changed = capacity != book.latest
        book.latest = capacity
        quiet = not book.in_flight and book.last_change_at <= measured_at - settle_s
        if quiet or (book.baseline is None and not book.in_flight):
            held = _Totals.of(book.holds)
            if (book.baseline, book.held_at_baseline) != (capacity, held):
                book.baseline, book.held_at_baseline = capacity, held
                changed = True
        if changed:
            book.version += 1

    def version(self, cluster_id: str) -> int:
        book = self._books.get(cluster_id)
        return book.version if book is not None else 0

    def capacity(self, cluster_id: str) -> SiteCapacity | None:
        """The site's capacity as the ledger sees it now (None before a usable report)."""
        book = self._books.get(cluster_id)
        if book is None or book.latest is None or book.baseline is None:
            return None
        if book.view_version != book.version:
            book.view = _adjusted(book.latest, book.baseline, book.held_at_baseline, _Totals.of(book.holds))
            book.view_version = book.version
        return book.view


def _gpu_key(demand: Demand, report: SiteCapacity | None) -> str | None:
    """The site's GPU type an agent with ``demand`` takes: the asked type as the site spells it, or
    (no type asked) the type with the most free GPUs."""
    if demand.gpus <= 0 or report is None:
        return None
    free = report.free_gpus or {t: 0.0 for t in report.gpu_types}
    if demand.gpu_type is not None:
        return next((t for t in sorted(free) if gpu_type_matches(demand.gpu_type, t)), None)
    return max(sorted(free), key=lambda t: free[t], default=None)


def _adjusted(latest: SiteCapacity, baseline: SiteCapacity, held_then: _Totals, held_now: _Totals) -> SiteCapacity:
    """``latest``'s sizes with the baseline's use, moved by the holds that changed since."""
    d_agents = held_now.agents - held_then.agents
    d_cpus = held_now.cpus - held_then.cpus
    d_gpus = dict(held_now.gpus)
    for gpu_type, n in held_then.gpus:
        d_gpus[gpu_type] = d_gpus.get(gpu_type, 0.0) - n
    active = max(0, baseline.active_agents + d_agents)
    available = max(0, latest.max_agents - active) if latest.max_agents > 0 else latest.available_agents
    free_gpus = {t: _clamp(n - d_gpus.get(t, 0.0), latest.total_gpus) for t, n in baseline.free_gpus.items()}
    return latest.model_copy(update={
        "active_agents": active, "available_agents": available, "free_gpus": free_gpus,
        "free_cpus": _clamp(baseline.free_cpus - d_cpus, latest.total_cpus)})


__all__ = ["CapacityLedger", "Demand"]
