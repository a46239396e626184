"""kill -9 of a site in the middle of a streaming exec.

Proves: the caller of ``exec_stream`` gets ``ClusterUnavailable`` (a GodelError, not a Ray or gRPC
exception, and not a hang) within the stream's RPC deadline; the registry then reports the cluster
degraded and then offline, one ``cluster.status`` event per transition, in that order.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from godel_ray.errors import ClusterUnavailable
from godel_ray.models import ClusterStatus, ExecChunk, SpawnConfig
from godel_ray.rpc.client import EXEC_DEADLINE_MARGIN_S
from tests.chaos.conftest import FAST_HEALTH, ChaosPlane, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.ray]
COMMAND_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 10.0  # GrpcClusterClient's default per-call deadline
# The ExecuteCommand stream's own gRPC deadline: the correctness bound for "no hang".
RPC_DEADLINE_S = COMMAND_TIMEOUT_S + CALL_TIMEOUT_S + EXEC_DEADLINE_MARGIN_S
WAIT_FOR_OUTPUT_S = 60.0


def test_kill9_during_stream_fails_cleanly_then_degraded_then_offline(chaos_plane: ChaosPlane,
                                                                      site_factory: Any) -> None:
    site = site_factory("chaos-doomed", num_cpus=2)
    chaos_plane.register(site)
    proxy = chaos_plane.proxy
    agent = proxy.spawn(SpawnConfig(model="m-doomed", cluster=site.name))
    assert agent.cluster_id == site.name
    first_seq = max((e.seq for e in proxy.events()), default=0)

    started = threading.Event()
    chunks: list[ExecChunk] = []
    outcome: dict[str, BaseException | float] = {}

    def consume() -> None:
        try:
            for chunk in proxy.exec_stream(agent.id, "echo started; sleep 600", timeout_s=COMMAND_TIMEOUT_S):
                chunks.append(chunk)
                started.set()
        except BaseException as exc:  # noqa: BLE001 - the test inspects whatever came out
            outcome["error"] = exc
        outcome["ended_at"] = time.monotonic()

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    assert started.wait(WAIT_FOR_OUTPUT_S), "the command produced no output"
    assert "".join(c.data for c in chunks) == "started\n"

    killed_at = time.monotonic()
    site.kill()  # SIGKILL the site server and its Ray head
    consumer.join(RPC_DEADLINE_S)
    assert not consumer.is_alive(), f"exec_stream still hangs {RPC_DEADLINE_S:g} s after the site died"
    error = outcome.get("error")
    assert isinstance(error, ClusterUnavailable), f"expected ClusterUnavailable, got {error!r}"
    assert site.name in str(error) or site.endpoint in str(error)
    assert float(outcome["ended_at"]) - killed_at <= RPC_DEADLINE_S
    assert all(c.result is None for c in chunks), "no result can arrive from a killed site"

    health = wait_for(lambda: next((h for h in proxy.registry.health()
                                    if h.cluster_id == site.name and h.status == ClusterStatus.OFFLINE), None),
                      f"{site.name} offline")
    assert health.consecutive_failures >= FAST_HEALTH.offline_after
    transitions = [(e.data["from"], e.data["to"]) for e in proxy.events(first_seq)
                   if e.type == "cluster.status" and e.cluster_id == site.name]
    assert transitions[:2] == [("active", "degraded"), ("degraded", "offline")], transitions

    # No new work goes to a dead cluster; the agent stays known (nothing dropped silently).
    assert proxy.registry.plan(SpawnConfig()).chosen != site.name
    assert agent.id in {a.id for a in proxy.list(cluster=site.name)}
    proxy.registry.unregister(site.name, force=True)  # leave the shared plane clean for other modules

