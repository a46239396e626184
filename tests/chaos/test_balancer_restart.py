"""The BalancerActor killed during a burst of spawns from several threads.

Proves, after Ray restarts the balancer: every acknowledged spawn exists exactly once (one row in the
table, one live agent on its cluster, and on ``local`` one live Ray actor per live agent); no
unacknowledged spawn left an orphan (every live agent on every cluster is in the table: the balancer
kills agents whose spawn it never recorded); every failed spawn failed with a GodelError; and the
restarted balancer places new spawns again.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest

from godel_ray.control import factory
from godel_ray.errors import GodelError
from godel_ray.models import Agent, AgentStatus, SpawnConfig
from tests.chaos.conftest import ChaosPlane, live, live_agent_actors, local_agents, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.ray]
THREADS = 5
SPAWNS_PER_THREAD = 2
ACKS_BEFORE_KILL = 1
BURST_WAIT_S = 240.0


def test_balancer_killed_mid_burst_loses_nothing_and_leaves_no_orphan(chaos_plane: ChaosPlane,
                                                                     site_factory: Any) -> None:
    import ray

    site = site_factory("chaos-burst", num_cpus=4)
    chaos_plane.register(site)
    proxy = chaos_plane.proxy
    acked: list[Agent] = []
    failures: list[BaseException] = []
    lock = threading.Lock()
    enough_acks = threading.Event()

    def burst(worker: int) -> None:
        for n in range(SPAWNS_PER_THREAD):
            try:
                agent = proxy.spawn(SpawnConfig(model="m-burst", cpus=0.25, labels={"w": str(worker), "n": str(n)}))
            except BaseException as exc:  # noqa: BLE001 - every failure is inspected below
                with lock:
                    failures.append(exc)
                continue
            with lock:
                acked.append(agent)
                if len(acked) >= ACKS_BEFORE_KILL:
                    enough_acks.set()

    workers = [threading.Thread(target=burst, args=(w,), daemon=True) for w in range(THREADS)]
    for worker in workers:
        worker.start()
    assert enough_acks.wait(BURST_WAIT_S), f"no {ACKS_BEFORE_KILL} spawns acknowledged: {failures!r}"
    ray.kill(factory.balancer_handle(), no_restart=False)
    for worker in workers:
        worker.join(BURST_WAIT_S)
    assert not any(w.is_alive() for w in workers), "a spawn hung across the balancer restart"

    assert all(isinstance(e, GodelError) for e in failures), [repr(e) for e in failures]
    assert len(acked) + len(failures) == THREADS * SPAWNS_PER_THREAD
    ids = [a.id for a in acked]
    assert len(set(ids)) == len(ids), "one agent acknowledged twice"

    def consistent() -> dict[str, Any] | None:
        table = {a.id: a for a in proxy.list()}
        on_local, on_site = live(local_agents()), live(site.list_agents())
        hosted = Counter([a.id for a in on_local] + [a.id for a in on_site])
        where = {a.id: "local" for a in on_local} | {a.id: site.name for a in on_site}
        orphans = [i for i in hosted if i not in table or table[i].status.is_final]
        if orphans or live_agent_actors() != len(on_local):
            return None  # the restarted balancer's orphan sweep has not run yet
        return {"table": table, "hosted": hosted, "where": where}

    state = wait_for(consistent, "every live agent on every cluster to be in the table, and no stray actor")
    table, hosted, where = state["table"], state["hosted"], state["where"]
    for agent in acked:
        row = table.get(agent.id)
        assert row is not None, f"acknowledged agent {agent.id} lost from the table"
        assert row.status == AgentStatus.RUNNING and row.cluster_id == agent.cluster_id
        assert hosted[agent.id] == 1 and where[agent.id] == agent.cluster_id, (agent.id, hosted[agent.id])
    assert all(n == 1 for n in hosted.values()), hosted

    # The restarted balancer serves: a new spawn is placed, recorded and runs commands.
    after = proxy.spawn(SpawnConfig(model="m-after", cpus=0.25))
    assert proxy.exec(after.id, "echo placed").stdout == "placed\n"
    for agent_id in [a.id for a in proxy.list(model="m-burst")] + [after.id]:
        proxy.kill(agent_id)
    proxy.registry.unregister(site.name, force=True)
