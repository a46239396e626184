"""``agents.admission.StartGate``: at most ``limit`` agent starts at once, the rest in arrival order,
each with a deadline and a clear refusal. Pure asyncio: no Ray, no clock waits (events, not sleeps)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from godel_ray.agents.admission import StartGate
from godel_ray.errors import ResourceExhausted


def test_admission_imports_no_ray() -> None:
    code = "import sys, godel_ray.agents.admission; assert 'ray' not in sys.modules and 'grpc' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_at_most_limit_run_and_the_rest_start_in_arrival_order() -> None:
    async def scenario() -> tuple[list[str], int]:
        gate = StartGate("c")
        release = {name: asyncio.Event() for name in "abcde"}
        order: list[str] = []
        peak = 0

        async def start(name: str) -> None:
            nonlocal peak
            async with gate.admitted(2, timeout_s=60.0):
                order.append(name)
                peak = max(peak, gate.running)
                await release[name].wait()

        tasks = [asyncio.create_task(start(n)) for n in "abcde"]
        while len(order) < 2 or gate.waiting < 3:  # a and b run; c, d, e wait
            await asyncio.sleep(0)
        assert order == ["a", "b"]
        for name in "badce":  # b ends first: the first waiter (c), not a later one, takes its slot
            release[name].set()
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        return order, peak

    order, peak = asyncio.run(scenario())
    assert order == ["a", "b", "c", "d", "e"] and peak == 2


def test_a_waiter_past_its_deadline_is_refused_and_takes_no_slot() -> None:
    async def scenario() -> StartGate:
        gate = StartGate("east")
        hold = asyncio.Event()

        async def first() -> None:
            async with gate.admitted(1, timeout_s=60.0):
                await hold.wait()

        task = asyncio.create_task(first())
        await asyncio.sleep(0)
        with pytest.raises(ResourceExhausted) as refused:
            async with gate.admitted(1, timeout_s=0.01):
                pass
        assert "cluster east is starting 1 agent(s) at once, its limit (1" in refused.value.message
        assert "retry" in refused.value.message and refused.value.cluster_id == "east"
        cancelled = asyncio.create_task(_enter_and_leave(gate))
        await asyncio.sleep(0)
        cancelled.cancel()  # a caller that went away while waiting
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        hold.set()
        await task
        return gate

    gate = asyncio.run(scenario())
    assert gate.running == 0 and gate.waiting == 0


async def _enter_and_leave(gate: StartGate) -> None:
    async with gate.admitted(1, timeout_s=60.0):
        pass
