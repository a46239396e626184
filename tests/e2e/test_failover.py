"""Checkpoints and failover end to end on real sites: the source dies during a migration's pre-copy
(rolled back, then restored from its checkpoint elsewhere: exactly once, with its files); a site
holding a checkpointed agent stops answering (restored elsewhere, loss recorded) and, when it comes
back, its stale copy is removed."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from godel_ray.client.proxy import TransparentClusterProxy
from godel_ray.models import AgentStatus, ClusterStatus, MigrationPhase, RestartPolicy, SpawnConfig
from tests.e2e.migration_helpers import control_plane, finished, live_copies, phase_of, register, wait_for

pytestmark = pytest.mark.ray


@dataclass
class Plane:
    state_dir: Path
    proxy: TransparentClusterProxy
    sites: dict[str, Any]


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory, site_factory: Any) -> Iterator[Plane]:
    state_dir = tmp_path_factory.mktemp("godel-failover")
    sites = {name: site_factory(name, num_cpus=2) for name in ("alpha", "beta")}
    with control_plane(state_dir) as proxy:
        for site in sites.values():
            register(proxy, site)
        yield Plane(state_dir=state_dir, proxy=proxy, sites=sites)


def _checkpointed(proxy: TransparentClusterProxy, agent_id: str, min_journal: int) -> bool:
    return any(e.type == "agent.checkpointed" and int(e.data.get("journal", "0")) >= min_journal
               for e in proxy.events() if e.agent_id == agent_id)


def test_stopped_site_fails_over_and_its_stale_copy_is_removed_on_return(plane: Plane) -> None:
    proxy, alpha = plane.proxy, plane.sites["alpha"]
    agent = proxy.spawn(SpawnConfig(model="ckpt", labels={"fo": "1"}, cluster="alpha",
                                    restart_policy=RestartPolicy.CHECKPOINT, checkpoint_interval_s=1.0))
    never = proxy.spawn(SpawnConfig(model="plain", cluster="alpha"))
    assert proxy.exec(agent.id, "echo saved > notes.txt").exit_code == 0
    wait_for(lambda: _checkpointed(proxy, agent.id, 1), "a checkpoint holding notes.txt")

    os.kill(alpha.proc.pid, signal.SIGSTOP)  # the site stops answering; its agents stay alive
    try:
        restored = wait_for(lambda: (a := proxy.status(agent.id)).cluster_id != "alpha" and a, "the failover")
        assert restored.epoch == agent.epoch + 1 and restored.status is AgentStatus.RUNNING
        assert "lost" in restored.status_reason and restored.config.labels == {"fo": "1"}
        assert proxy.exec(agent.id, "cat notes.txt").stdout == "saved\n"
        failed = wait_for(lambda: (a := proxy.status(never.id)).status is AgentStatus.FAILED and a, "failed mark")
        assert "restart_policy is never" in failed.status_reason
        history = proxy.migrations(agent.id)
        assert [(m.source, m.reason, m.phase) for m in history] == [("alpha", "failover", MigrationPhase.COMPLETED)]
        assert any(e.type == "agent.restored" for e in proxy.events() if e.agent_id == agent.id)
    finally:
        os.kill(alpha.proc.pid, signal.SIGCONT)

    wait_for(lambda: next(h for h in proxy.registry.health() if h.cluster_id == "alpha").status
             is ClusterStatus.ACTIVE, "alpha to come back")
    wait_for(lambda: not live_copies(alpha, agent.id) and not live_copies(alpha, never.id),
             "the stale copies on alpha to be removed")
    assert [a.id for a in proxy.list()].count(agent.id) == 1
    assert proxy.status(agent.id).cluster_id == restored.cluster_id
    assert proxy.exec(agent.id, "cat notes.txt").stdout == "saved\n"  # still served by the one copy


def test_source_dies_during_the_pre_copy_then_restored_from_checkpoint(plane: Plane) -> None:
    proxy, beta = plane.proxy, plane.sites["beta"]
    agent = proxy.spawn(SpawnConfig(model="ckpt", cluster="beta", restart_policy=RestartPolicy.CHECKPOINT,
                                    checkpoint_interval_s=2.0))
    assert proxy.exec(agent.id, "echo saved > notes.txt").exit_code == 0
    wait_for(lambda: _checkpointed(proxy, agent.id, 1), "a checkpoint holding notes.txt")
    assert proxy.exec(agent.id, "head -c 48000000 /dev/urandom > big.bin").exit_code == 0  # a slow pre-copy

    started = proxy.migrate(agent.id, "alpha", wait=False)
    wait_for(lambda: phase_of(proxy, started.id) == MigrationPhase.PRECOPYING.value, "the pre-copy to start",
             poll_s=0.02)
    beta.kill()
    done = wait_for(lambda: finished(proxy, started.id), "the rollback")
    assert done.phase is MigrationPhase.ROLLED_BACK and "pre_copy failed" in done.error
    assert not live_copies(plane.sites["alpha"], agent.id)  # no orphan on the target

    restored = wait_for(lambda: (a := proxy.status(agent.id)).cluster_id != "beta" and a, "the failover")
    assert restored.status is AgentStatus.RUNNING and "lost" in restored.status_reason
    assert proxy.exec(agent.id, "cat notes.txt").stdout == "saved\n"
    assert [a.id for a in proxy.list()].count(agent.id) == 1
    if restored.cluster_id == "alpha":
        assert len(live_copies(plane.sites["alpha"], agent.id)) == 1
