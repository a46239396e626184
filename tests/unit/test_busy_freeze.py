"""Freezing a busy agent (``AgentActor.freeze``), on the real actor class with real processes (no Ray).

WAIT: the freeze happens at the first idle moment; commands sent meanwhile are served first, in
order; past the busy timeout the attempt ends with ``AgentBusy`` and nothing is frozen. INTERRUPT:
the running command is stopped (SIGTERM, a grace, SIGKILL), its journal entry says so and its caller
gets ``CommandInterrupted`` naming the target. Commands wait on a file the test creates, so nothing
depends on timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from godel_ray.agents.actor import AgentActor
from godel_ray.agents.criu import live_process_refusal
from godel_ray.core.cluster_client import collect
from godel_ray.errors import AgentBusy, CommandInterrupted, LiveProcessUnavailable
from godel_ray.models import (
    Agent,
    AgentStatus,
    BusyPolicy,
    ExecChunk,
    ExecResult,
    FreezeOptions,
    Isolation,
    SpawnConfig,
)
from godel_ray.settings import Limits, SandboxPolicy

PLAIN = Limits(sandbox=SandboxPolicy(isolation=Isolation.NONE))
WAIT_S = 30.0


def blocked_until(flag: Path) -> str:
    """A command that runs until ``flag`` exists."""
    return f"while [ ! -e {flag} ]; do sleep 0.02; done; echo released"


async def until(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def run(actor: AgentActor, command: str) -> ExecResult:
    chunks: list[ExecChunk] = [c async for c in actor.exec(command)]
    return collect(chunks)


async def started_actor(tmp_path: Path) -> AgentActor:
    actor = AgentActor(Agent(id="ag-busy", config=SpawnConfig()), str(tmp_path / "agents"), limits=PLAIN)
    await actor.start()
    return actor


def in_loop(test: Callable[[Path], Awaitable[None]]) -> Callable[[Path], None]:
    def wrapper(tmp_path: Path) -> None:
        asyncio.run(test(tmp_path))
    wrapper.__name__ = test.__name__
    return wrapper


@in_loop
async def test_wait_freezes_at_the_first_idle_moment_and_serves_commands_sent_meanwhile(tmp_path: Path) -> None:
    actor = await started_actor(tmp_path)
    flag = tmp_path / "go"
    long = asyncio.create_task(run(actor, blocked_until(flag)))
    await until(lambda: bool(actor.journal()), "the long command to start")
    freeze = asyncio.create_task(actor.freeze(FreezeOptions(busy=BusyPolicy.WAIT, busy_timeout_s=WAIT_S)))
    sent_during = asyncio.create_task(run(actor, "echo served"))
    await until(lambda: actor._waiting == 1, "the new command to queue")
    assert not freeze.done()  # a command runs: no freeze yet, and the queue is not held
    flag.touch()
    assert (await long).stdout == "released\n"
    served = await sent_during
    frozen = await freeze
    assert served.stdout == "served\n" and frozen.agent.status is AgentStatus.MIGRATING
    assert frozen.interrupted_seq is None
    journal = actor.journal()
    assert [e.command for e in journal][1] == "echo served"
    last_finished = max(e.started_at + e.duration_s for e in journal)
    snapshot = await actor.export()
    assert snapshot.frozen_at is not None and snapshot.frozen_at >= last_finished
    assert frozen.frozen_at == snapshot.frozen_at
    held = asyncio.create_task(run(actor, "echo after"))  # frozen now: waits for resume (or the move)
    await until(lambda: actor._waiting == 1, "the command sent after the freeze to wait")
    assert not held.done() and len(actor.journal()) == 2
    await actor.resume()
    assert (await held).stdout == "after\n"
    await actor.terminate("done")


@in_loop
async def test_a_freeze_of_an_idle_agent_is_immediate_and_a_second_freeze_returns_at_once(tmp_path: Path) -> None:
    actor = await started_actor(tmp_path)
    first = await actor.freeze()
    assert first.agent.status is AgentStatus.MIGRATING and first.frozen_at is not None
    again = await actor.freeze(FreezeOptions(busy_timeout_s=0.01))
    assert again.agent.status is AgentStatus.MIGRATING and again.frozen_at == first.frozen_at
    await actor.terminate("done")


@in_loop
async def test_busy_timeout_gives_up_with_nothing_frozen(tmp_path: Path) -> None:
    actor = await started_actor(tmp_path)
    flag = tmp_path / "go"
    long = asyncio.create_task(run(actor, blocked_until(flag)))
    await until(lambda: bool(actor.journal()), "the long command to start")
    with pytest.raises(AgentBusy) as info:
        await actor.freeze(FreezeOptions(busy=BusyPolicy.WAIT, busy_timeout_s=0.2))
    assert "nothing was frozen" in str(info.value) and info.value.seq == 1
    assert actor.info().status is AgentStatus.RUNNING
    after = asyncio.create_task(run(actor, "echo still-serving"))
    flag.touch()
    await long
    assert (await after).stdout == "still-serving\n"
    await actor.terminate("done")


@in_loop
async def test_interrupt_stops_the_command_marks_its_entry_and_tells_its_caller_where_the_agent_goes(
        tmp_path: Path) -> None:
    actor = await started_actor(tmp_path)
    long = asyncio.create_task(run(actor, blocked_until(tmp_path / "never")))
    await until(lambda: bool(actor.journal()), "the long command to start")
    frozen = await actor.freeze(FreezeOptions(busy=BusyPolicy.INTERRUPT, grace_s=5.0, target="west"))
    assert frozen.agent.status is AgentStatus.MIGRATING and frozen.interrupted_seq == 1
    with pytest.raises(CommandInterrupted) as info:
        await long
    err = info.value
    assert err.cluster_id == "west" and err.seq == 1 and err.exit_code == 143  # SIGTERM, as a shell says
    assert "interrupted" in str(err) and "west" in str(err)
    [entry] = actor.journal()
    assert entry.interrupted and entry.exit_code == 143 and "west" in entry.interrupt_reason
    snapshot = await actor.export()
    assert snapshot.journal[0].interrupted and snapshot.frozen_at is not None
    await actor.terminate("done")


@in_loop
async def test_interrupt_kills_a_command_that_ignores_sigterm_after_the_grace(tmp_path: Path) -> None:
    actor = await started_actor(tmp_path)
    ready = tmp_path / "trap-set"
    long = asyncio.create_task(run(actor, f"trap '' TERM; touch {ready}; {blocked_until(tmp_path / 'never')}"))
    await until(ready.exists, "the command to ignore SIGTERM")
    await actor.freeze(FreezeOptions(busy=BusyPolicy.INTERRUPT, grace_s=0.2, target="east"))
    with pytest.raises(CommandInterrupted) as info:
        await long
    assert info.value.exit_code == 137  # SIGKILL
    assert actor.journal()[0].exit_code == 137
    await actor.terminate("done")




def fake_criu(bin_dir: Path, *, exit_code: int, message: str) -> None:
    """A ``criu`` on PATH that answers ``check`` as these machines' kernels make the real one answer."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "criu"
    script.write_text(f"#!/bin/sh\necho 'Error (criu/vdso.c:1): {message}' >&2\nexit {exit_code}\n")
    script.chmod(0o755)


