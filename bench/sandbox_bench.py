"""The agent sandbox's cost per command, and finding an agent's process from outside its sandbox.

``bench_sandbox``: ``true`` run the way an agent runs it (``run_streaming``), once plainly and once in
the sandbox (bubblewrap, the agent's uid, limits, a cgroup where writable), interleaved in the same
run: the difference is what the sandbox adds to every exec. The exec rows measure the whole path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench.stats import Row

SHELLS = ("bwrap", "setpriv", "bash", "sleep", "sh")  # the processes between an agent and its command


async def _exec_true(workdir: str, sandbox: Any) -> float:
    from godel_ray.agents.process import run_streaming

    start = time.perf_counter()
    async for _ in run_streaming("true", cwd=workdir, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                                 timeout_s=30.0, max_output_bytes=1024, sandbox=sandbox):
        pass
    return (time.perf_counter() - start) * 1000


def bench_sandbox(fed: Any, opt: Any) -> list[Row]:
    from godel_ray.agents import cgroups
    from godel_ray.agents import sandbox as sbx
    from godel_ray.models import AgentLimits
    from godel_ray.settings import LIMITS

    root = Path(tempfile.mkdtemp(prefix="godel-bench-sandbox-"))
    workdir = root / "ag-bench"
    workdir.mkdir(mode=0o700)
    with_cgroup = LIMITS.sandbox.model_copy(update={"cgroups": True})
    without = LIMITS.sandbox.model_copy(update={"cgroups": False})
    samples: dict[str, list[float]] = {"plain": [], "cgroup": [], "rlimits": []}

    async def run() -> None:
        for i in range(opt.reps + 3):  # interleaved, so the three see the same machine
            # built per exec, as an agent does
            boxes = {"cgroup": sbx.build_sandbox("ag-bench", str(workdir), AgentLimits(), with_cgroup),
                     "rlimits": sbx.build_sandbox("ag-bench", str(workdir), AgentLimits(), without)}
            got = {"plain": await _exec_true(str(workdir), None)}
            for name, box in boxes.items():
                got[name] = await _exec_true(str(workdir), box)
            if i >= 3:  # warm-up
                for name, ms in got.items():
                    samples[name].append(ms)

    try:
        asyncio.run(run())
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    how = "its own uid (root)" if sbx.running_as_root() else "a user namespace"
    plain, boxed, bare = samples["plain"], samples["cgroup"], samples["rlimits"]
    rows = [Row("exec `true` in the sandbox, rlimits only", "ms", bare, "plain bash -c true", plain,
                note=f"run_streaming in this process: bubblewrap, {how}, limits, no cgroup")]
    if cgroups.available():
        rows.append(Row("exec `true` in the sandbox + a cgroup", "ms", boxed, "plain bash -c true", plain,
                        note="the default where a cgroup can be made: the agent's cgroup bounds memory and processes"))
        rows.append(Row("sandbox cost per exec (default)", "ms", [b - a for a, b in zip(plain, boxed, strict=True)],
                        note="sandbox + cgroup minus plain, pairwise, same run"))
    else:
        rows.append(Row("sandbox cost per exec (default)", "ms", [b - a for a, b in zip(plain, bare, strict=True)],
                        note="no cgroup can be made here: sandbox minus plain, pairwise, same run"))
    return rows


def agent_worker_pid(fed: Any, agent_id: str, timeout_s: float = 30.0) -> int:
    """The pid of the process hosting ``agent_id`` (its Ray worker), found from outside its sandbox:
    run a uniquely named ``sleep`` in the agent and walk up from it past the shells and bwrap.
    The ``sleep`` runs on for a few seconds: kill the agent, or let it end, before the next exec."""
    marker = f"5.{uuid.uuid4().int % 10_000:04d}"  # `sleep 5.xxxx`: unique on this machine

    def run() -> None:
        with contextlib.suppress(Exception):  # the agent was killed meanwhile: expected
            fed.proxy.exec(agent_id, f"sleep {marker}")

    threading.Thread(target=run, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for pid in _pids():
            if _cmdline(pid) == ["sleep", marker]:
                return _first_non_shell_ancestor(pid)
        time.sleep(0.05)
    raise RuntimeError(f"agent {agent_id}: its command never showed up")


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def _first_non_shell_ancestor(pid: int) -> int:
    while True:
        status = Path(f"/proc/{pid}/status").read_text()
        ppid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        name = os.path.basename((_cmdline(ppid) or [""])[0])
        if name not in SHELLS:
            return ppid
        pid = ppid


__all__ = ["agent_worker_pid", "bench_sandbox"]
