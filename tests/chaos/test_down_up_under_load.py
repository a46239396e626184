"""``swarmctl down`` then ``swarmctl up`` (the operator's commands, run as processes) while this process
keeps executing commands on agents on ``local`` and on a site.

Proves: during the gap every failed call fails with a GodelError (no Ray/gRPC exception, no hang: each
call returns within its deadline); afterwards nothing registered or spawned is lost (same clusters, same
agents on the same clusters, running) and commands work again on every agent; a driver recovers by
reconnecting with ``connect(state_dir)``.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from godel_ray.client.proxy import TransparentClusterProxy, connect
from godel_ray.control import controlplane
from godel_ray.errors import GodelError
from godel_ray.models import AgentStatus, SpawnConfig
from tests.chaos.conftest import ChaosPlane, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.ray]
COMMAND_TIMEOUT_S = 30.0
CLI_TIMEOUT_S = 300.0
JOIN_S = 120.0


def swarmctl(*args: str, state_dir: Path) -> None:
    """Run the operator's command in its own process; it must succeed."""
    done = subprocess.run([sys.executable, "-m", "godel_cli.main", *args, "--state-dir", str(state_dir)],
                          check=False, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert done.returncode == 0, f"swarmctl {' '.join(args)} failed: {done.stdout}{done.stderr}"


class Load:
    """Round-robin ``exec`` on the agents until stopped; reconnects when the control plane changed."""

    def __init__(self, state_dir: Path, proxy: TransparentClusterProxy, agent_ids: list[str]) -> None:
        self.state_dir = state_dir
        self.proxy = proxy
        self.agent_ids = agent_ids
        self.stop = threading.Event()
        self.ok_after_up: Counter[str] = Counter()
        self.up_done = threading.Event()
        self.errors: list[BaseException] = []
        self.calls = 0
        self.address = controlplane.read_head(state_dir).address  # type: ignore[union-attr]
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            for agent_id in self.agent_ids:
                up_done = self.up_done.is_set()
                self.calls += 1
                try:
                    result = self.proxy.exec(agent_id, f"echo {self.calls}", timeout_s=COMMAND_TIMEOUT_S)
                except GodelError as exc:
                    self.errors.append(exc)
                    self.reconnect()
                    continue
                except BaseException as exc:  # noqa: BLE001 - an unclean error: the test fails on it
                    self.errors.append(exc)
                    self.reconnect()
                    continue
                if result.stdout == f"{self.calls}\n" and up_done:
                    self.ok_after_up[agent_id] += 1

    def reconnect(self) -> None:
        """What a resilient driver does: follow ``control.json`` to the (new) control plane."""
        import ray

        head = controlplane.read_head(self.state_dir)
        if head is not None and head.address == self.address:
            return  # the same control plane: a passing fault, retry
        if ray.is_initialized() and (head is None or ray.get_runtime_context().gcs_address != head.address):
            ray.shutdown()  # leave the old cluster before Ray gives up on its GCS
        if head is None:
            self.stop.wait(0.2)
            return
        try:
            self.proxy = connect(self.state_dir)
            self.address = head.address
        except GodelError as exc:
            self.errors.append(exc)


def test_down_up_under_load_loses_nothing(chaos_plane: ChaosPlane, site_factory: Any) -> None:
    site = site_factory("chaos-steady", num_cpus=2)
    chaos_plane.register(site)
    proxy = chaos_plane.proxy
    agents = [proxy.spawn(SpawnConfig(model="m-steady", cpus=0.25, cluster=cluster))
              for cluster in ("local", "local", site.name, site.name)]
    assert [a.cluster_id for a in agents] == ["local", "local", site.name, site.name]
    proxy.exec(agents[0].id, "echo kept > notes.txt")
    clusters_before = sorted(c.cluster.id for c in proxy.registry.list())
    agents_before = {a.id: (a.cluster_id, a.status) for a in proxy.list()}

    load = Load(chaos_plane.state_dir, proxy, [a.id for a in agents])
    load.thread.start()
    wait_for(lambda: load.calls > len(agents), "the load to run before the restart")
    swarmctl("down", state_dir=chaos_plane.state_dir)
    swarmctl("up", "--num-cpus", "4", state_dir=chaos_plane.state_dir)
    load.up_done.set()
    wait_for(lambda: all(load.ok_after_up[a.id] >= 2 for a in agents), "commands to succeed on every agent")
    load.stop.set()
    load.thread.join(JOIN_S)
    assert not load.thread.is_alive(), "an exec hung across the restart"

    unclean = [e for e in load.errors if not isinstance(e, GodelError)]
    assert not unclean, [repr(e) for e in unclean]
    assert load.errors, "the restart happened under load: some calls must have failed"

    proxy = chaos_plane.reconnect()
    assert sorted(c.cluster.id for c in proxy.registry.list()) == clusters_before
    assert {a.id: (a.cluster_id, a.status) for a in proxy.list()} == agents_before
    for agent in agents:
        assert proxy.status(agent.id).status == AgentStatus.RUNNING
        assert proxy.exec(agent.id, "echo still").stdout == "still\n"
    assert proxy.exec(agents[0].id, "cat notes.txt").stdout == "kept\n"  # the local workdir came back
    for agent in agents:
        proxy.kill(agent.id)
    proxy.registry.unregister(site.name, force=True)
