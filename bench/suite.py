"""The measurements: a federation on this machine (control plane + two sites) and each figure
next to its floor, measured in the same run.

``Federation`` starts the control plane (``controlplane.up``, with a local warm pool through
``GODEL_LOCAL_WARM_POOL``) and two sites (``sitelauncher.start_site`` with ``--warm-pool-size``),
registers the sites, and stops everything it started in ``close`` (``controlplane.down``,
``SiteProcess.terminate``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import ray

from bench import failover_bench, floors
from bench.failover_bench import FailoverOptions
from bench.memory_probe import bench_migration_memory
from bench.placement_bench import make_views, rate
from bench.sandbox_bench import agent_worker_pid, bench_sandbox
from bench.stats import Row, Target
from godel_ray.errors import FailedPrecondition, GodelError
from godel_ray.models import Cluster, Priority, SpawnConfig

SITES = ("site-a", "site-b")
SITE_CPUS = 4
LOCAL_CPUS = 8
WARM_POOL = 3  # per cluster, default resources (1 CPU)
TINY_CPUS = 0.01
SCALE_CONCURRENCY = 8  # spawns in flight: more makes 2 cores run past the site's RPC deadline
STREAM_COMMAND = "head -c 10M /dev/zero | base64"  # ~13.5 MB of output (under the 16 MB limit)
AGENT_PROCESS_MIB = 100  # what one idle agent (a Ray worker) costs, rounded up
MEMORY_MARGIN_MIB = 6 * 1024


@dataclass
class Options:
    quick: bool
    scale_n: int
    failover: FailoverOptions = field(default_factory=FailoverOptions)

    @property
    def reps(self) -> int:
        return 20 if self.quick else 100


class Federation:
    def __init__(self, root: Path) -> None:
        from godel_ray.client.proxy import connect
        from godel_ray.control import controlplane
        from godel_ray.site.launcher import start_site

        self.root = root
        self.state_dir = root / "state"
        self.sites: list[Any] = []
        self.controlplane = controlplane
        os.environ["GODEL_LOCAL_WARM_POOL"] = str(WARM_POOL)  # read by the local runtime
        try:
            for name in SITES:
                self.sites.append(start_site(root / "sites", name, num_cpus=SITE_CPUS, extra=[
                    "--warm-pool-size", str(WARM_POOL), "--max-agents", "400",
                    "--isolation", isolation()]))
            self.info = controlplane.up(self.state_dir, num_cpus=LOCAL_CPUS)
            self.proxy = connect(self.state_dir)
            # local's default max_agents is its CPU count; the scale test spreads hundreds of tiny agents
            self.proxy.registry.update("local", max_agents=400)
            for site in self.sites:
                self.proxy.registry.register(Cluster(id=site.name, endpoint=site.endpoint, max_agents=400,
                                                     auth_token_file=str(site.token_file)))
            self.wait_active()
        except BaseException:
            self.close()
            raise

    def wait_active(self, timeout_s: float = 90.0) -> None:
        """Wait until every cluster's health is active (a fresh cluster starts unproven)."""
        deadline = time.monotonic() + timeout_s
        while True:
            states = {h.cluster_id: h.status.value for h in self.proxy.registry.health()}
            if len(states) == len(SITES) + 1 and all(v == "active" for v in states.values()):
                return
            if time.monotonic() > deadline:
                print(f"warning: clusters not all active after {timeout_s:g} s: {states}", file=sys.stderr)
                return
            time.sleep(0.5)

    def close(self) -> None:
        try:
            self.controlplane.down(self.state_dir)
        except Exception as exc:  # noqa: BLE001 - keep stopping the rest
            print(f"warning: controlplane.down failed: {exc}", file=sys.stderr)
        for site in self.sites:
            site.terminate(timeout_s=20)
        os.environ.pop("GODEL_LOCAL_WARM_POOL", None)

    def spawn(self, cluster: str, cpus: float = TINY_CPUS, **kw: Any) -> Any:
        return self.proxy.spawn(SpawnConfig(cluster=cluster, cpus=cpus, **kw))

    def kill(self, agent_id: str) -> None:
        try:
            self.proxy.kill(agent_id)
        except GodelError as exc:
            print(f"warning: kill {agent_id}: {exc}", file=sys.stderr)


def isolation() -> str:
    """How every cluster of the bench runs commands: ``$GODEL_ISOLATION`` (sandbox unless ``none``),
    read by the local runtime and passed to the sites as ``--isolation``."""
    return "none" if os.environ.get("GODEL_ISOLATION", "").strip().lower() == "none" else "sandbox"


