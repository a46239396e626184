"""Peak resident memory of the federation's processes while a large workdir moves (issue 11: "peak
memory of every process bounded by a few chunks whatever the workdir size").

``RssSampler`` reads ``/proc/<pid>/status`` (VmRSS, RssAnon) about every 50 ms for the driver and
every process of the bench's own sessions (the control plane's Ray head, each site's server and its
Ray head: ``heads.session_pids``), never another user's processes. ``bench_migration_memory`` fills
an agent's workdir with ~1 GB of incompressible data, moves it local -> site and site -> local under
the sampler, names the processes that matter (balancer, each ClusterActor, the source and target
AgentActor, the site servers, the driver) and reports each one's peak growth over its RSS just
before the move against ``BOUND_CHUNKS`` x ``transfer_chunk_bytes``.

RSS counts the shared object-store pages a process has touched (RssShmem) and file pages it maps
(RssFile) as well as its private memory (RssAnon): each process gets a row for its RSS growth and one
for its private growth, both against the bound.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from bench.sandbox_bench import agent_worker_pid
from bench.stats import Row, Target
from godel_ray.control.factory import CLUSTER_ACTOR_PREFIX
from godel_ray.errors import GodelError
from godel_ray.raykit import heads
from godel_ray.settings import LIMITS

SIZE_MIB = 1000  # "1 GB": a 1024 MiB file plus its tar headers is over max_snapshot_bytes (1 GiB)
BOUND_CHUNKS = 8  # "a few chunks" of growth per process
INTERVAL_S = 0.05
RESCAN_S = 0.5  # how often the sessions are walked again for processes started during the move
MIB = 1024 * 1024
WARM_CPUS = 1.0  # the default spawn size, which the bench's warm pools hold


FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")  # RSS = private + file-backed + shared pages


def read_rss(pid: int) -> dict[str, int] | None:
    """``FIELDS`` of ``pid`` in bytes, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in FIELDS:
            values[key] = int(rest.split()[0]) * 1024
    return values if len(values) == len(FIELDS) else None  # a zombie has none


