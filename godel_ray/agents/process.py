"""Running one shell command with streamed output: ``run_streaming``.

The command runs as ``bash -c`` in its own session (so it leads a new process group); stdout and
stderr are read concurrently and handed out as ``ExecChunk``s as they arrive. On timeout (or when
the caller cancels via ``ProcessControl.kill``) the WHOLE process group is signalled: SIGTERM, a
short grace, then SIGKILL, so children die with the command. Output past ``max_output_bytes`` is
dropped (and the result says ``truncated``). No ray here.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from godel_ray.models import ExecChunk, ExecResult, OutputStream

KILL_GRACE_S = 1.0  # between SIGTERM and SIGKILL of the process group
PIPE_DRAIN_GRACE_S = 2.0  # after the command exits, how long background children may hold its pipes
READ_BYTES = 64 * 1024
TIMEOUT_EXIT_CODE = 124  # what coreutils `timeout` uses


def kill_process_group(pgid: int, sig: int) -> bool:
    """Signal every process in group ``pgid``; False when the group is already gone."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


@dataclass
class ProcessControl:
    """Handle on a running command, for whoever must stop it from outside (lifetime, terminate)."""

    pgid: int | None = None
    kill_reason: str = ""
    exit_code: int | None = None  # set once the command has exited, even when nobody read the result
    _kill_requested: asyncio.Event = field(default_factory=asyncio.Event)

    def kill(self, reason: str) -> None:
        if not self._kill_requested.is_set():
            self.kill_reason = reason
            self._kill_requested.set()


async def _terminate_group(proc: asyncio.subprocess.Process, pgid: int) -> None:
    kill_process_group(pgid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), KILL_GRACE_S)
    except TimeoutError:
        pass
    # SIGKILL the group even when the leader exited: its children may have ignored SIGTERM.
    kill_process_group(pgid, signal.SIGKILL)
    await proc.wait()


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # -9 -> 137, like a shell


async def run_streaming(command: str, *, cwd: str, env: dict[str, str], timeout_s: float,
                        max_output_bytes: int, control: ProcessControl | None = None,
                        ) -> AsyncIterator[ExecChunk]:
    """Run ``command``; yield output chunks as they arrive, then one chunk with the ``result``."""
    control = control or ProcessControl()
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", command, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)
    pgid = proc.pid  # start_new_session: the child leads its own group
    control.pgid = pgid
    queue: asyncio.Queue[tuple[OutputStream, bytes] | None] = asyncio.Queue()
    budget = [max_output_bytes]
    truncated = [False]

    async def pump(stream: asyncio.StreamReader, kind: OutputStream) -> None:
        while True:
            data = await stream.read(READ_BYTES)
            if not data:
                return
            if budget[0] <= 0:
                truncated[0] = True
                continue  # keep draining so the command does not block on a full pipe
            if len(data) > budget[0]:
                data, truncated[0] = data[: budget[0]], True
            budget[0] -= len(data)
            queue.put_nowait((kind, data))

    assert proc.stdout is not None and proc.stderr is not None
    pumps = [asyncio.create_task(pump(proc.stdout, OutputStream.STDOUT)),
             asyncio.create_task(pump(proc.stderr, OutputStream.STDERR))]

    async def supervise() -> bool:
        """Wait for exit, timeout or a kill request; returns True when it timed out."""
        waiter = asyncio.create_task(proc.wait())
        killer = asyncio.create_task(control._kill_requested.wait())
        try:
            done, _ = await asyncio.wait({waiter, killer}, timeout=timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            killer.cancel()
        timed_out = not done
        if waiter not in done:
            await _terminate_group(proc, pgid)
        await waiter
        assert proc.returncode is not None
        control.exit_code = TIMEOUT_EXIT_CODE if timed_out else _exit_code(proc.returncode)
        # The command has exited; children that still hold its pipes get a short grace.
        _, pending = await asyncio.wait(pumps, timeout=PIPE_DRAIN_GRACE_S)
        for task in pending:
            task.cancel()
        queue.put_nowait(None)
        return timed_out

    supervisor = asyncio.create_task(supervise())
    decoders = {kind: codecs.getincrementaldecoder("utf-8")(errors="replace") for kind in OutputStream}
    try:
        finished = False
        while not finished:
            items = [await queue.get()]
            while not queue.empty():  # whatever else already arrived goes out in the same chunks
                items.append(queue.get_nowait())
            pending_kind: OutputStream | None = None
            pending = b""
            for item in items:
                if item is None:
                    finished = True
                    break
                kind, data = item
                if kind != pending_kind and pending_kind is not None:
                    if text := decoders[pending_kind].decode(pending):
                        yield ExecChunk(stream=pending_kind, data=text)
                    pending = b""
                pending_kind, pending = kind, pending + data
            if pending_kind is not None and (text := decoders[pending_kind].decode(pending)):
                yield ExecChunk(stream=pending_kind, data=text)
        for kind, decoder in decoders.items():
            tail = decoder.decode(b"", final=True)
            if tail:
                yield ExecChunk(stream=kind, data=tail)
        timed_out = await supervisor
    finally:
        if not supervisor.done():  # the consumer went away: stop the command
            control.kill("exec stream closed")
            with contextlib.suppress(BaseException):
                await asyncio.shield(supervisor)
    assert control.exit_code is not None
    yield ExecChunk(result=ExecResult(exit_code=control.exit_code, duration_s=time.monotonic() - started,
                                      timed_out=timed_out, truncated=truncated[0]))


__all__ = ["KILL_GRACE_S", "TIMEOUT_EXIT_CODE", "ProcessControl", "kill_process_group", "run_streaming"]