def _ms(samples: list[float]) -> list[float]:
    return [s * 1000 for s in samples]


# --- exec ----------------------------------------------------------------------------------------

def bench_exec(fed: Federation, opt: Options) -> list[Row]:
    actor = floors.raw_actor()
    raw_call = _ms(floors.timed(lambda: ray.get(actor.ping.remote()), opt.reps, warmup=5))
    raw_shell = _ms(floors.timed(lambda: ray.get(actor.shell.remote()), opt.reps, warmup=3))
    grpc_server = floors.RawGrpc()
    try:
        raw_grpc = _ms(grpc_server.unary(opt.reps))
    finally:
        grpc_server.close()
    ray.kill(actor)
    # remote floor: the gRPC hop plus an actor call that runs the shell (pairwise sums)
    remote_floor = [g + s for g, s in zip(sorted(raw_grpc), sorted(raw_shell), strict=False)]
    rows = [Row("raw actor call", "ms", raw_call, note="floor: plain @ray.remote method returning a value"),
            Row("raw gRPC unary (loopback)", "ms", raw_grpc),
            Row("raw actor call running bash -c true", "ms", raw_shell)]
    for cluster, floor_name, floor in (("local", "actor+bash", raw_shell),
                                       (SITES[0], "gRPC+actor+bash", remote_floor)):
        agent_id: str = fed.spawn(cluster).id
        try:
            samples = _ms(floors.timed(partial(fed.proxy.exec, agent_id, "true"), opt.reps, warmup=3))
        finally:
            fed.kill(agent_id)
        hops = "proxy -> AgentActor (one hop, cached handle)" if cluster == "local" else \
            "proxy -> ClusterActor -> gRPC unary Exec -> site -> AgentActor"
        rows.append(Row(f"exec `true` ({'local' if cluster == 'local' else 'remote'})", "ms", samples,
                        floor_name, floor, target=Target("ratio_max", 1.3),
                        note=f"path: {hops}; isolation {isolation()} (the floor runs bash bare)"))
    return rows


def bench_stream(fed: Federation, opt: Options) -> list[Row]:
    """``streamed output``: MB/s of a command's output through ``exec_stream`` (proxy -> ClusterActor ->
    [gRPC -> site ->] AgentActor), against the same command read through a plain local pipe."""
    from godel_ray.settings import LIMITS

    n = 3 if opt.quick else 5
    floor, size = floors.pipe_throughput(STREAM_COMMAND, n)
    rows = []
    for cluster in ("local", SITES[0]):
        agent = fed.spawn(cluster)
        rates, chunks, largest = [], 0, 0
        try:
            for _ in range(n):
                start, got, chunks = time.perf_counter(), 0, 0
                for chunk in fed.proxy.exec_stream(agent.id, STREAM_COMMAND):
                    if chunk.data:
                        piece = len(chunk.data.encode())
                        got, chunks, largest = got + piece, chunks + 1, max(largest, piece)
                rates.append(got / 1e6 / (time.perf_counter() - start))
        finally:
            fed.kill(agent.id)
        where = "local" if cluster == "local" else "remote"
        rows.append(Row(f"streamed output {size / 1e6:.1f} MB ({where})", "MB/s", rates, "local pipe", floor,
                        higher_is_better=True, target=Target("ratio_max", 2.0),
                        note=f"goal: >= 0.5x the pipe; {chunks} chunks, largest {largest / 1024:.0f} KiB "
                             f"(bound {LIMITS.exec_chunk_bytes // 1024} KiB)"))
    return rows


# --- spawn ---------------------------------------------------------------------------------------

