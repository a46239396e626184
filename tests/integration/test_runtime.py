"""AgentRuntime on a real Ray head (8 logical CPUs, 2 GPUs of type nvidia-a100).

One runtime and one event loop are shared by the module to keep it quick; each test spawns the
agents it needs with small CPU requests and kills them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest

from godel_ray.agents.runtime import AgentRuntime
from godel_ray.core.cluster_client import KILL_REASON_MIGRATED, collect
from godel_ray.errors import (
    AgentMoved,
    AgentNotFound,
    AgentNotRunning,
    InvalidArgument,
    ResourceExhausted,
    SnapshotRejected,
    StaleEpoch,
)
from godel_ray.models import AgentStatus, ExecChunk, ExecResult, SpawnConfig, TransferMode
from godel_ray.raykit import heads
from godel_ray.raykit.gateway import AgentGateway
from godel_ray.settings import LIMITS
from tests.helpers import ECHO_CHILD, ECHO_SELF, gone_or_blocked_writing, process_gone, wait_for

pytestmark = pytest.mark.ray
T = TypeVar("T")
DEADLINE_S = 60.0
BIG_OUTPUT = 12_000_000  # bytes a command prints: under max_output_bytes, over max_message_bytes


class Harness:
    def __init__(self, loop: asyncio.AbstractEventLoop, runtime: AgentRuntime, root: Path) -> None:
        self.loop = loop
        self.runtime = runtime
        self.root = root

    def run(self, coro: Awaitable[T]) -> T:
        return self.loop.run_until_complete(coro)  # type: ignore[arg-type]

    def spawn(self, **config: Any) -> Any:
        config.setdefault("cpus", 0.25)
        agent, created = self.run(self.runtime.spawn(SpawnConfig(**config)))
        assert created
        return agent

    def exec(self, agent_id: str, command: str, **kwargs: Any) -> ExecResult:
        async def go() -> ExecResult:
            return collect([c async for c in self.runtime.exec_stream(agent_id, command, **kwargs)])
        return self.run(go())

    def kill(self, agent_id: str, **kwargs: Any) -> Any:
        return self.run(self.runtime.kill(agent_id, **kwargs))


@pytest.fixture(scope="module")
def h(ray_client: heads.RayHead, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    loop = asyncio.new_event_loop()
    root = tmp_path_factory.mktemp("workdirs")
    runtime = AgentRuntime("site-a", str(root), region="test", cost_per_hour=1.5, max_agents=6,
                           ready_timeout_s=60.0)
    try:
        yield Harness(loop, runtime, root)
    finally:
        loop.run_until_complete(runtime.close())
        loop.close()


def test_spawn_exec_kill(h: Harness) -> None:
    agent = h.spawn(model="m1", labels={"team": "a"}, env={"GREETING": "hi"})
    assert agent.status == AgentStatus.RUNNING and agent.cluster_id == "site-a" and agent.node_id
    result = h.exec(agent.id, 'echo "$GREETING $GODEL_AGENT_ID $GODEL_MODEL"; pwd; echo oops >&2; exit 3')
    lines = result.stdout.splitlines()
    assert lines[0] == f"hi {agent.id} m1"
    assert lines[1] == str(h.root / agent.id)
    assert result.stderr == "oops\n" and result.exit_code == 3 and not result.timed_out
    assert "RAY_AUTH_TOKEN" not in h.exec(agent.id, "env").stdout
    assert [a.id for a in h.run(h.runtime.list_agents(labels={"team": "a"}))] == [agent.id]

    killed = h.kill(agent.id)
    assert killed.status == AgentStatus.TERMINATED
    assert not (h.root / agent.id).exists()
    with pytest.raises(AgentNotRunning):
        h.exec(agent.id, "true")
    assert h.run(h.runtime.status(agent.id)).status == AgentStatus.TERMINATED
    journal = h.run(h.runtime.journal(agent.id))
    assert journal[0].command.startswith('echo "$GREETING') and journal[0].exit_code == 3
    types = [e.type for e in h.runtime.recent_events() if e.agent_id == agent.id]
    assert types[0] == "agent.spawned" and "command.finished" in types and types[-1] == "agent.killed"


def test_exec_streams_output_before_the_command_ends(h: Harness) -> None:
    agent = h.spawn()

    async def go() -> list[tuple[float, ExecChunk]]:
        return [(time.monotonic(), c) async for c in
                h.runtime.exec_stream(agent.id, "echo first; sleep 1; echo second")]

    arrivals = h.run(go())
    first_at = next(t for t, c in arrivals if c.data == "first\n")
    end_at, last = arrivals[-1]
    assert last.result is not None and last.result.exit_code == 0
    assert first_at < end_at - 0.5  # the first line came while the command was still sleeping
    h.kill(agent.id)


def test_a_slow_reader_gets_bounded_chunks_every_byte_and_the_result_before_its_event(h: Harness) -> None:
    """Runtime -> Ray streaming generator -> AgentActor -> process: a reader that stalls until the
    command exited or blocks on its pipe gets every byte, in chunks within ``exec_chunk_bytes``, the
    result last, and ``command.finished`` only after the result reached it."""
    agent = h.spawn()
    since = h.runtime.last_event_seq

    async def go() -> tuple[list[ExecChunk], list[str]]:
        chunks: list[ExecChunk] = []
        seen_at_result: list[str] = []
        async for chunk in h.runtime.exec_stream(agent.id, f"{ECHO_SELF} > writer.pid; exec head -c {BIG_OUTPUT} "
                                                 "/dev/zero"):
            if not chunks:
                ref = (h.root / agent.id / "writer.pid").read_text()
                await asyncio.to_thread(wait_for, partial(gone_or_blocked_writing, ref), "the writer to stall",
                                        DEADLINE_S, 0.05)
            if chunk.result is not None:
                seen_at_result = [e.type for e in h.runtime.recent_events(since) if e.agent_id == agent.id]
            chunks.append(chunk)
        return chunks, seen_at_result

    chunks, seen_at_result = h.run(go())
    assert all(c.result is None for c in chunks[:-1]) and chunks[-1].result is not None
    assert chunks[-1].result.exit_code == 0 and not chunks[-1].result.truncated
    sizes = [len(c.data.encode()) for c in chunks[:-1]]
    assert max(sizes) <= LIMITS.exec_chunk_bytes and sum(sizes) == BIG_OUTPUT
    assert seen_at_result == ["command.started"]  # the result came first
    events = [e for e in h.runtime.recent_events(since) if e.agent_id == agent.id]
    assert [e.type for e in events] == ["command.started", "command.finished"]
    assert events[0].seq < events[1].seq and events[1].data["exit_code"] == "0"
    h.kill(agent.id)


def test_timeout_kills_the_command_and_its_children(h: Harness) -> None:
    agent = h.spawn()
    result = h.exec(agent.id, f"sleep 300 & {ECHO_CHILD} > child.pid; wait", timeout_s=1.0)
    assert result.timed_out and result.exit_code == 124
    child = (h.root / agent.id / "child.pid").read_text()
    assert _gone_within(child, 10.0), f"child {child} survived the timeout"
    assert h.exec(agent.id, "echo still-usable").stdout == "still-usable\n"
    h.kill(agent.id)


def test_leaving_a_stream_early_stops_the_command(h: Harness) -> None:
    agent = h.spawn()

    async def leave_after_first_chunk() -> str:
        stream = h.runtime.exec_stream(agent.id, f"sleep 300 & {ECHO_CHILD} > child.pid; echo go; wait")
        first = await stream.__anext__()
        await stream.aclose()  # type: ignore[attr-defined]
        return first.data

    assert h.run(leave_after_first_chunk()) == "go\n"
    child = h.exec(agent.id, "cat child.pid").stdout  # runs only once the first command ended
    assert _gone_within(child, 10.0)
    journal = h.run(h.runtime.journal(agent.id))
    assert journal[0].exit_code is not None and journal[0].exit_code != 0
    h.kill(agent.id)


def test_commands_run_one_at_a_time_in_order(h: Harness) -> None:
    agent = h.spawn()

    async def run_one(tag: str, delay_s: float) -> ExecResult:
        await asyncio.sleep(delay_s)  # submit in a known order
        cmd = f"echo start-{tag} >> order.log; sleep 0.3; echo end-{tag} >> order.log"
        return collect([c async for c in h.runtime.exec_stream(agent.id, cmd)])

    async def go() -> list[ExecResult]:
        return await asyncio.gather(*(run_one(t, i * 0.1) for i, t in enumerate("abc")))

    assert all(r.exit_code == 0 for r in h.run(go()))
    log_lines = h.exec(agent.id, "cat order.log").stdout.split()
    assert log_lines == ["start-a", "end-a", "start-b", "end-b", "start-c", "end-c"]
    h.kill(agent.id)


def test_gpu_agent_gets_its_gpu(h: Harness) -> None:
    agent = h.spawn(gpu_type="A100")  # normalised to the advertised "nvidia-a100"
    assert len(agent.gpu_ids) == 1
    visible = h.exec(agent.id, 'echo "$CUDA_VISIBLE_DEVICES"').stdout.strip()
    assert visible == agent.gpu_ids[0]
    capacity = h.run(h.runtime.heartbeat())
    assert capacity.gpu_types == ["nvidia-a100"] and capacity.total_gpus == 2 and capacity.total_cpus == 8
    assert capacity.free_gpus["nvidia-a100"] == 1 and capacity.active_agents >= 1
    assert capacity.max_agents == 6 and capacity.region == "test" and capacity.version
    h.kill(agent.id)


def test_missing_gpu_type_or_too_many_gpus_is_refused_and_leaves_nothing(h: Harness) -> None:
    before = h.run(h.runtime.list_agents())
    actors_before = _alive_agent_actors()
    with pytest.raises(ResourceExhausted, match="no node has GPU type 'nvidia-h100'.*nvidia-a100"):
        h.run(h.runtime.spawn(SpawnConfig(gpu_type="nvidia-h100", cpus=0.25)))
    with pytest.raises(ResourceExhausted, match="no node has .*4 GPU"):
        h.run(h.runtime.spawn(SpawnConfig(requires_gpu=True, gpu_count=4, cpus=0.25)))
    with pytest.raises(InvalidArgument, match="env name"):
        h.run(h.runtime.spawn(SpawnConfig(env={"1BAD": "x"})))
    assert h.run(h.runtime.list_agents()) == before
    assert _alive_agent_actors() == actors_before


def test_idempotency_key_returns_the_same_agent(h: Harness) -> None:
    first, created = h.run(h.runtime.spawn(SpawnConfig(cpus=0.25), idempotency_key="req-1"))
    again, created_again = h.run(h.runtime.spawn(SpawnConfig(cpus=0.25), idempotency_key="req-1"))
    assert created and not created_again and again.id == first.id
    h.kill(first.id)


def test_export_import_preserves_files_journal_labels_and_fences_epochs(h: Harness) -> None:
    agent = h.spawn(labels={"task": "dl"})
    h.exec(agent.id, "mkdir -p data && echo payload > data/f.txt && ln -s data/f.txt link")
    snapshot = h.run(h.runtime.export(agent.id, epoch=1, freeze=True))
    assert snapshot.agent.status == AgentStatus.MIGRATING and snapshot.size_bytes > 0

    # Frozen: a new command waits; killing the copy as migrated makes it fail with AgentMoved.
    async def waiting() -> ExecResult:
        return collect([c async for c in h.runtime.exec_stream(agent.id, "echo late")])

    task = h.loop.create_task(waiting())
    h.run(asyncio.sleep(0.3))
    assert not task.done()
    h.kill(agent.id, epoch=1, reason=KILL_REASON_MIGRATED)
    with pytest.raises(AgentMoved):
        h.run(task)
    with pytest.raises(AgentMoved):
        h.exec(agent.id, "true")

    moved = snapshot.model_copy(update={"agent": snapshot.agent.model_copy(update={"epoch": 2})})
    restored = h.run(h.runtime.import_(moved))
    assert restored.id == agent.id and restored.epoch == 2 and restored.status == AgentStatus.RUNNING
    assert restored.labels == {"task": "dl"}
    assert h.exec(agent.id, "cat data/f.txt link", epoch=2).stdout == "payload\npayload\n"
    journal = h.run(h.runtime.journal(agent.id))
    assert journal[0].command.startswith("mkdir -p data") and journal[0].exit_code == 0
    with pytest.raises(StaleEpoch):
        h.exec(agent.id, "true", epoch=1)
    with pytest.raises(StaleEpoch):
        h.kill(agent.id, epoch=1)

    # An import under a new id; a tampered archive is refused and leaves nothing behind.
    copy = h.run(h.runtime.import_(snapshot.model_copy(update={
        "agent": snapshot.agent.model_copy(update={"id": "copy-1"})})))
    assert h.exec(copy.id, "cat data/f.txt").stdout == "payload\n"
    bad = snapshot.model_copy(update={"agent": snapshot.agent.model_copy(update={"id": "copy-2"}),
                                      "archive": snapshot.archive[:-10] + b"0" * 10})
    with pytest.raises(SnapshotRejected, match="checksum"):
        h.run(h.runtime.import_(bad))
    with pytest.raises(AgentNotFound):
        h.run(h.runtime.status("copy-2"))
    assert not (h.root / "copy-2").exists()
    h.kill(agent.id)
    h.kill(copy.id)


def test_freeze_then_resume_runs_the_waiting_command(h: Harness) -> None:
    agent = h.spawn()
    h.run(h.runtime.export(agent.id, freeze=True))

    async def waiting() -> ExecResult:
        return collect([c async for c in h.runtime.exec_stream(agent.id, "echo after-resume")])

    task = h.loop.create_task(waiting())
    h.run(asyncio.sleep(0.3))
    assert not task.done()
    assert h.run(h.runtime.resume(agent.id)).status == AgentStatus.RUNNING
    assert h.run(task).stdout == "after-resume\n"
    h.kill(agent.id)


def test_lifetime_timeout_ends_the_agent_with_the_reason(h: Harness) -> None:
    agent = h.spawn(timeout_s=1.5)
    result = h.exec(agent.id, "sleep 60")  # killed when the lifetime ends
    assert result.exit_code != 0
    status = _poll(h, lambda: h.runtime.status(agent.id), lambda a: a.status == AgentStatus.COMPLETED)
    assert status.status_reason == "lifetime timeout of 1.5 s reached"
    with pytest.raises(AgentNotRunning, match="lifetime timeout"):
        h.exec(agent.id, "true")
    events = [e for e in h.runtime.recent_events() if e.agent_id == agent.id and e.type == "agent.status"]
    assert events[-1].data["status"] == "completed"


def test_events_stream_resumes_from_a_sequence_number(h: Harness) -> None:
    last = h.runtime.last_event_seq
    agent = h.spawn()

    async def first_two() -> list[Any]:
        stream: AsyncIterator[Any] = h.runtime.events(last)
        out = [await stream.__anext__(), await stream.__anext__()]
        await stream.aclose()  # type: ignore[attr-defined]
        return out

    h.exec(agent.id, "true")
    events = h.run(first_two())
    assert [e.seq for e in events] == [last + 1, last + 2]
    assert events[0].type == "agent.spawned" and events[0].agent_id == agent.id
    h.kill(agent.id)


def test_max_agents_is_enforced(h: Harness) -> None:
    live = [a for a in h.run(h.runtime.list_agents()) if not a.status.is_final]
    spawned = [h.spawn(cpus=0.1) for _ in range(h.runtime.max_agents - len(live))]
    with pytest.raises(ResourceExhausted, match="maximum of 6"):
        h.spawn(cpus=0.1)
    for agent in spawned:
        h.kill(agent.id)


def test_an_agent_whose_process_dies_is_failed_with_the_reason(h: Harness) -> None:
    """The actor's worker is SIGKILLed: the runtime marks the agent FAILED (Ray's death, mapped by
    raykit, through the runtime's policy) and refuses new commands with AgentNotRunning."""
    agent = h.spawn()
    actor = h.runtime._table[agent.id].actor  # the test looks at the actor itself
    assert actor is not None
    pid = int(h.run(actor.origin().result())["pid"])
    os.kill(pid, signal.SIGKILL)
    failed = _poll(h, lambda: h.runtime.status(agent.id), lambda a: a.status == AgentStatus.FAILED)
    assert failed.status == AgentStatus.FAILED and "agent process died" in failed.status_reason
    with pytest.raises(AgentNotRunning, match="failed"):
        h.exec(agent.id, "true")
    assert h.kill(agent.id).status == AgentStatus.FAILED  # killing a dead agent is a no-op


