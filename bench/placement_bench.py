"""Decisions per second of ``godel_ray.core.placement.place`` at 10, 100 and 1000 clusters.

Pure Python, no Ray: ``python bench/placement_bench.py [--seconds S]``. Every cluster is active and
has room, so every one is scored (the worst case for the scoring pass); one in ten is full of
agents or lacks the GPU type, so the filters run both ways too.
"""

from __future__ import annotations

import argparse
import time

from godel_ray.core.placement import ClusterView, place
from godel_ray.models import (
    Cluster,
    ClusterCapabilities,
    ClusterHealthState,
    Priority,
    SiteCapacity,
    SpawnConfig,
)

CLUSTER_COUNTS = (10, 100, 1000)
TARGET_DECISIONS_PER_S_AT_100 = 10_000


def make_views(n: int) -> list[ClusterView]:
    views = []
    for i in range(n):
        cid = "local" if i == 0 else f"site-{i:04d}"
        gpu_type = "A100" if i % 10 else "T4"
        cluster = Cluster(
            id=cid, endpoint=None if i == 0 else f"10.0.0.{i % 250}:50051", region=f"region-{i % 5}",
            cost_per_hour=float(i % 7), max_agents=100,
            capabilities=ClusterCapabilities(gpu=True, gpu_types=[gpu_type]),
        )
        capacity = SiteCapacity(max_agents=100, active_agents=i % 50, available_agents=100 - i % 50,
                                gpu_types=[gpu_type], free_gpus={gpu_type: 4.0}, total_gpus=8.0,
                                total_cpus=64.0, free_cpus=32.0)
        health = ClusterHealthState(cluster_id=cid, rtt_ms=float(i % 40), capacity=capacity)
        active = 100 if i % 10 == 5 else (95 if i == 0 else i % 50)  # local over its threshold: spill over
        views.append(ClusterView(cluster=cluster, health=health, active_agents=active))
    return views


def rate(config: SpawnConfig, views: list[ClusterView], seconds: float) -> float:
    place(config, views)  # warm the caches
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(20):
            place(config, views)
        count += 20
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = parser.parse_args()
    configs = {
        "cpu": SpawnConfig(priority=Priority.LATENCY),
        "gpu-a100": SpawnConfig(gpu_type="nvidia-a100", priority=Priority.GPU, preferred_region="region-1"),
    }
    print(f"{'clusters':>8} {'workload':>9} {'decisions/s':>12} {'us/decision':>12}")
    for n in CLUSTER_COUNTS:
        views = make_views(n)
        for name, config in configs.items():
            per_s = rate(config, views, args.seconds)
            print(f"{n:>8} {name:>9} {per_s:>12,.0f} {1e6 / per_s:>12.1f}")
    print(f"target: >= {TARGET_DECISIONS_PER_S_AT_100:,} decisions/s at 100 clusters")


if __name__ == "__main__":
    main()
