"""Control-plane takeover: two control planes (two Ray heads, as on two machines) on one PostgreSQL.

Proves: the first holds the lease and serves, the second waits as a standby (``ping`` says so; its
``status`` names the active one); kill -9 the active head's whole session during a burst of spawns:
the standby takes the lease, attaches to the site, reconciles, and every acknowledged spawn exists
exactly once (one row, one live agent at the site) and answers ``exec`` under its old id through
the new head; no agent is left at the site that the new head does not know.

The burst runs in a driver process of its own (``takeover_burst``): a Ray driver does not outlive
its head, and this test's process stays attached to the standby's head throughout.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from godel_ray.client.proxy import connect
from godel_ray.control import controlplane, factory
from godel_ray.models import Agent, AgentStatus, Cluster, SpawnConfig
from godel_ray.raykit import heads, rayapi
from godel_ray.raykit.gateway import BalancerGateway
from tests.chaos.conftest import FAST_HEALTH, live, wait_for
from tests.conftest import two_control_planes

pytestmark = [pytest.mark.chaos, pytest.mark.ray, pytest.mark.postgres]
LEASE_TTL_S = "3"
THREADS = 3
SPAWNS_PER_THREAD = 3
ACKS_BEFORE_KILL = 2
BURST_WAIT_S = 240.0
REPO = Path(__file__).resolve().parents[2]


def _kill_head(head: heads.RayHead) -> None:
    """kill -9 every process of the head's session: no clean shutdown, no lease handed back."""
    for pid in heads.session_pids(head.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture()
def two_planes(tmp_path: Path, pg_server: Any) -> Iterator[tuple[Path, Path]]:
    with two_control_planes(tmp_path, pg_server, GODEL_LEASE_TTL_S=LEASE_TTL_S) as planes:
        yield planes


class Burst:
    """The burst's driver process and the lines it printed (read by a thread: never a blocking read)."""

    def __init__(self, state_dir: Path, site: str) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.chaos.takeover_burst", str(state_dir), site, str(THREADS),
             str(SPAWNS_PER_THREAD)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True)
        self.lines: queue.Queue[dict[str, str]] = queue.Queue()
        self.acked: list[str] = []
        self.errors: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.lines.put(json.loads(line))

    def take(self, timeout_s: float) -> bool:
        """Record the next outcome; False if none came within ``timeout_s``."""
        try:
            line = self.lines.get(timeout=timeout_s)
        except queue.Empty:
            return False
        if "acked" in line:
            self.acked.append(line["acked"])
        else:
            self.errors.append(line["error"])
        return True

    def finish(self, timeout_s: float) -> None:
        """Wait for the driver to end (it may die with its head), then take what it printed."""
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # hung on its dead head: what it acknowledged is already printed
            self.proc.wait(30)
        while self.take(1.0):
            pass


def test_the_standby_takes_over_a_killed_head_and_loses_no_acknowledged_spawn(
        two_planes: tuple[Path, Path], site_factory: Any) -> None:
    plane_a, plane_b = two_planes
    site = site_factory("takeover-site", num_cpus=4)
    info_a = controlplane.up(plane_a, num_cpus=2)
    assert info_a.role == "active"
    proxy_a = connect(plane_a)
    proxy_a.registry.register(Cluster(id=site.name, endpoint=site.endpoint, region="takeover",
                                      auth_token_file=str(site.token_file), health=FAST_HEALTH))
    before = proxy_a.spawn(SpawnConfig(model="m-takeover", cluster=site.name, cpus=0.25))

    rayapi.detach()
    info_b = controlplane.up(plane_b, num_cpus=2)  # this process stays on b's head from here on
    assert info_b.role == "standby" and str(plane_a) in info_b.lease
    assert BalancerGateway(factory.balancer_handle()).ping().get(timeout_s=60) == "standby"
    status_a = controlplane.status(plane_a)
    assert status_a.role == "active" and status_a.active_address.rpartition(":")[2] == info_a.address.rpartition(":")[2]

    burst = Burst(plane_a, site.name)
    while len(burst.acked) < ACKS_BEFORE_KILL:
        assert burst.take(BURST_WAIT_S), f"no {ACKS_BEFORE_KILL} spawns acknowledged: {burst.errors!r}"
    head_a = controlplane.read_head(plane_a)
    assert head_a is not None
    _kill_head(head_a)
    burst.finish(BURST_WAIT_S)

    wait_for(lambda: controlplane.status(plane_b).role == "active" or None, "the standby to take the lease")
    wait_for(lambda: BalancerGateway(factory.balancer_handle()).ping().get(timeout_s=30) == "ok" or None,
             "the new active balancer to serve")
    proxy_b = connect(plane_b)
    assert rayapi.gcs_address().rpartition(":")[2] == info_b.address.rpartition(":")[2]

    acked_ids = [before.id, *burst.acked]
    assert len(set(acked_ids)) == len(acked_ids)

    def consistent() -> dict[str, Agent] | None:
        table = {a.id: a for a in proxy_b.list()}
        hosted = Counter(a.id for a in live(site.list_agents()))
        orphans = [i for i in hosted if i not in table or table[i].status.is_final]
        if orphans or any(hosted[i] != 1 for i in acked_ids):
            return None  # the new balancer's reconciliation and orphan sweeps have not run yet
        return table

    table = wait_for(consistent, "every acknowledged spawn at the site exactly once, and no orphan")
    for agent_id in acked_ids:
        assert table[agent_id].status is AgentStatus.RUNNING and table[agent_id].cluster_id == site.name
        result = proxy_b.exec(agent_id, "echo alive")
        assert result.exit_code == 0 and "alive" in result.stdout
