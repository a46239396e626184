"""Load: 1,000 concurrent execs over 50 agents on two real sites, through the control plane.

The chaos folder's control plane (``chaos_plane``) and two real site processes, each with its own Ray
cluster, on loopback. 50 agents (``cpus=0.01``) are pinned 25/25 to the sites, then 1,000 execs go
through the asyncio proxy with at most ``EXEC_CONCURRENCY`` in flight; each command echoes a unique
token, so a reply delivered to the wrong caller, lost or mixed up shows as a wrong output. The
latency percentiles are printed and recorded as test properties (no timing threshold).
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from godel_ray.client.proxy import TransparentClusterProxy
from godel_ray.models import AgentStatus, ExecResult, HealthSettings, SpawnConfig

pytestmark = [pytest.mark.chaos, pytest.mark.ray]

SITES = ("load-a", "load-b")
AGENTS_PER_SITE = 25
EXECS = 1_000
EXEC_CONCURRENCY = 100
SPAWN_CONCURRENCY = 4  # Ray starts a worker process per agent; a site starts ~2 at a time
AGENT_CPUS = 0.01
PHASE_TIMEOUT_S = 600.0  # a bound on each phase so the case always stops by itself


@dataclass
class LoadPlane:
    plane: Any  # conftest.ChaosPlane
    sites: dict[str, Any]

    @property
    def proxy(self) -> TransparentClusterProxy:
        return self.plane.proxy  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def load_plane(chaos_plane: Any, site_factory: Callable[..., Any]) -> Iterator[LoadPlane]:
    """The folder's control plane with two fresh sites registered (default health settings: this
    case is about load, not faults); both are unregistered again at the end."""
    sites = {name: site_factory(name, num_cpus=2) for name in SITES}
    registered = []
    try:
        for site in sites.values():
            chaos_plane.register(site, health=HealthSettings(), max_agents=AGENTS_PER_SITE + 5)
            registered.append(site.name)
        yield LoadPlane(plane=chaos_plane, sites=sites)
    finally:
        for name in registered:
            chaos_plane.proxy.registry.unregister(name, force=True)


def _bounded(limit: int, makes: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Run every coroutine factory with at most ``limit`` in flight; exceptions are returned, not raised."""
    async def main() -> list[Any]:
        gate = asyncio.Semaphore(limit)

        async def one(make: Callable[[], Awaitable[Any]]) -> Any:
            async with gate:
                return await make()

        return await asyncio.wait_for(asyncio.gather(*(one(m) for m in makes), return_exceptions=True),
                                      PHASE_TIMEOUT_S)
    return asyncio.run(main())


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))]


def test_a_thousand_concurrent_execs_over_fifty_agents_on_two_sites(
        load_plane: LoadPlane, record_property: Callable[[str, object], None]) -> None:
    """Proves: under 1,000 concurrent execs (``EXEC_CONCURRENCY`` in flight) spread over 50 agents
    on two sites, no exec fails and every caller gets exactly its own command's output."""
    run = uuid.uuid4().hex[:8]
    aio = load_plane.proxy.aio()
    configs = [SpawnConfig(model="load", cpus=AGENT_CPUS, cluster=site, labels={"load": run, "site": site})
               for site in SITES for _ in range(AGENTS_PER_SITE)]
    spawned = _bounded(SPAWN_CONCURRENCY, [lambda c=c: aio.spawn(c) for c in configs])
    failures = [s for s in spawned if isinstance(s, BaseException)]
    agents = [s for s in spawned if not isinstance(s, BaseException)]
    try:
        assert failures == [], f"{len(failures)} spawns failed, first: {failures[0]!r}"
        by_site = {site: sorted(a.id for a in agents if a.cluster_id == site) for site in SITES}
        assert {site: len(ids) for site, ids in by_site.items()} == {site: AGENTS_PER_SITE for site in SITES}

        tokens = [f"tok-{run}-{i:04d}" for i in range(EXECS)]
        targets = [agents[i % len(agents)].id for i in range(EXECS)]

        async def timed_exec(agent_id: str, token: str) -> tuple[ExecResult, float]:
            started = time.perf_counter()
            result = await aio.exec(agent_id, f"echo {token}")
            return result, time.perf_counter() - started

        wall_started = time.perf_counter()
        outcomes = _bounded(EXEC_CONCURRENCY, [lambda a=a, t=t: timed_exec(a, t) for a, t in zip(targets, tokens)])
        wall_s = time.perf_counter() - wall_started

        errors = [o for o in outcomes if isinstance(o, BaseException)]
        assert errors == [], f"{len(errors)} of {EXECS} execs failed, first: {errors[0]!r}"
        wrong = [(token, o[0]) for token, o in zip(tokens, outcomes)
                 if (o[0].exit_code, o[0].stdout, o[0].stderr) != (0, f"{token}\n", "")]
        assert wrong == [], f"{len(wrong)} execs returned the wrong output, first: {wrong[0]}"

        latencies_ms = sorted(o[1] * 1000.0 for o in outcomes)
        p50, p99 = _percentile(latencies_ms, 0.50), _percentile(latencies_ms, 0.99)
        summary = (f"load: {EXECS} execs over {len(agents)} agents on {len(SITES)} sites, "
                   f"{EXEC_CONCURRENCY} in flight: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
                   f"mean {statistics.fmean(latencies_ms):.1f} ms, {EXECS / wall_s:.0f} execs/s")
        print(summary)
        for key, value in (("exec_p50_ms", round(p50, 2)), ("exec_p99_ms", round(p99, 2)),
                           ("execs_per_s", round(EXECS / wall_s, 1)), ("execs", EXECS), ("agents", len(agents)),
                           ("concurrency", EXEC_CONCURRENCY)):
            record_property(key, value)
    finally:
        killed = _bounded(SPAWN_CONCURRENCY, [lambda a=a: aio.kill(a.id) for a in agents])
    kill_errors = [k for k in killed if isinstance(k, BaseException)]
    assert kill_errors == [], f"{len(kill_errors)} kills failed, first: {kill_errors[0]!r}"
    listed = load_plane.proxy.list(labels={"load": run})
    assert sorted(a.id for a in listed) == sorted(a.id for a in agents)  # every agent, none missing or extra
    assert {a.status for a in listed} == {AgentStatus.TERMINATED}
