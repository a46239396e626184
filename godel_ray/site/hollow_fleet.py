"""Many hollow sites in one process: ``HollowFleet`` (async), ``FleetThread`` (a fleet on its own loop).

LOAD-TESTING TOOL, NEVER A PRODUCT PATH (see ``godel_ray.site.hollow``). Each hollow site is the
real gRPC stack (``rpc.server.build_server``: ClusterFederation, health, reflection, the bearer
token interceptor, the stream limiter) on its own port (bound on port 0) with its own token (a
0600 file, as ``swarmctl cluster add --auth-token-file`` wants), over a ``HollowRuntime``. All of a
fleet's servers share one asyncio loop.

``FleetThread`` runs a fleet on a background thread, for a driver (the bench, a test) that also
talks to Ray on its main thread; ``python -m godel_ray.site.hollow_fleet --sites N --dir D``
serves one in the foreground, writes ``D/manifest.json`` (name, endpoint, token file of each
site), prints ``hollow sites ready N`` and stops on SIGTERM/SIGINT (first writing, with
``--stats-out F``, when each site received its heartbeats); ``FleetProcess`` runs that as a child
process in its own session, so a bench's measurements and the fleet do not share one interpreter.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import resource
import secrets
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc.aio
from grpc_health.v1._async import HealthServicer

from godel_ray.raykit import heads
from godel_ray.rpc.server import build_server
from godel_ray.site.hollow import HollowRuntime, HollowShape
from godel_ray.site.launcher import write_token

T = TypeVar("T")

START_BATCH = 50  # servers started concurrently
STOP_GRACE_S = 1.0
FDS_PER_SITE = 8  # listening socket, the ClusterActor's channel, a registration probe, margin


@dataclass
class HollowSite:
    name: str
    runtime: HollowRuntime
    server: grpc.aio.Server
    port: int
    token_file: Path
    health: HealthServicer

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class HeartbeatStats:
    """Intervals between consecutive heartbeats a fleet's sites received (seconds, all sites pooled)."""

    sites: int
    beats: int
    intervals_s: list[float] = field(default_factory=list)

    def summary(self, configured_s: float) -> dict[str, float]:
        if not self.intervals_s:
            return {"sites": self.sites, "beats": self.beats}
        ordered = sorted(self.intervals_s)
        late = sum(1 for i in ordered if i > 1.5 * configured_s)
        return {"sites": self.sites, "beats": self.beats, "intervals": len(ordered),
                "p50_s": ordered[len(ordered) // 2], "p99_s": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
                "max_s": ordered[-1], "mean_s": statistics.fmean(ordered), "late_fraction": late / len(ordered)}


def interval_stats(times_by_site: dict[str, list[float]], since: float = 0.0, until: float = math.inf
                   ) -> HeartbeatStats:
    """Intervals between consecutive heartbeats each site received within ``[since, until]``."""
    stats = HeartbeatStats(sites=len(times_by_site), beats=0)
    for times in times_by_site.values():
        window = [t for t in times if since <= t <= until]
        stats.beats += len(window)
        stats.intervals_s += [b - a for a, b in itertools.pairwise(window)]
    return stats


def raise_fd_limit(sites: int) -> None:
    """Raise this process's open-file soft limit to what ``sites`` servers need (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, 256 + FDS_PER_SITE * sites)
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class HollowFleet:
    """Hollow sites on the current event loop. Names are ``<prefix>-<i>`` (DNS labels)."""

    def __init__(self, token_dir: Path, shape: HollowShape | None = None, prefix: str = "hollow") -> None:
        self.token_dir = token_dir
        self.shape = shape or HollowShape()
        self.prefix = prefix
        self.sites: list[HollowSite] = []

    async def _start_one(self, name: str) -> HollowSite:
        token_file = self.token_dir / f"{name}.token"
        token = write_token(token_file, secrets.token_urlsafe(24))
        runtime = HollowRuntime(name, self.shape)
        server, port, health = await build_server(runtime, token=token, port=0, cluster_id=name)
        return HollowSite(name=name, runtime=runtime, server=server, port=port, token_file=token_file,
                          health=health)

    async def start(self, count: int) -> list[HollowSite]:
        """Start ``count`` more sites; returns the new ones."""
        raise_fd_limit(len(self.sites) + count)
        self.token_dir.mkdir(parents=True, exist_ok=True)
        first = len(self.sites)
        new: list[HollowSite] = []
        try:
            for lo in range(first, first + count, START_BATCH):
                hi = min(first + count, lo + START_BATCH)
                new += await asyncio.gather(*(self._start_one(f"{self.prefix}-{i}") for i in range(lo, hi)))
        except BaseException:
            await asyncio.gather(*(s.server.stop(None) for s in new), return_exceptions=True)
            raise
        self.sites += new
        return new

    async def stop(self) -> None:
        sites, self.sites = self.sites, []
        for site in sites:
            await site.health.enter_graceful_shutdown()
        await asyncio.gather(*(s.server.stop(STOP_GRACE_S) for s in sites), return_exceptions=True)
        await asyncio.gather(*(s.runtime.close() for s in sites), return_exceptions=True)

    def manifest(self) -> list[dict[str, str]]:
        return [{"name": s.name, "endpoint": s.endpoint, "token_file": str(s.token_file)} for s in self.sites]

    def heartbeat_times(self) -> dict[str, list[float]]:
        """When each site received its heartbeats (monotonic seconds, oldest first)."""
        return {s.name: list(s.runtime.heartbeat_times) for s in self.sites}

    def heartbeat_stats(self, since: float = 0.0, until: float = math.inf) -> HeartbeatStats:
        return interval_stats(self.heartbeat_times(), since, until)

    def agents(self) -> int:
        """Agents (non-final records) the fleet hosts."""
        return sum(s.runtime.active_count() for s in self.sites)


class FleetThread:
    """A ``HollowFleet`` on its own asyncio loop in a daemon thread; ``run`` calls into that loop."""

    def __init__(self, token_dir: Path, shape: HollowShape | None = None, prefix: str = "hollow") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="hollow-fleet")
        self._thread.start()
        self.fleet = HollowFleet(token_dir, shape, prefix)

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout_s)

    def start(self, count: int, timeout_s: float = 300.0) -> list[HollowSite]:
        return self.run(self.fleet.start(count), timeout_s)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self.run(self.fleet.stop(), 60.0)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10.0)
            if not self._thread.is_alive():
                self._loop.close()


@dataclass
class FleetProcess:
    """``python -m godel_ray.site.hollow_fleet`` as a child process in its own session."""

    proc: subprocess.Popen[bytes]
    root: Path
    sites: list[dict[str, str]]

    @classmethod
    def start(cls, root: Path, sites: int, *, ready_timeout_s: float = 300.0, extra: list[str] | None = None
              ) -> FleetProcess:
        root.mkdir(parents=True, exist_ok=True)
        out = root / "fleet.log"
        with out.open("wb") as sink:
            proc = subprocess.Popen(
                [sys.executable, "-m", "godel_ray.site.hollow_fleet", "--sites", str(sites), "--dir", str(root),
                 "--stats-out", str(root / "stats.json"), *(extra or [])],
                stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + ready_timeout_s
        while b"hollow sites ready" not in out.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                heads.stop_session(proc.pid, grace_s=0.0)
                raise RuntimeError(f"hollow fleet did not start: {out.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
        return cls(proc=proc, root=root, sites=json.loads((root / "manifest.json").read_text()))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """SIGTERM, wait, then make sure nothing is left; returns the stats it wrote (``{}`` if none)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        heads.stop_session(self.proc.pid, grace_s=0.0)
        try:
            stats: dict[str, Any] = json.loads((self.root / "stats.json").read_text())
        except (OSError, ValueError):
            return {}
        return stats


async def _serve(args: argparse.Namespace) -> None:
    root = Path(args.dir)
    shape = HollowShape(cpus=args.cpus, gpus=args.gpus, gpu_type=args.gpu_type, max_agents=args.max_agents)
    fleet = HollowFleet(root / "tokens", shape, args.prefix)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await fleet.start(args.sites)
        (root / "manifest.json").write_text(json.dumps(fleet.manifest(), indent=1))
        print(f"hollow sites ready {len(fleet.sites)}", flush=True)
        await stop.wait()
    finally:
        if args.stats_out:
            Path(args.stats_out).write_text(json.dumps({"heartbeats": fleet.heartbeat_times(),
                                                        "agents": fleet.agents()}))
        await fleet.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m godel_ray.site.hollow_fleet",
                                     description="Hollow sites for load tests (never a product path).")
    parser.add_argument("--sites", type=int, required=True)
    parser.add_argument("--dir", required=True, help="token files and manifest.json go here")
    parser.add_argument("--prefix", default="hollow")
    parser.add_argument("--cpus", type=float, default=64.0)
    parser.add_argument("--gpus", type=int, default=0)
    parser.add_argument("--gpu-type", default=None)
    parser.add_argument("--max-agents", type=int, default=1000)
    parser.add_argument("--stats-out", default=None,
                        help="at exit, write each site's heartbeat times (monotonic s) here as JSON")
    args = parser.parse_args(argv)
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    asyncio.run(_serve(args))
    return 0


__all__ = ["FleetProcess", "FleetThread", "HeartbeatStats", "HollowFleet", "HollowSite", "interval_stats",
           "raise_fd_limit"]


if __name__ == "__main__":
    sys.exit(main())
