"""The examples as a user runs them: really through ``ray job submit`` against the control plane that
``controlplane.up`` started (its dashboard is the job server), and from plain ``python`` reading the
state dir. Then the GPU example, without and with a GPU site registered.

The examples run unchanged: ``gr.connect()`` finds the control plane through ``GODEL_STATE_DIR`` (plain
python) or through ``RAY_ADDRESS``, which Ray sets for a job's driver (with the head's token auth env).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from godel_ray.client.proxy import connect
from godel_ray.control import controlplane
from godel_ray.models import Cluster

pytestmark = pytest.mark.ray
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RUN_TIMEOUT_S = 300  # a safety net against a hung job, not a performance bound
FANOUT_SUMMARY = "fanout: 2 agents, 2 ok, 0 failed"


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("godel-state")
    info = controlplane.up(root, num_cpus=2)
    try:
        assert info.running and info.dashboard_url.startswith("http://")
        yield root
    finally:
        controlplane.down(root)


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without Ray's connection settings (a fresh shell), plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_API_SERVER_ADDRESS",
                        "GODEL_STATE_DIR")}
    # `python` in the job's entrypoint is this interpreter's, activated or not (as a user's venv would be)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env.update(extra)
    return env


def _run(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=False, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, stdin=subprocess.DEVNULL)


def _job_submit(state_dir: Path, *entrypoint: str) -> subprocess.CompletedProcess[str]:
    env = _clean_env(**controlplane.env_for_clients(state_dir))
    dashboard = controlplane.status(state_dir).dashboard_url
    return _run([sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--address", dashboard,
                 "--working-dir", str(EXAMPLES), "--", *entrypoint], env)


def test_env_for_clients_points_ray_job_at_the_dashboard(state_dir: Path) -> None:
    env = controlplane.env_for_clients(state_dir)
    info = controlplane.status(state_dir)
    assert env["RAY_ADDRESS"] == info.address
    assert env["RAY_API_SERVER_ADDRESS"] == info.dashboard_url  # `ray job submit` without --address
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"]


def test_fanout_under_ray_job_submit(state_dir: Path) -> None:
    proc = _job_submit(state_dir, "python", "fanout.py", "--agents", "2")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "succeeded" in output and FANOUT_SUMMARY in output, output[-4000:]
    assert "clusters local" in output
    # the job's agents were killed at its end: none of them is left running
    assert not connect(state_dir).list(labels={"example": "fanout"}, status="running")


def test_fanout_from_plain_python(state_dir: Path) -> None:
    proc = _run([sys.executable, str(EXAMPLES / "fanout.py"), "--agents", "2"],
                _clean_env(GODEL_STATE_DIR=str(state_dir)), cwd=state_dir)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    lines = proc.stdout.splitlines()
    assert lines[-1].startswith(FANOUT_SUMMARY), proc.stdout
    assert sum(line.startswith("ag-") and " exit 0 " in line for line in lines) == 2


def test_gpu_offload_without_a_gpu_cluster_lists_the_reasons(state_dir: Path) -> None:
    proc = _run([sys.executable, str(EXAMPLES / "gpu_offload.py")], _clean_env(GODEL_STATE_DIR=str(state_dir)))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no cluster can host a nvidia-a100 agent" in proc.stderr
    assert "  local: " in proc.stderr  # one line per cluster with why it was rejected


def test_gpu_offload_under_ray_job_submit_lands_on_the_gpu_site(state_dir: Path, site_factory: Any) -> None:
    site = site_factory("gpu-cloud", num_cpus=2, num_gpus=1, gpu_type="nvidia-a100")
    connect(state_dir).registry.register(Cluster(id=site.name, endpoint=site.endpoint, region="us-east",
                                                 cost_per_hour=3.2, auth_token_file=str(site.token_file)))
    proc = _job_submit(state_dir, "python", "gpu_offload.py")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "on cluster gpu-cloud" in output
    # Ray gave the agent the GPU it asked for: its commands see it
    assert "CUDA_VISIBLE_DEVICES=0" in output, output[-4000:]
