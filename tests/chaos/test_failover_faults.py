"""Failover decided by the failure detector, on real sites, with the default health settings.

Proves:
- a killed site is known dead from connection evidence (refused/reset, not a count of misses), and its
  checkpointed agents answer again elsewhere, with their files, listed once;
- a site frozen (SIGSTOP) until the control plane has seen its heartbeats fail, then resumed, keeps
  its agents: nothing is restored, nothing moves, every agent answers at its old epoch;
- a partitioned site is silent (not dead); once its agents were restored elsewhere and the link
  comes back, its stale copies are removed, and a driver still holding the old location is
  re-routed: the stale copy never serves a command.
Every wait polls with a generous deadline; no case asserts a duration.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bench.faults import Island, frozen
from godel_ray.client.proxy import connect
from godel_ray.models import AgentStatus, ClusterHealthState, ClusterStatus, HealthSettings, RestartPolicy, SpawnConfig
from godel_ray.site.launcher import SiteProcess
from tests.chaos.conftest import ChaosPlane, live, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.ray]
DEFAULTS = HealthSettings()


def _health(plane: ChaosPlane, cluster_id: str) -> ClusterHealthState | None:
    return next((h for h in plane.proxy.registry.health() if h.cluster_id == cluster_id), None)


def _checkpointed_agents(plane: ChaosPlane, cluster_id: str, n: int) -> dict[str, str]:
    """``n`` agents with ``restart_policy=checkpoint`` on ``cluster_id``, each with a file, each
    checkpointed with that file. Returns id -> the file's content."""
    proxy = plane.proxy
    agents = {}
    for _ in range(n):
        agent = proxy.spawn(SpawnConfig(model="m-fo", cpus=0.25, cluster=cluster_id,
                                        restart_policy=RestartPolicy.CHECKPOINT, checkpoint_interval_s=1.0))
        assert proxy.exec(agent.id, f"echo {agent.id} > notes.txt").exit_code == 0
        agents[agent.id] = f"{agent.id}\n"
    wait_for(lambda: all(any(e.type == "agent.checkpointed" and e.agent_id == agent_id
                             and int(e.data.get("journal", "0")) >= 1 for e in proxy.events())
                         for agent_id in agents), "a checkpoint of every agent, holding its file")
    return agents


def _offline_event(plane: ChaosPlane, cluster_id: str, since_seq: int) -> Any:
    return next((e for e in plane.proxy.events(since_seq) if e.type == "cluster.status"
                 and e.cluster_id == cluster_id and e.data.get("to") == "offline"), None)


def _answers_elsewhere(plane: ChaosPlane, agent_id: str, away_from: str, expect: str) -> bool:
    proxy = plane.proxy
    agent = proxy.status(agent_id)
    return (agent.cluster_id != away_from and agent.status is AgentStatus.RUNNING
            and proxy.exec(agent_id, "cat notes.txt").stdout == expect)


def test_a_killed_site_is_dead_from_connection_evidence_and_its_agents_come_back(
        chaos_plane: ChaosPlane, site_factory: Any) -> None:
    site: SiteProcess = site_factory("fo-killed", num_cpus=2)
    chaos_plane.register(site, health=DEFAULTS)
    proxy = chaos_plane.proxy
    agents = _checkpointed_agents(chaos_plane, site.name, 2)
    epochs = {agent_id: proxy.status(agent_id).epoch for agent_id in agents}
    first_seq = max((e.seq for e in proxy.events()), default=0)

    site.kill()  # SIGKILL: the server and its Ray head, with the agents
    for agent_id, expect in agents.items():
        wait_for(lambda a=agent_id, x=expect: _answers_elsewhere(chaos_plane, a, site.name, x),
                 f"{agent_id} restored elsewhere, with its file")

    offline = _offline_event(chaos_plane, site.name, first_seq)
    assert offline is not None and offline.data["evidence"] == "dead", offline  # refused/reset, not silence
    restored = {e.agent_id: e for e in proxy.events(first_seq) if e.type == "agent.restored"}
    listed = [a.id for a in proxy.list()]
    for agent_id in agents:
        assert restored[agent_id].data["source"] == site.name
        assert proxy.status(agent_id).epoch == epochs[agent_id] + 1
        assert listed.count(agent_id) == 1
        proxy.kill(agent_id)
    proxy.registry.unregister(site.name, force=True)