def test_a_direct_call_is_checked_by_the_actor_itself(h: Harness) -> None:
    """A proxy's one hop: the actor refuses another epoch (StaleEpoch) and a fenced copy (AgentMoved)
    before the command starts; the refused commands never reach the journal or the workdir."""
    agent = h.spawn()
    actor = AgentGateway(agent.id, h.run(h.runtime.agent_actor(agent.id, agent.epoch)))
    assert actor.run("echo direct", None, agent.epoch).get().stdout == "direct\n"
    assert collect(list(actor.exec("echo streamed", None, agent.epoch))).stdout == "streamed\n"
    with pytest.raises(StaleEpoch):
        actor.run("touch stale", None, agent.epoch + 1).get()
    with pytest.raises(StaleEpoch):
        h.run(h.runtime.agent_actor(agent.id, agent.epoch + 1))
    h.run(h.runtime.fence(agent.id, agent.epoch + 1))  # restored elsewhere at a newer epoch
    with pytest.raises(AgentMoved):
        actor.run("touch fenced", None, agent.epoch).get()
    with pytest.raises(AgentMoved):
        h.exec(agent.id, "touch fenced-too")  # through the runtime as well
    assert [e.command for e in actor.journal().get()] == ["echo direct", "echo streamed"]
    assert sorted(p.name for p in (h.root / agent.id).iterdir()) == []
    h.kill(agent.id)


