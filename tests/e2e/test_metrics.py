"""The federation's metrics as Prometheus sees them: a real control plane, a spawn and an exec on
``local``, then a scrape of Ray's metrics endpoint on the head (``RayHead.metrics_port``), parsed with
``prometheus_client``'s parser. Ray exports every few seconds: poll with a deadline.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from godel_ray.client.proxy import connect
from godel_ray.control import controlplane
from godel_ray.models import SpawnConfig
from godel_ray.raykit import metrics

pytestmark = pytest.mark.ray
SCRAPE_DEADLINE_S = 120.0
PLACEMENTS = "ray_godel_placements"  # counter family (samples end in _total)
EXEC_LATENCY = "ray_godel_exec_latency_seconds"
HEARTBEAT_RTT = "ray_godel_heartbeat_rtt_ms"
CLUSTER_STATUS = "ray_godel_cluster_status"


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("godel-state")
    controlplane.up(root, num_cpus=2)
    try:
        yield root
    finally:
        controlplane.down(root)


def _scrape(port: int) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    """family name -> [(sample name, labels, value)] of the godel metrics on the endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {family.name: [(s.name, s.labels, s.value) for s in family.samples]
            for family in text_string_to_metric_families(text) if family.name.startswith("ray_godel_")}


def _scrape_until(port: int, *families: str) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    deadline = time.monotonic() + SCRAPE_DEADLINE_S
    seen: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    while time.monotonic() < deadline:
        try:
            seen = _scrape(port)
        except (urllib.error.URLError, OSError):
            seen = {}
        if all(seen.get(f) for f in families):
            return seen
        time.sleep(1.0)
    raise AssertionError(f"metrics {families} not exported within {SCRAPE_DEADLINE_S:.0f}s; saw {sorted(seen)}")


def test_placement_exec_and_health_metrics_are_scraped(state_dir: Path) -> None:
    proxy = connect(state_dir)
    agent = proxy.spawn(SpawnConfig(cpus=0.1, labels={"test": "metrics"}))
    assert agent.cluster_id == "local"
    assert proxy.exec(agent.id, "echo metered").stdout == "metered\n"
    proxy.kill(agent.id)
    decision = proxy.explain(agent.id)

    head = controlplane.read_head(state_dir)
    assert head is not None and head.metrics_port
    found = _scrape_until(head.metrics_port, PLACEMENTS, EXEC_LATENCY, HEARTBEAT_RTT, CLUSTER_STATUS)

    placed = [(labels, value) for name, labels, value in found[PLACEMENTS] if name == PLACEMENTS + "_total"]
    assert decision.rule
    assert any(labels["cluster"] == "local" and labels["rule"] == decision.rule and value >= 1
               for labels, value in placed), placed

    counts = [(labels, value) for name, labels, value in found[EXEC_LATENCY] if name == EXEC_LATENCY + "_count"]
    assert any(labels["cluster"] == "local" and value >= 1 for labels, value in counts), counts
    buckets = [labels for name, labels, _ in found[EXEC_LATENCY] if name == EXEC_LATENCY + "_bucket"]
    assert {labels["le"] for labels in buckets if labels["cluster"] == "local"} >= {"+Inf"}

    assert any(labels["cluster"] == "local" and value > 0 for _, labels, value in found[HEARTBEAT_RTT])
    status = {labels["status"]: value for _, labels, value in found[CLUSTER_STATUS] if labels["cluster"] == "local"}
    assert status.get("active") == 1.0 and set(status) == set(metrics.CLUSTER_STATUSES)
    assert sum(status.values()) == 1.0


def test_a_broken_metrics_backend_never_raises_into_the_caller(monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """The control plane calls these on every operation: a metrics failure is logged once, not raised."""
    def broken() -> None:
        raise RuntimeError("metrics agent gone")

    monkeypatch.setattr(metrics, "_metrics", None)
    monkeypatch.setattr(metrics, "_warned", set())
    monkeypatch.setattr(metrics, "_create", broken)
    for _ in range(2):
        metrics.record_placement("local", "best-score")
        metrics.observe_exec_latency("local", 0.5)
        metrics.set_heartbeat_rtt("local", 1.0)
        metrics.set_cluster_status("local", "active")
        metrics.record_migration("completed", 0.2)
        metrics.record_failover("gpu-east", "restored")
    warnings = [r for r in caplog.records if "metrics agent gone" in r.getMessage()]
    assert len(warnings) == len(metrics._warned) == 7  # once per metric, not once per call