def bench_spawn(fed: Federation, opt: Options) -> list[Row]:
    n = 5 if opt.quick else 15
    raw = _ms(floors.actor_creation(n))
    rows = []
    for cluster in ("local", SITES[0]):
        where = "local" if cluster == "local" else "remote"
        cold = []
        for _ in range(n):
            start = time.perf_counter()
            agent = fed.spawn(cluster)
            cold.append((time.perf_counter() - start) * 1000)
            fed.kill(agent.id)
        rows.append(Row(f"spawn cold ({where})", "ms", cold, "actor create+call", raw,
                        target=Target("ratio_max", 1.2)))
        warm: list[float] = []
        rounds = max(1, n // WARM_POOL)
        for _ in range(rounds):
            _wait_pool(fed, cluster)
            spawned = []
            for _ in range(WARM_POOL):  # default resources: served from the pool
                start = time.perf_counter()
                spawned.append(fed.proxy.spawn(SpawnConfig(cluster=cluster)))
                warm.append((time.perf_counter() - start) * 1000)
            for agent in spawned:
                fed.kill(agent.id)
        rows.append(Row(f"spawn warm pool ({where})", "ms", warm, "actor create+call", raw,
                        target=Target("max", 50.0),
                        note="" if warm else "no warm spawns measured"))
    return rows


def _wait_pool(fed: Federation, cluster: str, timeout_s: float = 30.0) -> None:
    """Give the pool time to refill (the bench may sleep; tests may not)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = {s.cluster_id: s for s in fed.proxy.registry.stats()}
        if cluster in stats and stats[cluster].capacity.warm_pool >= WARM_POOL:
            return
        time.sleep(0.5)


# --- placement -----------------------------------------------------------------------------------

def bench_placement(fed: Federation, opt: Options) -> list[Row]:
    seconds = 0.3 if opt.quick else 1.0
    reps = 3 if opt.quick else 5
    config = SpawnConfig(priority=Priority.LATENCY)
    rows = []
    for n in (10, 100, 1000):
        views = make_views(n)
        samples = [rate(config, views, seconds) for _ in range(reps)]
        rows.append(Row(f"placement pure, {n} clusters", "decisions/s", samples, higher_is_better=True,
                        target=Target("min", 10_000) if n == 100 else None))
    actor = floors.raw_actor()
    raw = _ms(floors.timed(lambda: ray.get(actor.ping.remote()), opt.reps, warmup=5))
    ray.kill(actor)
    plans = _ms(floors.timed(lambda: fed.proxy.registry.plan(config), opt.reps, warmup=3))
    clusters = len(fed.proxy.registry.list())
    rows.append(Row(f"placement via balancer (registry.plan), {clusters} clusters", "ms", plans,
                    "actor call", raw, note=f"{1000 / (sum(plans) / len(plans)):,.0f} decisions/s through the actor; "
                    "only the registered clusters can be planned over (registering needs a live site)"))
    return rows


# --- migration -----------------------------------------------------------------------------------

def bench_migration(fed: Federation, opt: Options) -> list[Row]:
    sizes_mb = (1, 200)
    n = 1 if opt.quick else 3
    rows = []
    actor = floors.raw_actor()
    grpc_server = floors.RawGrpc()
    try:
        for size in sizes_mb:
            data = os.urandom(size << 20)
            ray_rates = floors.ray_transfer(actor, data, n + 1)[1:]
            grpc_rates = grpc_server.stream(data, n + 1)[1:]
            del data
            rows.append(Row(f"raw ray.put/get {size} MB", "MB/s", ray_rates, higher_is_better=True))
            rows.append(Row(f"raw gRPC stream {size} MB (1 MB chunks)", "MB/s", grpc_rates, higher_is_better=True))
            rows.append(Row(f"tar stream pack+unpack {size} MB (agents/transfer, in-process pipeline)", "MB/s",
                            _tar_stream(size, n), "gRPC stream", grpc_rates, higher_is_better=True,
                            note="the v2 wire format alone: plain tar made as sent, unpacked as it arrives"))
            for source, target in (("local", SITES[0]), (SITES[1], "local")):
                name = f"migrate {size} MB {source} -> {target}"
                thr, down, err, precopy, phases = _migrate(fed, source, target, size, n)
                floor = grpc_rates if source != "local" or target != "local" else ray_rates
                if err:
                    rows.append(Row(f"{name} throughput", "MB/s", floor_name="gRPC stream", floor_samples=floor,
                                    unavailable=err, target=Target("ratio_max", 2.0)))
                    continue
                rows.append(Row(f"{name} throughput", "MB/s", thr, "gRPC stream", floor, higher_is_better=True,
                                target=Target("ratio_max", 2.0),
                                note=f"duration from the migration record (validate..commit..kill); phases {phases}"))
                if precopy:
                    rows.append(Row(f"{name} pre-copy phase", "MB/s", precopy, "gRPC stream", floor,
                                    higher_is_better=True, target=Target("ratio_max", 2.0),
                                    note="bytes streamed / time in the pre-copy phase (source running)"))
                rows.append(Row(f"{name} downtime", "s", down, note="freeze -> commit, from the record"))
    finally:
        grpc_server.close()
        ray.kill(actor)
    return rows


def _tar_stream(size_mb: int, n: int) -> list[float]:
    """MB/s of ``WorkdirStream`` piped into ``unpack_stream`` (4 MiB chunks, no compression)."""
    from godel_ray.agents.transfer import WorkdirStream, unpack_stream

    rates = []
    with tempfile.TemporaryDirectory(prefix="godel-bench-tar-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        (src / "blob").write_bytes(os.urandom(size_mb << 20))
        for i in range(n):
            stream = WorkdirStream(str(src))
            start = time.perf_counter()
            unpack_stream(iter(stream), str(Path(tmp) / f"dst{i}"), expected_sha256=lambda s=stream: s.sha256)
            rates.append(size_mb * 1.048576 / (time.perf_counter() - start))
    return rates


def _migrate(fed: Federation, source: str, target: str, size_mb: int, n: int
             ) -> tuple[list[float], list[float], str, list[float], str]:
    """(end-to-end MB/s, downtimes, why unavailable, pre-copy phase MB/s, the last move's phases)."""
    rates, downtimes, precopy = [], [], []
    phases = ""
    for _ in range(n):
        agent = fed.spawn(source)
        try:
            fed.proxy.exec(agent.id, f"head -c {size_mb}M /dev/urandom > blob")
            try:
                m = fed.proxy.migrate(agent.id, target)
            except FailedPrecondition as exc:
                return [], [], f"n/a (not available: {str(exc)[:60]})", [], ""
            except GodelError as exc:
                return [], [], f"n/a (failed: {str(exc)[:60]})", [], ""
            if m.error or m.finished_at is None:
                return [], [], f"n/a (failed: {m.error[:60]})", [], ""
            rates.append(m.bytes_moved / 1e6 / max(1e-6, m.finished_at - m.started_at))
            if m.downtime_s is not None:
                downtimes.append(m.downtime_s)
            spans = [(a.phase.value, b.at - a.at) for a, b in zip(m.phases, m.phases[1:], strict=False)]
            phases = ", ".join(f"{name} {span:.2f}s" for name, span in spans)
            copying = sum(span for name, span in spans if name == "precopying")
            if copying > 0:
                precopy.append(size_mb * 1.048576 / copying)
        finally:
            fed.kill(agent.id)
    return rates, downtimes, "", precopy, phases


# --- CLI -----------------------------------------------------------------------------------------

def _wall(cmd: list[str], env: dict[str, str], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        out.append(time.perf_counter() - start)
    return out


def bench_cli(fed: Federation, opt: Options) -> list[Row]:
    swarmctl = shutil.which("swarmctl")
    base = [swarmctl] if swarmctl else [sys.executable, "-m", "godel_cli.main"]
    env = dict(os.environ)
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        env.pop(key, None)
    ours = _wall([*base, "cluster", "list", "--state-dir", str(fed.state_dir)], env, 5)
    ray_env = dict(env, **fed.controlplane.env_for_clients(fed.state_dir))
    ray_bin = shutil.which("ray") or "ray"
    theirs = _wall([ray_bin, "status", "--address", fed.info.address], ray_env, 5)
    return [Row("swarmctl cluster list (wall)", "s", ours, "ray status", theirs, target=Target("max", 0.5))]


# --- memory --------------------------------------------------------------------------------------

def bench_memory(fed: Federation, opt: Options) -> list[Row]:
    actor = floors.raw_actor()
    raw_pid = ray.get(actor.pid.remote())
    agent = fed.spawn("local")
    try:
        time.sleep(1.0)  # let both settle (bench only)
        agent_pid = agent_worker_pid(fed, agent.id)  # $PPID inside the sandbox is not the host's pid
        uss, rss = floors.memory_kib(agent_pid)
        raw_uss, raw_rss = floors.memory_kib(raw_pid)
    finally:
        fed.kill(agent.id)
        ray.kill(actor)
    return [Row("idle agent USS", "MB", [uss / 1024], "raw actor USS", [raw_uss / 1024]),
            Row("idle agent RSS", "MB", [rss / 1024], "raw actor RSS", [raw_rss / 1024])]


# --- scale ---------------------------------------------------------------------------------------

def default_scale_n(requested: int) -> tuple[int, str]:
    """``requested`` agents, fewer if this machine's available memory cannot hold them with margin."""
    try:
        with open("/proc/meminfo") as f:
            avail_kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return requested, ""
    fits = max(10, (avail_kib // 1024 - MEMORY_MARGIN_MIB) // AGENT_PROCESS_MIB)
    if fits >= requested:
        return requested, ""
    return int(fits), (f"scale reduced from {requested} to {fits} agents: {avail_kib // 1024} MiB available, "
                       f"~{AGENT_PROCESS_MIB} MiB per agent process, {MEMORY_MARGIN_MIB} MiB kept free")


def bench_scale(fed: Federation, opt: Options) -> list[Row]:
    n = opt.scale_n
    clusters = ["local", *SITES]
    aio = fed.proxy.aio()

    async def run() -> tuple[list[float], float, list[float], float, int, int, Any]:
        sem = asyncio.Semaphore(SCALE_CONCURRENCY)
        spawn_lat: list[float] = []
        errors = 0

        async def one(i: int) -> Any:
            nonlocal errors
            async with sem:
                start = time.perf_counter()
                try:
                    agent = await aio.spawn(SpawnConfig(cluster=clusters[i % 3], cpus=TINY_CPUS,
                                                        labels={"bench": "scale"}))
                except GodelError as exc:
                    errors += 1
                    if errors <= 3:
                        print(f"warning: scale spawn failed: {exc}", file=sys.stderr)
                    return None
                spawn_lat.append((time.perf_counter() - start) * 1000)
                return agent

        start = time.perf_counter()
        agents = [a for a in await asyncio.gather(*(one(i) for i in range(n))) if a is not None]
        spawn_wall = time.perf_counter() - start
        exec_lat: list[float] = []
        exec_errors = 0

        async def ex(agent: Any) -> None:
            nonlocal exec_errors
            t0 = time.perf_counter()
            try:
                await aio.exec(agent.id, "true")
                exec_lat.append((time.perf_counter() - t0) * 1000)
            except GodelError:
                exec_errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(ex(a) for a in agents))
        exec_wall = time.perf_counter() - start
        return spawn_lat, spawn_wall, exec_lat, exec_wall, errors, exec_errors, agents

    spawn_lat, spawn_wall, exec_lat, exec_wall, errors, exec_errors, agents = asyncio.run(run())
    list_wall = floors.timed(lambda: fed.proxy.list(labels={"bench": "scale"}), 5, warmup=1)
    listed = len(fed.proxy.list(labels={"bench": "scale"}))

    async def kill_all() -> None:
        sem = asyncio.Semaphore(24)

        async def k(agent: Any) -> None:
            async with sem:
                try:
                    await aio.kill(agent.id)
                except GodelError:
                    pass
        await asyncio.gather(*(k(a) for a in agents))

    agents = fed.proxy.list(labels={"bench": "scale"})  # also any a timed-out spawn left behind
    asyncio.run(kill_all())
    spread = f"over {', '.join(clusters)}"
    return [
        Row(f"scale: spawn {n} agents (each)", "ms", spawn_lat,
            note=f"all {len(agents)}/{n} up in {spawn_wall:.1f} s {spread}, {SCALE_CONCURRENCY} at a time; {errors} errors"),
        Row(f"scale: exec on {len(agents)} at once (each)", "ms", exec_lat,
            note=f"all done in {exec_wall:.2f} s; {exec_errors} errors"),
        Row(f"scale: list {listed} agents", "s", list_wall),
    ]


def bench_failover(fed: Federation, opt: Options) -> list[Row]:
    """Faults injected into real sites (``bench.failover_bench``); its own sites, default health settings."""
    return failover_bench.run(fed, fed.root, opt.failover)


BENCHES: dict[str, Callable[[Federation, Options], list[Row]]] = {
    "exec": bench_exec, "stream": bench_stream, "spawn": bench_spawn, "placement": bench_placement,
    "migration": bench_migration, "cli": bench_cli, "memory": bench_memory, "scale": bench_scale,
    "sandbox": bench_sandbox,
}
BENCHES["failover"] = bench_failover
BENCHES["migration-memory"] = bench_migration_memory  # two ~1 GB moves: minutes on 2 cores
NAMED_ONLY = ("migration-memory",)  # in the shared federation, but only when named in --only


def workspace() -> Path:
    return Path(tempfile.mkdtemp(prefix="godel-bench-"))


__all__ = ["BENCHES", "NAMED_ONLY", "Federation", "Options", "default_scale_n", "workspace"]
