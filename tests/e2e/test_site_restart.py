"""A site restarted within its grace period, on real processes: the checkpointed agents it lost are
restored from their checkpoints as soon as it answers again (no one has to ask), the others are
marked failed with why. Also, on the same plane: a sandbox limit a site agent's command hit shows in
the agent's row, which is what `swarmctl agent list/status` read (no Ray)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from godel_ray.client.proxy import TransparentClusterProxy
from godel_ray.client.reader import StateReader
from godel_ray.models import AgentLimits, AgentStatus, Cluster, HealthSettings, RestartPolicy, SpawnConfig
from godel_ray.site.launcher import start_site
from tests.e2e.migration_helpers import control_plane, live_copies, wait_for

pytestmark = pytest.mark.ray

# Fast heartbeats; a grace period that outlasts the restart: failover must not be what restores.
WITHIN_GRACE = HealthSettings(heartbeat_interval_s=0.5, heartbeat_timeout_s=1.0, offline_after=3,
                              grace_period_s=600.0, dead_grace_period_s=600.0)


@dataclass
class Plane:
    state_dir: Path
    proxy: TransparentClusterProxy
    site: Any

    def row(self, agent_id: str) -> Any:
        """The agent's row as `swarmctl agent status` reads it: from the store, asking no cluster."""
        return StateReader(str(self.state_dir)).agent(agent_id)


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory, site_factory: Any) -> Iterator[Plane]:
    state_dir = tmp_path_factory.mktemp("godel-restart")
    site = site_factory("phoenix", num_cpus=2)
    with control_plane(state_dir) as proxy:
        proxy.registry.register(Cluster(id=site.name, endpoint=site.endpoint, region="r",
                                        auth_token_file=str(site.token_file), health=WITHIN_GRACE))
        yield Plane(state_dir=state_dir, proxy=proxy, site=site)


def test_a_limit_a_site_agents_command_hit_shows_in_its_row(plane: Plane) -> None:
    agent = plane.proxy.spawn(SpawnConfig(cluster="phoenix", cpus=0.5, limits=AgentLimits(cpu_time_s=1)))
    spin = plane.proxy.exec(agent.id, "python -c 'while True: pass'", timeout_s=60.0)
    assert spin.exit_code == 152 and "CPU time limit of 1 s reached" in spin.stderr
    row = wait_for(lambda: "CPU time limit" in (a := plane.row(agent.id)).status_reason and a, "the reason in the row")
    assert row.status is AgentStatus.RUNNING and row.status_reason.startswith("command 1 hit a limit: ")
    listed = [a for a in StateReader(str(plane.state_dir)).agents(cluster="phoenix") if a.id == agent.id]
    assert [a.status_reason for a in listed] == [row.status_reason]
    assert plane.proxy.exec(agent.id, "echo alive").stdout == "alive\n"  # the agent itself runs on
    plane.proxy.kill(agent.id)


def test_a_site_restarted_within_its_grace_restores_the_checkpointed_agents_it_lost(
        plane: Plane, tmp_path_factory: pytest.TempPathFactory) -> None:
    proxy, old = plane.proxy, plane.site
    saved = proxy.spawn(SpawnConfig(cluster="phoenix", cpus=0.5, restart_policy=RestartPolicy.CHECKPOINT,
                                    checkpoint_interval_s=1.0, labels={"keep": "1"}))
    plain = proxy.spawn(SpawnConfig(cluster="phoenix", cpus=0.5))
    assert proxy.exec(saved.id, "echo saved > notes.txt").exit_code == 0
    wait_for(lambda: any(e.type == "agent.checkpointed" and int(e.data.get("journal", "0")) >= 1
                         for e in proxy.events() if e.agent_id == saved.id), "a checkpoint holding notes.txt")

    port = int(old.endpoint.rsplit(":", 1)[1])
    old.kill()  # the process and its Ray cluster are gone, with every agent on it
    back = start_site(tmp_path_factory.mktemp("phoenix-again"), "phoenix", num_cpus=2, port=port, token=old.token)
    try:
        # nobody asks about either agent (a status call would mark them failed itself): the plane notices
        restored = wait_for(lambda: (a := plane.row(saved.id)).epoch > saved.epoch and a, "the restore")
        assert restored.status is AgentStatus.RUNNING and restored.cluster_id == "phoenix", (
            restored.status_reason, restored.config.cluster, [e for e in proxy.events() if e.agent_id == saved.id])
        assert restored.epoch == saved.epoch + 1 and restored.config.labels == {"keep": "1"}
        assert "restarted without it" in restored.status_reason
        failed = wait_for(lambda: (a := plane.row(plain.id)).status.is_final and a, "the plain agent's end")
        assert failed.status is AgentStatus.FAILED and "no longer hosts the agent" in failed.status_reason
        assert "restart_policy is never" in failed.status_reason
        assert proxy.exec(saved.id, "cat notes.txt").stdout == "saved\n"
        assert [a.epoch for a in live_copies(back, saved.id)] == [saved.epoch + 1]
        history = proxy.migrations(saved.id)
        assert [(m.source, m.target, m.reason) for m in history] == [("phoenix", "phoenix", "failover")]
    finally:
        back.terminate(timeout_s=20)
