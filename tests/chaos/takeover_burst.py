"""A burst of spawns through one control plane, from a process of its own (``test_takeover``).

A Ray driver does not outlive its head, so the burst the test kills the head under cannot run in
the test's process. Prints one JSON line per outcome: ``{"acked": id}`` once a spawn was
acknowledged, ``{"error": ...}`` for one that failed.

usage: python -m tests.chaos.takeover_burst STATE_DIR SITE THREADS SPAWNS_PER_THREAD
"""

from __future__ import annotations

import json
import sys
import threading

from godel_ray.client.proxy import connect
from godel_ray.models import SpawnConfig


def main(state_dir: str, site: str, threads: int, per_thread: int) -> None:
    proxy = connect(state_dir)
    lock = threading.Lock()

    def say(line: dict[str, str]) -> None:
        with lock:
            print(json.dumps(line), flush=True)

    def burst(worker: int) -> None:
        for n in range(per_thread):
            try:
                agent = proxy.spawn(SpawnConfig(model="m-takeover", cluster=site, cpus=0.25,
                                                labels={"w": str(worker), "n": str(n)}))
            except BaseException as exc:  # noqa: BLE001 - every failure is reported to the test
                say({"error": f"{type(exc).__name__}: {exc}"[:300]})
                continue
            say({"acked": agent.id})

    workers = [threading.Thread(target=burst, args=(w,), daemon=True) for w in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
