"""``run_streaming`` on its own (no Ray): coalesced chunks within ``Limits.exec_chunk_bytes``, a slow
reader holding the command back, exact byte counts, the result last, and no thread per child.

Real ``bash`` processes, no sandbox; a "slow reader" waits (polling with a deadline, off the loop)
until the writer has exited or blocks on its full pipe, so it is slower than the writer by construction.
"""

from __future__ import annotations

import asyncio
import threading
from functools import partial
from pathlib import Path

from godel_ray.agents import childwatch
from godel_ray.agents.process import ProcessControl, run_streaming
from godel_ray.models import ExecChunk, OutputStream
from godel_ray.settings import LIMITS
from tests.helpers import ECHO_SELF, gone_or_blocked_writing, host_pid, wait_for

BOUND = LIMITS.exec_chunk_bytes
BIG = 20_000_000  # bytes of output: many chunks, over the old single-message size


def _stream(command: str, cwd: Path, **kwargs: object) -> object:
    options: dict[str, object] = {"cwd": str(cwd), "env": {"PATH": "/usr/bin:/bin"}, "timeout_s": 120.0,
                                  "max_output_bytes": 32 * 1024 * 1024}
    options.update(kwargs)
    return run_streaming(command, **options)  # type: ignore[arg-type]


def test_a_slow_reader_gets_bounded_chunks_every_byte_and_the_result_last(tmp_path: Path) -> None:
    async def go() -> tuple[list[ExecChunk], int | None]:
        chunks: list[ExecChunk] = []
        writer_while_waiting = None
        async for chunk in _stream(f"{ECHO_SELF} > writer.pid; exec head -c {BIG} /dev/zero", tmp_path):  # type: ignore[attr-defined]
            if not chunks:  # the reader stalls after the first chunk until the writer cannot go on
                ref = (tmp_path / "writer.pid").read_text()
                await asyncio.to_thread(wait_for, partial(gone_or_blocked_writing, ref), "the writer to stall",
                                        60.0, 0.05)
                writer_while_waiting = host_pid(ref)
            chunks.append(chunk)
        return chunks, writer_while_waiting

    chunks, writer = asyncio.run(go())
    assert writer is not None  # held back by the reader, not run to its end with its output piling up here
    assert all(c.result is None for c in chunks[:-1]) and chunks[-1].result is not None
    assert chunks[-1].result.exit_code == 0 and not chunks[-1].result.truncated
    sizes = [len(c.data.encode()) for c in chunks[:-1]]
    assert max(sizes) <= BOUND and sum(sizes) == BIG
    assert len(sizes) < 4 * BIG // BOUND  # coalesced: not one message per pipe read


def test_invalid_utf8_grows_when_decoded_but_no_chunk_passes_the_bound(tmp_path: Path) -> None:
    async def go() -> list[ExecChunk]:
        return [c async for c in _stream("head -c 3000000 /dev/urandom; head -c 2000000 /dev/urandom >&2",  # type: ignore[attr-defined]
                                         tmp_path)]

    chunks = asyncio.run(go())
    assert chunks[-1].result is not None and chunks[-1].result.exit_code == 0
    output = chunks[:-1]
    assert all(len(c.data.encode()) <= BOUND for c in output)
    assert {c.stream for c in output} == {OutputStream.STDOUT, OutputStream.STDERR}
    assert sum(len(c.data.encode()) for c in output) > 5_000_000  # U+FFFD is 3 bytes: more than was read


def test_max_output_bytes_still_truncates(tmp_path: Path) -> None:
    async def go() -> list[ExecChunk]:
        return [c async for c in _stream("head -c 1000000 /dev/zero", tmp_path, max_output_bytes=300_000)]  # type: ignore[attr-defined]

    chunks = asyncio.run(go())
    assert chunks[-1].result is not None and chunks[-1].result.truncated
    assert sum(len(c.data.encode()) for c in chunks[:-1]) == 300_000


def test_no_thread_waits_for_a_running_command(tmp_path: Path) -> None:
    assert childwatch.install() == childwatch.pidfds_supported()

    async def go() -> tuple[list[str], int]:
        control = ProcessControl()
        stream = _stream("echo go; exec sleep 300", tmp_path, control=control)
        async for chunk in stream:  # type: ignore[attr-defined]
            if chunk.data == "go\n":
                names = [t.name for t in threading.enumerate()]
                control.kill("test done")
            if chunk.result is not None:
                return names, chunk.result.exit_code
        raise AssertionError("no result")

    names, exit_code = asyncio.run(go())
    if childwatch.pidfds_supported():
        assert not [n for n in names if n.startswith("waitpid-")]  # ThreadedChildWatcher's threads
    assert exit_code == 128 + 15  # SIGTERM to its group
