"""Warm pools on a real Ray head (8 logical CPUs, 2 GPUs of type nvidia-a100).

One runtime with two idle default agents (1 CPU each) and one idle one-GPU agent of type
nvidia-a100; each test waits for the pool to be full, spawns, and kills what it spawned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import ray

from godel_ray.agents.runtime import AgentRuntime
from godel_ray.core.cluster_client import collect
from godel_ray.errors import FailedPrecondition
from godel_ray.models import Agent, ExecResult, SpawnConfig
from godel_ray.raykit import heads

pytestmark = pytest.mark.ray
T = TypeVar("T")
DEADLINE_S = 90.0
POOL_SIZE = 2
MAX_AGENTS = 5


class Harness:
    def __init__(self, loop: asyncio.AbstractEventLoop, runtime: AgentRuntime, root: Path) -> None:
        self.loop = loop
        self.runtime = runtime
        self.root = root

    def run(self, coro: Awaitable[T]) -> T:
        return self.loop.run_until_complete(coro)  # type: ignore[arg-type]

    def full_pool(self) -> int:
        return self.run(self.runtime.pool.wait_full(DEADLINE_S))

    def spawn(self, **config: Any) -> Agent:
        agent, created = self.run(self.runtime.spawn(SpawnConfig(**config)))
        assert created
        return agent

    def origin(self, agent_id: str) -> dict[str, Any]:
        actor = self.runtime._table[agent_id].actor  # the test looks at the actor itself
        assert actor is not None
        return self.run(actor.origin().result())

    def exec(self, agent_id: str, command: str) -> ExecResult:
        async def go() -> ExecResult:
            return collect([c async for c in self.runtime.exec_stream(agent_id, command)])
        return self.run(go())

    def kill_all(self, agents: list[Agent]) -> None:
        async def go() -> None:
            await asyncio.gather(*(self.runtime.kill(a.id) for a in agents))
        self.run(go())


@pytest.fixture(scope="module")
def h(ray_client: heads.RayHead, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    loop = asyncio.new_event_loop()
    root = tmp_path_factory.mktemp("warm-workdirs")
    runtime = AgentRuntime("site-w", str(root), max_agents=MAX_AGENTS, ready_timeout_s=60.0,
                           warm_pool_size=POOL_SIZE, warm_pool_gpu={"nvidia-a100": 1})
    try:
        yield Harness(loop, runtime, root)
    finally:
        loop.run_until_complete(runtime.close())
        loop.close()


def test_capacity_reports_the_pool_without_using_agent_slots(h: Harness) -> None:
    assert h.full_pool() == POOL_SIZE + 1
    cap = h.run(h.runtime.heartbeat())
    assert cap.warm_pool == POOL_SIZE + 1
    assert cap.active_agents == 0 and cap.available_agents == MAX_AGENTS  # idle members take no slot
    # idle members hold Ray resources, and the capacity counts them as claimable
    assert ray.available_resources().get("CPU", 0.0) <= 8.0 - (POOL_SIZE + 1) + 1e-6
    assert cap.free_cpus == pytest.approx(8.0)
    assert cap.free_gpus == {"nvidia-a100": pytest.approx(2.0)}


def test_warm_spawn_adopts_a_pool_actor_and_the_pool_refills(h: Harness) -> None:
    h.full_pool()
    agent = h.spawn(model="m-warm", env={"GREETING": "hello"})
    origin = h.origin(agent.id)
    assert origin["pooled"] and origin["adopted"]
    assert h.runtime.pool.idle_count == POOL_SIZE  # one default member taken, the GPU one left
    result = h.exec(agent.id, 'echo "$GREETING $GODEL_AGENT_ID $GODEL_MODEL"; pwd')
    assert result.stdout.splitlines() == [f"hello {agent.id} m-warm", str(h.root / agent.id)]
    assert h.run(h.runtime.status(agent.id)).epoch == 1

    assert h.full_pool() == POOL_SIZE + 1  # refilled in the background
    cold = h.spawn(cpus=0.25)  # resources no pool holds: a fresh actor
    assert not h.origin(cold.id)["pooled"]
    assert h.runtime.pool.idle_count == POOL_SIZE + 1
    h.kill_all([agent, cold])
    assert not (h.root / agent.id).exists()


def test_gpu_pool_serves_matching_gpu_spawns(h: Harness) -> None:
    h.full_pool()
    agent = h.spawn(gpu_type="A100")
    assert h.origin(agent.id)["pooled"]
    assert len(agent.gpu_ids) == 1
    h.kill_all([agent])


def test_concurrent_spawns_never_share_an_actor(h: Harness) -> None:
    h.full_pool()

    async def burst() -> list[Agent]:
        results = await asyncio.gather(*(h.runtime.spawn(SpawnConfig(labels={"n": str(i)}))
                                         for i in range(4)))
        return [agent for agent, _ in results]

    agents = h.run(burst())
    origins = [h.origin(a.id) for a in agents]
    assert len({o["pid"] for o in origins}) == len(agents)  # four agents, four processes
    assert sum(o["pooled"] for o in origins) >= 1
    for agent in agents:
        assert h.exec(agent.id, "echo $GODEL_AGENT_ID").stdout == f"{agent.id}\n"
    # the actor itself refuses a second identity
    claimed = next(a for a, o in zip(agents, origins, strict=True) if o["pooled"])
    actor = h.runtime._table[claimed.id].actor
    assert actor is not None
    other = Agent(id="intruder", config=SpawnConfig())
    with pytest.raises(FailedPrecondition):
        h.run(actor.adopt(other, str(h.root)).result())
    h.kill_all(agents)


def test_idle_members_are_evicted_for_a_spawn_that_needs_their_room(h: Harness) -> None:
    assert h.full_pool() == POOL_SIZE + 1  # they hold 3 of the 8 CPUs
    big = h.spawn(cpus=7)
    assert not h.origin(big.id)["pooled"]
    assert h.runtime.pool.idle_count < POOL_SIZE + 1
    h.kill_all([big])
