"""The capacity ledger through the real balancer on a real Ray cluster (a control plane with 2 CPUs,
so ``local`` admits 2 agents): room a kill frees is usable by the very next spawn, and two spawns
for the last slot cannot both have it."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator

import pytest

from godel_ray.client.proxy import TransparentClusterProxy, connect
from godel_ray.control import controlplane
from godel_ray.errors import NoPlacement
from godel_ray.models import Agent, AgentStatus, SpawnConfig
from tests import helpers

pytestmark = pytest.mark.ray
wait_for = functools.partial(helpers.wait_for, timeout_s=120.0)
CHURN_CYCLES = 10


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TransparentClusterProxy]:
    state_dir = tmp_path_factory.mktemp("godel-ledger")
    info = controlplane.up(state_dir, num_cpus=2)
    try:
        assert info.running
        proxy = connect(state_dir)
        wait_for(lambda: next(h for h in proxy.registry.health() if h.cluster_id == "local").capacity.total_cpus,
                 "a heartbeat from local")
        yield proxy
    finally:
        controlplane.down(state_dir)


def test_spawn_kill_ten_times_with_one_cpu_left_all_succeed(proxy: TransparentClusterProxy) -> None:
    keeper = proxy.spawn(SpawnConfig(model="keeper", cpus=1.0))  # one CPU and one slot of local's two left
    assert keeper.cluster_id == "local"
    for cycle in range(CHURN_CYCLES):  # no wait between a kill and the next spawn: the ledger frees at once
        agent = proxy.spawn(SpawnConfig(model="churn", cpus=1.0, labels={"cycle": str(cycle)}))
        assert agent.cluster_id == "local" and agent.status is AgentStatus.RUNNING
        assert proxy.exec(agent.id, "echo up").stdout == "up\n"
        assert proxy.kill(agent.id).status is AgentStatus.TERMINATED
    assert [a.id for a in proxy.list(status="running")] == [keeper.id]
    assert len(proxy.list(model="churn", status="terminated")) == CHURN_CYCLES


def test_two_spawns_for_the_last_slot_exactly_one_wins(proxy: TransparentClusterProxy) -> None:
    assert len(proxy.list(status="running")) == 1  # the keeper: one slot of two left
    aio = proxy.aio()

    async def race() -> list[Agent | BaseException]:
        config = SpawnConfig(model="last-slot", cpus=1.0, cluster="local")
        return await asyncio.gather(aio.spawn(config), aio.spawn(config), return_exceptions=True)

    outcomes = asyncio.run(race())
    winners = [o for o in outcomes if isinstance(o, Agent)]
    losers = [o for o in outcomes if not isinstance(o, Agent)]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    assert isinstance(losers[0], NoPlacement), repr(losers[0])
    assert "full" in losers[0].reasons["local"], losers[0].reasons
    assert [a.id for a in proxy.list(model="last-slot")] == [winners[0].id]
    assert proxy.exec(winners[0].id, "echo mine").stdout == "mine\n"
    for agent in proxy.list(status="running"):
        proxy.kill(agent.id)