def test_a_site_frozen_briefly_keeps_its_agents_and_nothing_is_restored(
        chaos_plane: ChaosPlane, site_factory: Any) -> None:
    site: SiteProcess = site_factory("fo-frozen", num_cpus=2)
    chaos_plane.register(site, health=DEFAULTS)
    proxy = chaos_plane.proxy
    agents = _checkpointed_agents(chaos_plane, site.name, 2)
    before = {agent_id: proxy.status(agent_id) for agent_id in agents}
    first_seq = max((e.seq for e in proxy.events()), default=0)

    with frozen(site):  # SIGSTOP until the control plane has seen its heartbeats fail, then SIGCONT
        wait_for(lambda: (h := _health(chaos_plane, site.name)) is not None and h.consecutive_failures >= 1,
                 "a failed heartbeat of the frozen site")
    wait_for(lambda: (h := _health(chaos_plane, site.name)) is not None and h.status is ClusterStatus.ACTIVE,
             "the resumed site to be active again")

    for agent_id, expect in agents.items():
        assert proxy.exec(agent_id, "cat notes.txt").stdout == expect
        after = proxy.status(agent_id)
        assert (after.cluster_id, after.epoch) == (before[agent_id].cluster_id, before[agent_id].epoch)
    events = list(proxy.events(first_seq))
    assert not [e for e in events if e.type in ("agent.restored", "agent.failed") and e.agent_id in agents]
    assert sorted(a.id for a in live(site.list_agents()) if a.id in agents) == sorted(agents)
    for agent_id in agents:
        proxy.kill(agent_id)
    proxy.registry.unregister(site.name, force=True)


def test_a_partitioned_site_returning_after_its_agents_moved_never_serves_them(
        chaos_plane: ChaosPlane, island_factory: Callable[..., Island]) -> None:
    island = island_factory("fo-island", num_cpus=2)
    site = island.site
    assert site is not None
    # a short silent grace keeps the case cheap; everything else is the default
    chaos_plane.register(site, health=HealthSettings(grace_period_s=3.0))
    proxy = chaos_plane.proxy
    (agent_id, expect), = _checkpointed_agents(chaos_plane, site.name, 1).items()
    holder = connect(chaos_plane.state_dir)  # a second driver: it caches the agent's location on the island
    assert holder.exec(agent_id, "cat notes.txt").stdout == expect
    first_seq = max((e.seq for e in proxy.events()), default=0)

    island.link(up=False)
    try:
        wait_for(lambda: _answers_elsewhere(chaos_plane, agent_id, site.name, expect), "the agent restored elsewhere")
        offline = _offline_event(chaos_plane, site.name, first_seq)
        assert offline is not None and offline.data["evidence"] == "silent", offline  # no route is not "refused"
    finally:
        island.link(up=True)
    moved_to = proxy.status(agent_id).cluster_id
    healed_seq = max(e.seq for e in proxy.events(first_seq))

    # the driver holding the old location is re-routed: the stale copy must not run this
    assert holder.exec(agent_id, "echo served >> served.txt && cat notes.txt").stdout == expect
    wait_for(lambda: not [a for a in live(site.list_agents()) if a.id == agent_id], "the stale copy removed")
    wait_for(lambda: (h := _health(chaos_plane, site.name)) is not None and h.status is ClusterStatus.ACTIVE,
             "the island active again")

    assert proxy.exec(agent_id, "cat served.txt").stdout == "served\n"  # ran once, on the restored copy
    served_on = {e.cluster_id for e in proxy.events(healed_seq) if e.type == "command.started"
                 and e.agent_id == agent_id}
    assert served_on == {moved_to}, served_on
    assert any(e.type == "agent.stale_removed" and e.agent_id == agent_id and e.cluster_id == site.name
               for e in proxy.events(first_seq))
    assert [a.id for a in proxy.list()].count(agent_id) == 1
    proxy.kill(agent_id)
    proxy.registry.unregister(site.name, force=True)
