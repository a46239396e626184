"""`swarmctl demo`, the README's first command, runs the whole story to exit 0 and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

DEMO_TIMEOUT_S = 600
LEFTOVER_DEADLINE_S = 30.0


def _ray_or_godel_pids() -> set[int]:
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and ("ray" in cmdline or "godel" in cmdline):
            pids.add(int(entry))
    return pids


def test_demo_tells_the_story_and_cleans_up(tmp_path: Path) -> None:
    before = _ray_or_godel_pids()
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="120")
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "GODEL_STATE_DIR"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-m", "godel_cli.main", "demo"], check=False, env=env,
                          capture_output=True, text=True, timeout=DEMO_TIMEOUT_S, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    # Each step happened, with real results.
    assert "on local" in out                                     # CPU agent placed locally
    assert "rule=best-score" in out                              # spill-over with its placement table
    assert "(nvidia-a100) on gpu-cloud" in out                   # GPU work on the GPU site
    assert "CUDA_VISIBLE_DEVICES=0" in out                       # ... seeing the GPU Ray gave it
    assert "epoch 1\nepoch 2\nepoch 3" in out                    # streamed output
    assert "now on cpu-cheap (epoch 2)" in out and "\nnotes\n" in out   # migration kept the files
    assert "No such file or directory" in out and "RAY_AUTH_TOKEN=unset" in out  # the sandbox hides secrets
    assert "processes visible: " in out and "own workdir writable: work" in out
    assert "drained to " in out and "home cpu-cheap" in out       # drain moved the agent off, live
    assert "back home on cpu-cheap (reason fail_back)" in out     # fail-back once it is back in service
    assert "restored on" in out and "state before the crash" in out    # failover from a checkpoint
    assert "demo finished" in out

    deadline = time.monotonic() + LEFTOVER_DEADLINE_S
    left = _ray_or_godel_pids() - before
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = _ray_or_godel_pids() - before
    assert not left, f"processes left behind by the demo: {sorted(left)}"