def test_collect_mode_is_the_stream_collected_with_the_same_limits(
        ray_client: heads.RayHead, tmp_path: Path) -> None:
    """``exec`` (one reply from the actor) and ``exec_stream`` agree, truncation and journal included."""
    loop = asyncio.new_event_loop()
    small = LIMITS.model_copy(update={"max_output_bytes": 1000})
    runtime = AgentRuntime("site-small", str(tmp_path), limits=small)
    h = Harness(loop, runtime, tmp_path)
    try:
        agent = h.spawn()
        command = "head -c 3000 /dev/zero | tr '\\0' a; echo oops >&2; exit 4"
        collected = h.run(runtime.exec(agent.id, command))
        streamed = h.exec(agent.id, command)
        assert collected.truncated and len(collected.stdout + collected.stderr) == 1000
        assert (collected.stdout, collected.stderr, collected.exit_code, collected.truncated) == (
            streamed.stdout, streamed.stderr, streamed.exit_code, streamed.truncated)
        assert [(e.command, e.exit_code) for e in h.run(runtime.journal(agent.id))] == [(command, 4)] * 2
        finished = [e for e in runtime.recent_events() if e.type == "command.finished"]
        assert [e.data["exit_code"] for e in finished] == ["4", "4"]
    finally:
        loop.run_until_complete(runtime.close())
        loop.close()


