"""The federation's metrics, through Ray's metrics system (``ray.util.metrics``): the one place they are defined.

Ray exports them on each node's metrics port (``RayHead.metrics_port``, also in
``<state_dir>/control.json``) in Prometheus text format, with Ray's ``ray_`` prefix:

=======================================  =========  ==========================  =====================================
exported name                            type       labels                      what
=======================================  =========  ==========================  =====================================
``ray_godel_placements_total``           counter    ``cluster``, ``rule``       agents placed, by cluster and rule
``ray_godel_exec_latency_seconds``       histogram  ``cluster``                 wall time of one ``exec`` on a cluster
``ray_godel_heartbeat_rtt_ms``           gauge      ``cluster``                 last heartbeat round trip
``ray_godel_cluster_status``             gauge      ``cluster``, ``status``     1 for the cluster's status, 0 others
``ray_godel_migrations_total``           counter    ``outcome``                 migrations by outcome
``ray_godel_migration_downtime_seconds`` histogram  ``outcome``                 downtime of each migration
``ray_godel_failovers_total``            counter    ``cluster``, ``outcome``    failover restores, by source cluster
=======================================  =========  ==========================  =====================================

Every function is safe to call from anywhere: the metric objects are created lazily on the first
call in a process that is a connected Ray worker (``ray.util.metrics`` needs one; the control
actors are), and nothing here ever raises into the caller: a failure is logged once and the
observation dropped. Outside a Ray worker every call is a no-op. Importing this module does not
import Ray.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)

PREFIX = "godel_"
CLUSTER_STATUSES = ("active", "degraded", "offline", "maintenance")
EXEC_LATENCY_BOUNDARIES_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0]
DOWNTIME_BOUNDARIES_S = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]

_lock = threading.Lock()
_metrics: dict[str, Any] | None = None
_warned: set[str] = set()


def _create() -> dict[str, Any] | None:
    """The metric objects, or None when this process is not a connected Ray worker."""
    import ray
    from ray.util.metrics import Counter, Gauge, Histogram

    if not ray.is_initialized():
        return None
    return {
        "placements": Counter(PREFIX + "placements", "Agents placed, by cluster and placement rule.",
                              tag_keys=("cluster", "rule")),
        "exec_latency": Histogram(PREFIX + "exec_latency_seconds", "Wall time of one exec on a cluster.",
                                  boundaries=EXEC_LATENCY_BOUNDARIES_S, tag_keys=("cluster",)),
        "heartbeat_rtt": Gauge(PREFIX + "heartbeat_rtt_ms", "Last heartbeat round trip to a cluster, ms.",
                               tag_keys=("cluster",)),
        "cluster_status": Gauge(PREFIX + "cluster_status", "1 for a cluster's current status, 0 for the others.",
                                tag_keys=("cluster", "status")),
        "migrations": Counter(PREFIX + "migrations", "Migrations, by outcome.", tag_keys=("outcome",)),
        "migration_downtime": Histogram(PREFIX + "migration_downtime_seconds", "Downtime of each migration.",
                                        boundaries=DOWNTIME_BOUNDARIES_S, tag_keys=("outcome",)),
        "failovers": Counter(PREFIX + "failovers", "Agents failed over from a lost cluster, by outcome.",
                             tag_keys=("cluster", "outcome")),
    }


def _get() -> dict[str, Any] | None:
    global _metrics
    if _metrics is None:
        with _lock:
            if _metrics is None:
                _metrics = _create()
    return _metrics


def _record(what: str, method: str, value: float, tags: dict[str, str]) -> None:
    try:
        metrics = _get()
        if metrics is not None:
            getattr(metrics[what], method)(value, tags=tags)
    except Exception as exc:  # noqa: BLE001 -- metrics must never break the operation they describe
        if what not in _warned:
            _warned.add(what)
            log.warning("metric %s not recorded (%s: %s); further failures are silent", what,
                        type(exc).__name__, exc)


def _text(value: object) -> str:
    return str(getattr(value, "value", value))  # enums carry their value


def record_placement(cluster_id: str, rule: object) -> None:
    """An agent was placed on ``cluster_id`` by placement ``rule`` (e.g. ``local-first``, ``best-score``)."""
    _record("placements", "inc", 1.0, {"cluster": cluster_id, "rule": _text(rule) or "unknown"})


def observe_exec_latency(cluster_id: str, seconds: float) -> None:
    """One exec on ``cluster_id`` took ``seconds`` (wall time, as the control plane saw it)."""
    _record("exec_latency", "observe", max(0.0, float(seconds)), {"cluster": cluster_id})


def set_heartbeat_rtt(cluster_id: str, ms: float) -> None:
    """The last successful heartbeat to ``cluster_id`` took ``ms`` milliseconds."""
    _record("heartbeat_rtt", "set", float(ms), {"cluster": cluster_id})


def set_cluster_status(cluster_id: str, status: object) -> None:
    """``cluster_id`` is now in ``status`` (a ``ClusterStatus`` or its value): that series 1, the others 0."""
    current = _text(status)
    for name in dict.fromkeys((*CLUSTER_STATUSES, current)):
        _record("cluster_status", "set", 1.0 if name == current else 0.0, {"cluster": cluster_id, "status": name})


def record_migration(outcome: object, downtime_s: float | None) -> None:
    """A migration ended with ``outcome`` (``completed``, ``rolled_back``, ``failed``) after ``downtime_s``."""
    tags = {"outcome": _text(outcome)}
    _record("migrations", "inc", 1.0, tags)
    if downtime_s is not None:
        _record("migration_downtime", "observe", max(0.0, float(downtime_s)), tags)


def record_failover(cluster_id: str, outcome: object) -> None:
    """An agent of lost cluster ``cluster_id`` was failed over with ``outcome`` (``restored``, ``failed``)."""
    _record("failovers", "inc", 1.0, {"cluster": cluster_id, "outcome": _text(outcome)})


__all__ = [
    "CLUSTER_STATUSES",
    "observe_exec_latency",
    "record_failover",
    "record_migration",
    "record_placement",
    "set_cluster_status",
    "set_heartbeat_rtt",
]
