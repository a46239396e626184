"""Two control planes (two Ray heads) on one PostgreSQL: a client pointed at the standby is
attached to the active one (``client.attach``), for ``connect()`` and for the CLI.

Proves: ``up`` of the second says standby and names the first; ``connect(<standby's state dir>)``
attaches this process to the active head's Ray and serves (spawn, exec, list); ``swarmctl`` with
the standby's state dir reaches the active balancer too (its answer, not a ``Standby`` refusal).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from godel_ray.client.proxy import connect
from godel_ray.control import controlplane
from godel_ray.models import AgentStatus, SpawnConfig
from godel_ray.raykit import rayapi
from tests.conftest import two_control_planes

pytestmark = [pytest.mark.ray, pytest.mark.postgres]
CLI_TIMEOUT_S = 180.0


@pytest.fixture()
def two_planes(tmp_path: Path, pg_server: Any) -> Iterator[tuple[Path, Path]]:
    with two_control_planes(tmp_path, pg_server) as planes:
        yield planes


def _port(address: str) -> str:
    """The lease names a head by its node's IP, ``up`` by the address it started it on: one port."""
    return address.rpartition(":")[2]


def _swarmctl(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, GODEL_STATE_DIR=str(state_dir), NO_COLOR="1")
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        env.pop(key, None)
    return subprocess.run([sys.executable, "-m", "godel_cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=CLI_TIMEOUT_S, check=False)


def test_a_client_of_the_standby_is_attached_to_the_active_control_plane(two_planes: tuple[Path, Path]) -> None:
    plane_a, plane_b = two_planes
    info_a = controlplane.up(plane_a, num_cpus=2)
    assert info_a.role == "active"
    rayapi.detach()
    info_b = controlplane.up(plane_b, num_cpus=1)
    assert info_b.role == "standby" and _port(info_b.active_address) == _port(info_a.address)
    assert _port(rayapi.gcs_address()) == _port(info_b.address)  # ``up`` left this process on b's head

    proxy = connect(plane_b)
    assert _port(rayapi.gcs_address()) == _port(info_a.address)  # redirected: one attach to the active head
    agent = proxy.spawn(SpawnConfig(model="m-redirect", cpus=0.1))
    assert agent.cluster_id == "local" and agent.status is AgentStatus.RUNNING
    assert proxy.exec(agent.id, "echo through-the-active-head").stdout.strip() == "through-the-active-head"

    rayapi.detach()
    proc = _swarmctl(plane_b, "agent", "status", agent.id, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["id"] == agent.id
    killed = _swarmctl(plane_b, "agent", "kill", agent.id)  # a write: only the active balancer takes it
    assert killed.returncode == 0, killed.stderr
    assert connect(plane_b).status(agent.id).status is AgentStatus.TERMINATED