def _poll(h: Harness, call: Callable[[], Awaitable[T]], ok: Callable[[T], bool]) -> T:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        value = h.run(call())
        if ok(value) or time.monotonic() > deadline:
            return value
        h.run(asyncio.sleep(0.05))


def _gone_within(child: str, timeout_s: float) -> bool:
    """``child``: what ``ECHO_CHILD`` printed inside the agent (its pid there and its PID namespace)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process_gone(child):
            return True
        time.sleep(0.05)
    return False


def _alive_agent_actors() -> int:
    # The state API needs the dashboard, which the test head does not run: read the GCS table.
    from ray._private import state

    return len([a for a in state.actors().values()
                if a["State"] != "DEAD" and "AgentActor" in a["ActorClassName"]])


def test_a_streamed_move_pre_copies_while_running_then_applies_the_delta_frozen(h: Harness) -> None:
    """Protocol v2 on one runtime (a copy under another id): prepare, a FULL stream while the agent
    runs, changes, freeze, the FINAL delta (files written, deleted, renamed; the journal), activate."""
    agent = h.spawn(labels={"task": "stream"})
    h.exec(agent.id, "mkdir d && echo one > d/a && head -c 300000 /dev/urandom > big && echo gone > old "
                     "&& echo r > before")
    prepared = h.run(h.runtime.prepare(agent.model_copy(update={"id": "stream-1", "epoch": 2})))
    assert (prepared.status, prepared.epoch) == (AgentStatus.PENDING, 2)
    with pytest.raises(AgentNotRunning):
        h.exec("stream-1", "true")  # a prepared copy serves nothing before it is activated
    full = h.run(h.runtime.receive("stream-1", h.runtime.send(agent.id, TransferMode.FULL, epoch=1), epoch=2))
    assert full.bytes_moved > 300_000
    h.exec(agent.id, "echo two > d/a && rm old && mv before after && mkdir new && echo n > new/f")
    tree = "find . | LC_ALL=C sort; cat d/a new/f after; sha256sum big"
    expected = h.exec(agent.id, tree).stdout
    frozen = h.run(h.runtime.freeze(agent.id, epoch=1))
    assert frozen.agent.status is AgentStatus.MIGRATING and frozen.frozen_at is not None
    final = h.run(h.runtime.receive("stream-1", h.runtime.send(agent.id, TransferMode.FINAL, epoch=1), epoch=2))
    assert 0 < final.bytes_moved < 300_000  # the big file is not sent again
    active = h.run(h.runtime.activate("stream-1", epoch=2))
    assert (active.status, active.epoch) == (AgentStatus.RUNNING, 2)
    assert h.exec("stream-1", tree).stdout == expected
    journal = [e.command for e in h.run(h.runtime.journal("stream-1"))]
    assert journal[2:] == [tree, tree] and journal[0].startswith("mkdir d")  # the source's, then this copy's
    h.kill(agent.id)
    h.kill("stream-1")
    assert not (h.root / ".staging-stream-1").exists()


def test_a_prepared_copy_killed_before_activation_leaves_no_staging(h: Harness) -> None:
    agent = h.spawn()
    h.exec(agent.id, "echo x > f")
    h.run(h.runtime.prepare(agent.model_copy(update={"id": "stream-2", "epoch": 5})))
    h.run(h.runtime.receive("stream-2", h.runtime.send(agent.id, TransferMode.FULL), epoch=5))
    assert (h.root / ".staging-stream-2" / "f").exists()
    h.kill("stream-2", epoch=5)
    assert not (h.root / ".staging-stream-2").exists() and not (h.root / "stream-2").exists()
    assert h.exec(agent.id, "cat f").stdout == "x\n"  # the source never noticed
    h.kill(agent.id)
