"""``ImportProbe``: a bare Ray actor that imports what a ClusterActor imports and says what that added.

Kept free of project imports on purpose: the actor's worker process starts as a bare Ray worker, so
the modules and memory it gains by the measured import are the ClusterActor's own cost.
"""

from __future__ import annotations

import collections
import os
import sys
from typing import Any


def pss_mib(pid: int) -> float:
    """Proportional set size of ``pid`` in MiB (shared pages divided among the processes sharing them)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    return 0.0


class ImportProbe:
    def measure(self) -> dict[str, Any]:
        before, pss_before = set(sys.modules), pss_mib(os.getpid())
        import godel_ray.control.cluster_actor  # the import is the measurement
        import godel_ray.rpc.client  # noqa: F401 - what a remote cluster's client needs

        added = set(sys.modules) - before
        top = collections.Counter(m.split(".")[0] for m in added).most_common(6)
        return {"ray_worker_modules": len(before), "added": len(added), "top": top,
                "pss_before_mib": pss_before, "pss_after_mib": pss_mib(os.getpid())}


__all__ = ["ImportProbe", "pss_mib"]