def title(pid: int) -> str:
    """The process's command line (Ray workers set it to ``ray::Class.method``)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:80]


@dataclass
class ProcPeak:
    """One process's memory over a sampled window, per ``FIELDS`` entry: ``before`` when the window
    opened (``appeared``: it started inside the window, and ``before`` is its first sample) and the
    peak of each field on its own."""

    pid: int
    before: dict[str, int]
    peak: dict[str, int]
    appeared: bool

    def growth(self, key: str = "VmRSS") -> int:
        return self.peak[key] - self.before[key]


class RssSampler:
    """Samples the RSS of ``extra_pids`` and of every process in ``sids`` while open (a context manager).
    The first sample is taken synchronously on entry: it is each process's "before" figure."""

    def __init__(self, sids: list[int], extra_pids: list[int]) -> None:
        self._sids, self._extra = sids, extra_pids
        self._pids: set[int] = set()
        self.peaks: dict[int, ProcPeak] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _scan(self) -> None:
        self._pids = {*self._extra, *(p for sid in self._sids for p in heads.session_pids(sid))}

    def _sample(self, appeared: bool) -> None:
        for pid in list(self._pids):
            got = read_rss(pid)
            if got is None:
                continue
            peak = self.peaks.get(pid)
            if peak is None:
                self.peaks[pid] = ProcPeak(pid, got, dict(got), appeared)
            else:
                peak.peak = {key: max(peak.peak[key], got[key]) for key in FIELDS}
        self.samples += 1

    def _run(self) -> None:
        next_scan = time.monotonic() + RESCAN_S
        while not self._stop.wait(INTERVAL_S):
            if time.monotonic() >= next_scan:
                self._scan()
                next_scan = time.monotonic() + RESCAN_S
            self._sample(appeared=True)

    def __enter__(self) -> Self:
        self._scan()
        self._sample(appeared=False)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _children(pid: int) -> list[str]:
    try:
        return [c for task in os.listdir(f"/proc/{pid}/task")
                for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    except OSError:
        return []


def _wait_childless(pid: int, timeout_s: float = 30.0) -> None:
    """Poll until ``pid`` runs no command (no child process), with a deadline."""
    deadline = time.monotonic() + timeout_s
    while _children(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def _actor_pids(dashboard_url: str, pids: list[int]) -> dict[int, str]:
    """pid -> "balancer" / "ClusterActor <cluster>" for the control plane's actors, from Ray's state
    API on this control plane's dashboard; from the process titles when that cannot answer."""
    from ray.util.state import list_actors

    out = {}
    try:
        actors = list_actors(address=dashboard_url, detail=True, filters=[("state", "=", "ALIVE")], limit=1000)
    except Exception as exc:  # noqa: BLE001 - the titles still name the classes
        print(f"warning: ray state API: {exc}; naming actors by process title", file=sys.stderr)
        for pid in pids:
            for cls, label in (("MultiClusterLoadBalancer", "balancer"), ("ClusterActor", "ClusterActor")):
                if title(pid).startswith(f"ray::{cls}"):
                    out[pid] = label if label == "balancer" else f"{label} (pid {pid})"
        return out
    for actor in actors:
        cls, name, pid = actor.class_name, actor.name or "", actor.pid or 0
        if cls == "MultiClusterLoadBalancer" and pid:
            out[pid] = "balancer"
        elif cls == "ClusterActor" and pid:
            out[pid] = f"ClusterActor {name.removeprefix(CLUSTER_ACTOR_PREFIX) or pid}"
    return out


def _sessions(fed: Any) -> list[int]:
    sids = [fed.info.ray_pid]
    for site in fed.sites:
        sids += [site.proc.pid, *([site.head_sid] if site.head_sid else []), *site.worker_sids]
    return sids


def _labels(fed: Any, source_pid: int, target_pid: int | None, sampled: list[int]) -> dict[int, str]:
    labels = {os.getpid(): "driver (bench)", **_actor_pids(fed.info.dashboard_url, sampled)}
    labels.update({site.proc.pid: f"site server {site.name}" for site in fed.sites})
    labels[source_pid] = "source AgentActor"
    if target_pid is not None:
        labels[target_pid] = "target AgentActor"
    return labels


def _move(fed: Any, source: str, target: str, bound: int) -> list[Row]:
    """One measured move of a ~1 GB workdir from ``source`` to ``target``."""
    name = f"rss {SIZE_MIB} MiB {source} -> {target}"
    agent = fed.spawn(source, cpus=WARM_CPUS)  # the target's warm pool holds this size: no cold start
    try:
        # incompressible data; `head` writes it in its own small pieces (no process holds it whole)
        fed.proxy.exec(agent.id, f"head -c {SIZE_MIB}M /dev/urandom > blob", timeout_s=600)
        source_pid = agent_worker_pid(fed, agent.id)
        _wait_childless(source_pid)  # agent_worker_pid's `sleep 5.xxxx` ended: the freeze would wait for it
        started = time.monotonic()
        with RssSampler(_sessions(fed), [os.getpid()]) as sampler:
            try:
                m = fed.proxy.migrate(agent.id, target)
            except GodelError as exc:
                return [Row(f"{name}: move", "s", unavailable=f"n/a (failed: {str(exc)[:60]})")]
        wall = time.monotonic() - started
        if m.error or m.finished_at is None:
            return [Row(f"{name}: move", "s", unavailable=f"n/a (failed: {(m.error or 'unfinished')[:60]})")]
        target_pid = agent_worker_pid(fed, agent.id)
        labels = _labels(fed, source_pid, target_pid, list(sampler.peaks))
    finally:
        fed.kill(agent.id)
    rate = m.bytes_moved / 1e6 / max(1e-6, m.finished_at - m.started_at)
    rows = [Row(f"{name}: move", "s", [wall], note=f"{m.bytes_moved / 1e6:,.0f} MB at {rate:.1f} MB/s; "
                f"downtime {m.downtime_s or 0:.2f} s; {sampler.samples} RSS samples every "
                f"{INTERVAL_S * 1000:.0f} ms")]
    for pid, label in sorted(labels.items(), key=lambda kv: kv[1]):
        peak = sampler.peaks.get(pid)
        if peak is None:
            rows.append(Row(f"{name}: {label} RSS growth", "MiB", unavailable=f"n/a (pid {pid} not sampled)"))
            continue
        rows += _rows(f"{name}: {label}", peak, bound, "")
    # the other processes that were up before the move (one started during it, a warm-pool refill
    # say, grows by its own start-up, not by the move)
    others = [p for pid, p in sampler.peaks.items() if pid not in labels and not p.appeared]
    started = sum(1 for pid, p in sampler.peaks.items() if pid not in labels and p.appeared)
    if others:
        top = max(others, key=lambda p: p.growth())
        rows += _rows(f"{name}: largest other process", top, bound,
                      f"{title(top.pid)!r} (pid {top.pid}) of {len(others)} others ({started} more started "
                      "during the move, not counted); ")
    return rows


def _rows(name: str, peak: ProcPeak, bound: int, prefix: str) -> list[Row]:
    """The RSS growth (what issue 11 asks) and the private part of it (RssAnon), each against ``bound``."""
    start = "first seen (started during the move)" if peak.appeared else "before"
    rss_note = (f"peak {peak.peak['VmRSS'] / MIB:,.0f} MiB, {start} {peak.before['VmRSS'] / MIB:,.0f} MiB; "
                f"growth of shared (RssShmem) {peak.growth('RssShmem') / MIB:,.1f}, "
                f"file-backed (RssFile) {peak.growth('RssFile') / MIB:,.1f} MiB")
    return [Row(f"{name} RSS growth", "MiB", [peak.growth() / MIB], target=Target("max", bound / MIB),
                note=prefix + rss_note),
            Row(f"{name} private (RssAnon) growth", "MiB", [peak.growth("RssAnon") / MIB],
                target=Target("max", bound / MIB))]


def bench_migration_memory(fed: Any, opt: Any) -> list[Row]:
    """Per-process peak RSS during a ~1 GB move each way (local -> site-a, site-b -> local)."""
    bound = BOUND_CHUNKS * LIMITS.transfer_chunk_bytes
    free = os.statvfs(str(fed.root)).f_bavail * os.statvfs(str(fed.root)).f_frsize
    if free < 4 * SIZE_MIB * MIB:
        return [Row("rss moves", "s", unavailable=f"n/a (only {free / MIB:,.0f} MiB free under {fed.root})")]
    print(f"bench: migration-memory bound {BOUND_CHUNKS} x {LIMITS.transfer_chunk_bytes / MIB:g} MiB "
          "growth per process", file=sys.stderr, flush=True)
    rows = []
    for source, target in (("local", fed.sites[0].name), (fed.sites[1].name, "local")):
        rows += _move(fed, source, target, bound)
    return rows


__all__ = ["RssSampler", "bench_migration_memory", "read_rss"]
