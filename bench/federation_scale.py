"""``federation-scale``: the control plane at federation scale, over hollow sites.

``python -m bench --only federation-scale [--sites N] [--agents N] [--heartbeat-interval S]``

Starts a real control plane (``controlplane.up``) and a hollow fleet (``site.hollow_fleet``, a
child process: real gRPC site servers over record-keeping runtimes), registers every hollow site
through the balancer (one ClusterActor each), puts ``local`` in maintenance so every placement goes
to a hollow site, then measures:

- registration: each ``registry.register`` (probe heartbeat + a new ClusterActor process);
- placement through the balancer: ``registry.plan`` (a decision over every registered cluster, one
  actor round trip; the raw actor call is its floor), idle and with every agent in the table;
  and unpinned ``spawn``s end to end (placement + the site's SpawnAgent over gRPC + the store);
- heartbeats: the intervals each hollow site saw between two heartbeats, during the spawn burst
  and in a quiet window after it, against the configured interval;
- the merged event stream: for each ``agent.spawned`` a hollow site emitted, the time until it was
  in the control plane's store (read with ``StateReader``, polled every ``TAIL_POLL_S``);
- memory (PSS: shared pages divided among the processes sharing them, so the sum over processes is
  what they cost together): the balancer and every ClusterActor, found by pid through Ray's state
  API; a bare Ray actor as the floor; what the godel import set adds to a Ray worker.

Sites are reduced, with a note, to what this machine's available memory holds.
"""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from bench import floors
from bench.import_probe import ImportProbe, pss_mib
from bench.stats import Row, Target, median
from godel_ray.errors import GodelError
from godel_ray.models import Cluster, HealthSettings, SpawnConfig

PLACEMENT_P99_TARGET_MS = 32.0  # Karmada's published scheduler figure at 100 clusters
REGISTER_CONCURRENCY = 4
SPAWN_CONCURRENCY = 16
PLAN_REPS = 200
TAIL_POLL_S = 0.1
EVENT_LAG_TARGET_MS = 2000.0  # two control-loop intervals
HEARTBEAT_LATE_FACTOR = 1.2
ACTIVE_TIMEOUT_S = 300.0
DRAIN_TIMEOUT_S = 120.0
QUIET_INTERVALS = 3
CLUSTER_ACTOR_MIB = 80  # budget per ClusterActor when fitting sites into memory (PSS ~55 MiB measured)
CONTROL_PLANE_MIB = 2048
MEMORY_MARGIN_MIB = 4096
SPAWNED = "agent.spawned"


@dataclass
class ScaleOptions:
    sites: int = 100
    agents: int = 1000
    heartbeat_interval_s: float = 5.0
    spawn_budget_s: float = 900.0  # no spawn starts after this: the figures say how many fitted
    notes: list[str] = field(default_factory=list)