def test_live_process_is_refused_with_the_reason_and_nothing_frozen(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert live_process_refusal() == "criu not installed"
    fake_criu(tmp_path / "bin", exit_code=1, message="vdso: Unexpected rt vDSO area bounds")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert live_process_refusal() == "criu check failed: Error (criu/vdso.c:1): vdso: Unexpected rt vDSO area bounds"
    fake_criu(tmp_path / "bin", exit_code=0, message="")
    assert "not implemented" in live_process_refusal()
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin") + ":/usr/bin:/bin")  # bash for the command, no criu

    async def go() -> None:
        actor = await started_actor(tmp_path)
        flag = tmp_path / "go"
        long = asyncio.create_task(run(actor, blocked_until(flag)))
        await until(lambda: bool(actor.journal()), "the long command to start")
        with pytest.raises(LiveProcessUnavailable, match="criu not installed") as info:
            await actor.freeze(FreezeOptions(busy=BusyPolicy.LIVE_PROCESS, target="west"))
        assert info.value.reason == "criu not installed" and "Nothing was frozen" in str(info.value)
        assert actor.info().status is AgentStatus.RUNNING
        flag.touch()
        assert (await long).stdout == "released\n"
        # idle: nothing runs that would need CRIU, so the freeze is the ordinary one
        frozen = await actor.freeze(FreezeOptions(busy=BusyPolicy.LIVE_PROCESS, target="west"))
        assert frozen.agent.status is AgentStatus.MIGRATING
        await actor.terminate("done")

    asyncio.run(go())