def fit_sites(requested: int) -> tuple[int, str]:
    """``requested`` sites, fewer if this machine's available memory cannot hold their ClusterActors."""
    try:
        with open("/proc/meminfo") as f:
            avail_mib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:")) // 1024
    except (OSError, StopIteration, ValueError):
        return requested, ""
    fits = max(1, (avail_mib - CONTROL_PLANE_MIB - MEMORY_MARGIN_MIB) // CLUSTER_ACTOR_MIB)
    if fits >= requested:
        return requested, ""
    return fits, (f"federation-scale: sites reduced from {requested} to {fits}: {avail_mib} MiB available, "
                  f"~{CLUSTER_ACTOR_MIB} MiB budgeted per ClusterActor process, {MEMORY_MARGIN_MIB} MiB kept free")


# --- memory --------------------------------------------------------------------------------------

def control_pids(api_url: str) -> tuple[int | None, dict[str, int]]:
    """(the balancer's pid, ClusterActor pid by actor name), from Ray's state API at ``api_url``."""
    from ray.util.state import list_actors

    actors = list_actors(address=api_url, filters=[("state", "=", "ALIVE")], limit=10_000,
                         raise_on_missing_output=False)
    balancer = next((a.pid for a in actors if a.class_name == "MultiClusterLoadBalancer"), None)
    return balancer, {a.name: a.pid for a in actors if a.class_name == "ClusterActor" and a.name and a.pid}


# --- the event tail ------------------------------------------------------------------------------

class EventTail(threading.Thread):
    """Follows the merged event stream in the store; records each hollow ``agent.spawned``'s lag."""

    def __init__(self, state_dir: Path, clusters: set[str]) -> None:
        super().__init__(daemon=True, name="event-tail")
        self.state_dir, self.clusters = state_dir, clusters
        self.lags_ms: list[float] = []
        self.seen: set[str] = set()
        self.stop_flag = threading.Event()
        self.error = ""

    def run(self) -> None:
        try:
            self._follow()
        except Exception as exc:  # noqa: BLE001 - reported with the figure it breaks
            self.error = f"{type(exc).__name__}: {exc}"

    def _follow(self) -> None:
        from godel_ray.client.reader import StateReader

        reader = StateReader(self.state_dir)
        seq = 0
        try:
            while not self.stop_flag.is_set():
                batch = reader.events(seq, limit=10_000)
                now = time.time()
                for event in batch:
                    seq = event.seq
                    if event.type == SPAWNED and event.cluster_id in self.clusters:
                        self.lags_ms.append((now - event.ts) * 1000)
                        self.seen.add(event.agent_id)
                if len(batch) < 10_000:
                    self.stop_flag.wait(TAIL_POLL_S)
        finally:
            reader.close()


# --- the run -------------------------------------------------------------------------------------

async def _register(aio: Any, sites: list[dict[str, str]], interval_s: float) -> tuple[list[float], list[str]]:
    sem = asyncio.Semaphore(REGISTER_CONCURRENCY)
    lat: list[float] = []
    errors: list[str] = []
    health = HealthSettings(heartbeat_interval_s=interval_s)

    async def one(site: dict[str, str]) -> None:
        async with sem:
            start = time.perf_counter()
            try:
                await aio.registry.register(Cluster(id=site["name"], endpoint=site["endpoint"], region="hollow",
                                                    max_agents=1000, auth_token_file=site["token_file"],
                                                    health=health))
            except GodelError as exc:
                errors.append(f"{site['name']}: {exc}")
                return
            lat.append((time.perf_counter() - start) * 1000)

    await asyncio.gather(*(one(s) for s in sites))
    return lat, errors


async def _spawn(aio: Any, n: int, budget_s: float) -> tuple[list[float], list[Any], list[str], list[float]]:
    """Spawn up to ``n`` agents, ``SPAWN_CONCURRENCY`` at a time, none started after ``budget_s``.

    Returns latencies (ms), the agents, errors, and when each agent was acknowledged (s from the start).
    """
    sem = asyncio.Semaphore(SPAWN_CONCURRENCY)
    lat: list[float] = []
    agents: list[Any] = []
    errors: list[str] = []
    acked: list[float] = []
    began = time.perf_counter()

    async def one() -> None:
        async with sem:
            if time.perf_counter() - began > budget_s:
                return
            start = time.perf_counter()
            try:
                agent = await aio.spawn(SpawnConfig(cpus=0.01, labels={"bench": "federation-scale"}))
            except GodelError as exc:
                errors.append(str(exc)[:200])
                return
            lat.append((time.perf_counter() - start) * 1000)
            agents.append(agent)
            acked.append(time.perf_counter() - began)

    await asyncio.gather(*(one() for _ in range(n)))
    return lat, agents, errors, acked


def _rates(acked: list[float], bucket: int) -> list[float]:
    """Spawns per second over each successive ``bucket`` acknowledged agents."""
    out, last = [], 0.0
    for i in range(bucket, len(acked) + 1, bucket):
        out.append(bucket / max(acked[i - 1] - last, 1e-9))
        last = acked[i - 1]
    return out


def _wait_active(proxy: Any, names: set[str]) -> float:
    """Until every hollow cluster is active with the capacity its own heartbeat reported."""
    start = time.monotonic()
    while time.monotonic() - start < ACTIVE_TIMEOUT_S:
        states = {h.cluster_id: (h.status.value, h.capacity.name) for h in proxy.registry.health()}
        if all(states.get(n) == ("active", n) for n in names):
            break
        time.sleep(1.0)
    return time.monotonic() - start


def _plan_ms(proxy: Any, reps: int) -> list[float]:
    config = SpawnConfig(cpus=0.01)
    return [s * 1000 for s in floors.timed(lambda: proxy.registry.plan(config), reps, warmup=5)]


def run(opt: ScaleOptions) -> list[Row]:
    from godel_ray.client.proxy import connect
    from godel_ray.control import controlplane
    from godel_ray.site.hollow_fleet import FleetProcess, interval_stats

    sites_n, note = fit_sites(opt.sites)
    if note:
        opt.notes.append(note)
    root = Path(tempfile.mkdtemp(prefix="godel-fedscale-"))
    state_dir = root / "state"
    rows: list[Row] = []
    t0 = time.monotonic()
    print(f"federation-scale: {sites_n} hollow sites, {opt.agents} agents", file=sys.stderr, flush=True)
    fleet = FleetProcess.start(root / "fleet", sites_n)
    fleet_stats: dict[str, Any] = {}
    windows: dict[str, tuple[float, float]] = {}
    try:
        controlplane.up(state_dir, num_cpus=2)
        head = controlplane.read_head(state_dir)
        assert head is not None and head.dashboard_url
        api = head.dashboard_url
        proxy = connect(state_dir)
        aio = proxy.aio()
        proxy.registry.maintenance("local", True)  # every placement goes to a hollow site
        names = {s["name"] for s in fleet.sites}

        raw = floors.raw_actor(0)
        raw_call = [s * 1000 for s in floors.timed(lambda: ray.get(raw.ping.remote()), PLAN_REPS, warmup=5)]
        raw_pid = ray.get(raw.pid.remote())  # kept alive until the quiet window: its idle CPU is a floor

        start = time.perf_counter()
        reg_lat, reg_errors = asyncio.run(_register(aio, fleet.sites, opt.heartbeat_interval_s))
        reg_wall = time.perf_counter() - start
        active_s = _wait_active(proxy, names)
        print(f"federation-scale: {len(reg_lat)} registered in {reg_wall:.0f} s", file=sys.stderr, flush=True)
        rows.append(Row(f"register a hollow site ({len(reg_lat)} of {sites_n})", "ms", reg_lat,
                        note=f"all in {reg_wall:.1f} s, {REGISTER_CONCURRENCY} at a time "
                             f"({len(reg_lat) / max(reg_wall, 1e-9):.2f}/s); all active {active_s:.0f} s later; "
                             f"{len(reg_errors)} errors{': ' + reg_errors[0][:120] if reg_errors else ''}"))
        clusters = len(proxy.registry.list())
        balancer_pid, cas = control_pids(api)
        balancer_before = pss_mib(balancer_pid) if balancer_pid else 0.0
        cas_before = {n: pss_mib(p) for n, p in cas.items()}

        plans = _plan_ms(proxy, PLAN_REPS)
        rows.append(Row(f"placement via balancer (plan), {clusters} clusters, 0 agents", "ms", plans,
                        "actor call", raw_call, target=Target("p99_max", PLACEMENT_P99_TARGET_MS),
                        note="one decision over every registered cluster, through the BalancerActor"))

        tail = EventTail(state_dir, names)
        tail.start()
        burst_start = time.monotonic()
        start = time.perf_counter()
        spawn_lat, agents, spawn_errors, acked = asyncio.run(_spawn(aio, opt.agents, opt.spawn_budget_s))
        spawn_wall = time.perf_counter() - start
        burst_end = time.monotonic()
        windows["burst"] = (burst_start, burst_end)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while len(tail.seen & {a.id for a in agents}) < len(agents) and time.monotonic() < deadline:
            time.sleep(0.2)
        drain_s = time.monotonic() - burst_end
        got = len(tail.seen & {a.id for a in agents})
        per_cluster = collections.Counter(a.cluster_id for a in agents)
        rows.append(Row(f"spawn via balancer onto {clusters - 1} hollow sites (each)", "ms", spawn_lat,
                        note=f"{len(agents)}/{opt.agents} in {spawn_wall:.1f} s ({len(agents) / max(spawn_wall, 1e-9):.0f}/s), "
                             f"{SPAWN_CONCURRENCY} at a time; placed onto {len(per_cluster)} sites "
                             f"({min(per_cluster.values(), default=0)}..{max(per_cluster.values(), default=0)} each); "
                             f"{len(spawn_errors)} errors{': ' + spawn_errors[0] if spawn_errors else ''}"
                             + (f"; the {opt.spawn_budget_s:g} s spawn budget ran out" if len(agents) < opt.agents
                                and not spawn_errors else "")))
        bucket = max(1, opt.agents // 10)
        rows.append(Row(f"spawn rate per {bucket} agents, in order", "agents/s", _rates(acked, bucket),
                        higher_is_better=True,
                        note="successive buckets: " + ", ".join(f"{r:.1f}" for r in _rates(acked, bucket))))
        rows.append(Row("merged event stream lag (site emit -> control-plane store)", "ms", tail.lags_ms,
                        target=Target("p99_max", EVENT_LAG_TARGET_MS),
                        note=f"{got}/{len(agents)} agent.spawned events arrived; the last {drain_s:.1f} s after "
                             f"the last spawn returned; polled every {TAIL_POLL_S * 1000:.0f} ms"
                             + (f"; the tail failed: {tail.error[:200]}" if tail.error else "")))

        quiet_start = time.monotonic()
        cpu_before = {pid: cpu_s(pid) for pid in [balancer_pid or 0, raw_pid, *cas.values()]}
        time.sleep(QUIET_INTERVALS * opt.heartbeat_interval_s + 1.0)  # the bench may sleep: a quiet window
        windows["quiet"] = (quiet_start, time.monotonic())
        rows += _idle_cpu_rows(cpu_before, balancer_pid or 0, raw_pid, time.monotonic() - quiet_start, clusters)
        ray.kill(raw)
        tail.stop_flag.set()
        tail.join(10)
        plans = _plan_ms(proxy, PLAN_REPS)
        rows.append(Row(f"placement via balancer (plan), {clusters} clusters, {len(agents)} agents", "ms", plans,
                        "actor call", raw_call, target=Target("p99_max", PLACEMENT_P99_TARGET_MS)))
        rows += _memory_rows(api, balancer_before, cas_before, len(agents), state_dir, sites_n, opt)
    except Exception as exc:  # noqa: BLE001 - keep what was measured; say what failed
        traceback.print_exc()
        opt.notes.append(f"federation-scale: failed: {type(exc).__name__}: {str(exc)[:300]}")
    finally:
        try:
            controlplane.down(state_dir)
        finally:
            fleet_stats = fleet.stop()
            shutil.rmtree(root, ignore_errors=True)
    times = {k: list(v) for k, v in fleet_stats.get("heartbeats", {}).items()}
    for label, (lo, hi) in windows.items():
        stats = interval_stats(times, lo, hi)
        late = sum(1 for i in stats.intervals_s if i > HEARTBEAT_LATE_FACTOR * opt.heartbeat_interval_s)
        rows.append(Row(f"heartbeat interval at the site ({label}, configured {opt.heartbeat_interval_s:g} s)", "s",
                        stats.intervals_s, target=Target("p99_max", HEARTBEAT_LATE_FACTOR * opt.heartbeat_interval_s),
                        note=f"{stats.beats} heartbeats over {stats.sites} sites in {hi - lo:.0f} s; "
                             f"{late} intervals over {HEARTBEAT_LATE_FACTOR:g}x the configured one"
                             + ("; spawns and kills trigger an early heartbeat (capacity changed)"
                                if label == "burst" else "")))
    opt.notes.append(f"federation-scale: ran in {time.monotonic() - t0:.0f} s")
    return rows


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) ``pid`` has used; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _idle_cpu_rows(before: dict[int, float], balancer_pid: int, raw_pid: int, wall_s: float, clusters: int
                   ) -> list[Row]:
    """Share of one core the balancer, and all ClusterActors together, used in the quiet window."""
    used = {pid: 100 * (cpu_s(pid) - start) / wall_s for pid, start in before.items()}
    each = [v for pid, v in used.items() if pid not in (balancer_pid, raw_pid)]
    return [
        Row(f"balancer CPU with nothing to do, {clusters} clusters", "% core",
            [used.get(balancer_pid, 0.0)],
            note="one wait_changes long poll per cluster (answered on events and health news, a routine "
                 "heartbeat at most every 5 s); orphan sweeps only when a cluster is first seen or returns"),
        Row(f"all ClusterActors' CPU with nothing to do, {clusters} clusters", "% core", [sum(each)],
            note=f"{len(each)} processes: heartbeat loops, event streams, the balancer's long polls"),
        Row("one ClusterActor's CPU with nothing to do", "% core", each, "idle bare Ray actor",
            [used.get(raw_pid, 0.0)]),
    ]


def _memory_rows(api: str, balancer_before: float, cas_before: dict[str, float], agents: int,
                 state_dir: Path, sites: int, opt: ScaleOptions) -> list[Row]:
    balancer_pid, cas = control_pids(api)
    balancer_after = pss_mib(balancer_pid) if balancer_pid else 0.0
    hollow = {n: pss_mib(p) for n, p in cas.items() if n != "godel-cluster-local"}
    growth = [hollow[n] - cas_before[n] for n in hollow if n in cas_before]
    probe: Any = ray.remote(ImportProbe).options(num_cpus=0).remote()
    imports: dict[str, Any] = ray.get(probe.measure.remote())
    ray.kill(probe)
    per_ca = median(list(hollow.values())) or 0.0
    bare = imports["pss_before_mib"]  # a Ray worker that imported nothing of ours
    total = balancer_after + sum(hollow.values())
    store_bytes = sum(p.stat().st_size for p in state_dir.glob("*.db*"))
    at_1000 = balancer_after + 1000 * per_ca
    opt.notes.append(
        f"federation-scale memory: {len(hollow)} ClusterActors ~{per_ca:.0f} MiB PSS each (a bare Ray worker: "
        f"{bare:.0f} MiB), balancer {balancer_after:.0f} MiB: {total / 1024:.1f} GiB for {sites} sites; "
        f"1,000 sites would take ~{at_1000 / 1024:.0f} GiB ({1000 * per_ca / 1024:.0f} GiB of it ClusterActor "
        f"processes, one per cluster)")
    opt.notes.append(
        f"federation-scale imports: a Ray worker holds {imports['ray_worker_modules']} modules; a ClusterActor's "
        f"imports add {imports['added']} ({', '.join(f'{k} {v}' for k, v in imports['top'])}): "
        f"PSS {imports['pss_before_mib']:.1f} -> {imports['pss_after_mib']:.1f} MiB")
    return [
        Row("ClusterActor process PSS (each)", "MB", list(hollow.values()), "bare Ray worker", [bare],
            note=f"{len(hollow)} processes; projected at 1,000 sites: {1000 * per_ca / 1024:.0f} GiB"),
        Row("balancer process PSS", "MB", [balancer_after],
            note=f"{balancer_before:.0f} MiB before the agents; +{(balancer_after - balancer_before) * 1024 / max(agents, 1):.1f} "
                 f"KiB per agent"),
        Row("ClusterActor PSS growth per agent it carries", "KB",
            [g * 1024 / max(agents / max(len(hollow), 1), 1) for g in growth]),
        Row("state store on disk per agent", "KB", [store_bytes / 1024 / max(agents, 1)],
            note=f"{store_bytes / 1e6:.1f} MB for {agents} agents (SQLite + WAL)"),
    ]


__all__ = ["ScaleOptions", "fit_sites", "run"]
