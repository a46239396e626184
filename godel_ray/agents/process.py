"""Running one shell command with streamed output: ``run_streaming``.

The command runs as ``bash -c`` in its own session (so it leads a new process group); stdout and
stderr are read concurrently and handed out as ``ExecChunk``s, coalesced: up to
``Limits.exec_chunk_bytes`` per chunk, or what arrived within ``FLUSH_S``, whichever comes first. A
slow reader holds the command back (its pipe fills) instead of output piling up here. The child is
watched through a pidfd (``agents.childwatch``), not a thread per command. On timeout (or when
the caller cancels via ``ProcessControl.kill``) the WHOLE process group is signalled: SIGTERM, a
short grace, then SIGKILL, so children die with the command. Output past ``max_output_bytes`` is
dropped (and the result says ``truncated``). No ray here.

With a ``Sandbox`` (``godel_ray.agents.sandbox``) the command runs inside bubblewrap instead, with
the agent's limits, in the agent's cgroup where one can be made (bwrap waits on ``--block-fd``
until the sandbox's first process is in it). A limit the command hit is said on stderr as a last
``godel: ...`` line and kept in ``ProcessControl.limit_reason``; the exit code is the command's.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import fcntl
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from godel_ray.agents import childwatch
from godel_ray.agents import sandbox as sbx
from godel_ray.agents.cgroups import AgentCgroup, sweep
from godel_ray.models import ExecChunk, ExecResult, OutputStream
from godel_ray.settings import LIMITS

KILL_GRACE_S = 1.0  # between SIGTERM and SIGKILL of the process group
PIPE_DRAIN_GRACE_S = 2.0  # after the command exits, how long background children may hold its pipes
READ_BYTES = 1024 * 1024  # at most this per read of an output pipe
PIPE_BYTES = 1024 * 1024  # each output pipe's size, where the kernel allows (the default is 64 KiB)
READ_PAUSE_S = 0.001  # after a short read: let the command fill the pipe (see ``_OutputPipe``)
HELD_CHUNKS = 4  # output read ahead of a slow reader, in chunks: the command runs on while a chunk is sent
FLUSH_S = 0.02  # a chunk goes out this long after its first byte, full or not
TIMEOUT_EXIT_CODE = 124  # what coreutils `timeout` uses
SANDBOX_SETUP_TIMEOUT_S = 30.0  # bwrap reports its sandbox's pid well within this
LIMIT_NOTE_PREFIX = "godel: "  # the stderr line that says which limit a sandboxed command hit
_AGENT_CGROUPS: dict[str, AgentCgroup] = {}  # this process's agents' cgroups, by agent id
log = logging.getLogger(__name__)


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
    limit_reason: str = ""  # the limits a sandboxed command hit ("" when none)
    exit_code: int | None = None  # set once the command has exited, even when nobody read the result
    interrupted: bool = False  # stopped by ``interrupt`` (to move the agent), not by a kill or a timeout
    grace_s: float = KILL_GRACE_S  # between SIGTERM and SIGKILL of the process group
    _kill_requested: asyncio.Event = field(default_factory=asyncio.Event)

    def kill(self, reason: str) -> None:
        if not self._kill_requested.is_set():
            self.kill_reason = reason
            self._kill_requested.set()

    def interrupt(self, reason: str, grace_s: float) -> None:
        """Stop the command so its agent can move: SIGTERM, ``grace_s``, then SIGKILL. No-op once a
        kill was asked for (that kill's reason stands)."""
        if not self._kill_requested.is_set():
            self.interrupted = True
            self.grace_s = grace_s
            self.kill(reason)


async def _terminate_group(proc: asyncio.subprocess.Process, pgid: int, grace_s: float = KILL_GRACE_S) -> None:
    kill_process_group(pgid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace_s)
    except TimeoutError:
        pass
    # SIGKILL the group even when the leader exited: its children may have ignored SIGTERM.
    kill_process_group(pgid, signal.SIGKILL)
    await proc.wait()


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # -9 -> 137, like a shell


async def _read_to_eof(fd: int) -> bytes:
    """Everything from pipe ``fd`` until its writer closes it; ``fd`` is closed on every path."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                os.fdopen(fd, "rb", buffering=0))
    try:
        return await reader.read()
    finally:
        transport.close()


class _OutputPipe:
    """The read end of one of the command's output pipes, read without ``StreamReader``.

    The pipe is enlarged to ``PIPE_BYTES`` where the kernel allows. Then, after a read that did not
    fill the buffer, the reader pauses ``READ_PAUSE_S`` with the pipe unwatched: the command keeps
    writing into the big pipe meanwhile, and the next read takes all of it at once. Without the pause
    every small write of the command would wake the loop (asyncio's pipe reader read 5x slower than
    a plain blocking read here). The fd is closed by ``close`` (idempotent)."""

    def __init__(self) -> None:
        self.fd, self.write_fd = os.pipe()
        try:
            fcntl.fcntl(self.fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
            self.big = True
        except OSError:  # over the user's pipe quota: a default pipe, read at once
            self.big = False
        os.set_blocking(self.fd, False)

    async def read(self) -> bytes:
        """The next bytes (b"" at end of file)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = os.read(self.fd, READ_BYTES)
            except BlockingIOError:
                ready = loop.create_future()
                loop.add_reader(self.fd, ready.set_result, None)
                try:
                    await ready
                finally:
                    loop.remove_reader(self.fd)
                continue
            if self.big and 0 < len(data) < READ_BYTES:
                await asyncio.sleep(READ_PAUSE_S)
            return data

    def close_write(self) -> None:
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def close(self) -> None:
        self.close_write()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


async def _spawn(command: str, cwd: str, env: dict[str, str], sandbox: sbx.Sandbox | None,
                 cgroup: AgentCgroup | None, stdout: int, stderr: int) -> asyncio.subprocess.Process:
    """Start the command (plain, or in ``sandbox``; inside ``cgroup`` before it runs, when given),
    its output into the pipes ``stdout`` and ``stderr`` (the caller's to close)."""
    options = {"cwd": cwd, "stdin": asyncio.subprocess.DEVNULL, "stdout": stdout, "stderr": stderr,
               "start_new_session": True}
    if sandbox is None:
        return await asyncio.create_subprocess_exec("bash", "-c", command, env=env, **options)  # type: ignore[arg-type]
    fds: list[int] = []  # ours to close, whatever happens
    try:
        startup = sbx.startup_pipe(sandbox.startup_script(env, cgroup=cgroup is not None))
        fds.append(startup)
        if cgroup is None:
            return await asyncio.create_subprocess_exec(
                *sandbox.argv(command, startup_fd=startup), env=sandbox.run_env(), pass_fds=(startup,),
                **options)  # type: ignore[arg-type]
        block_r, block_w = os.pipe()
        fds += [block_r, block_w]
        info_r, info_w = os.pipe()
        fds.append(info_w)
        info_reading = asyncio.ensure_future(_read_to_eof(info_r))  # owns info_r from here
        try:
            proc = await asyncio.create_subprocess_exec(
                *sandbox.argv(command, startup_fd=startup, block_fd=block_r, info_fd=info_w),
                env=sandbox.run_env(), pass_fds=(startup, block_r, info_w), **options)  # type: ignore[arg-type]
        except BaseException:
            info_reading.cancel()
            raise
        for fd in (block_r, info_w):  # the child's ends: closing ours lets EOF reach us
            fds.remove(fd)
            os.close(fd)
        try:  # bwrap writes its sandbox's pid, then waits on block_fd
            info = await asyncio.wait_for(info_reading, SANDBOX_SETUP_TIMEOUT_S)
            # Only the sandbox's first process: it forks the command. Each move into a cgroup costs
            # the kernel a grace period (ms), so bwrap's monitor, which only waits, stays out.
            cgroup.add(int(json.loads(info)["child-pid"]))
        except (ValueError, KeyError, OSError, TimeoutError) as exc:  # bwrap failed early: it says why
            log.debug("command not moved into its cgroup: %r", exc)
        except BaseException:  # cancelled: the command must not run unattended
            kill_process_group(proc.pid, signal.SIGKILL)
            raise
        with contextlib.suppress(OSError):
            os.write(block_w, b"1")  # go
        return proc
    finally:
        for fd in fds:
            os.close(fd)


def _agent_cgroup(sandbox: sbx.Sandbox) -> AgentCgroup | None:
    """The agent's cgroup, made on its first command and reused (None where none can be made)."""
    lim = sandbox.limits
    cgroup = _AGENT_CGROUPS.get(sandbox.name)
    if cgroup is not None and cgroup.exists() and (cgroup.memory_mb, cgroup.processes) == (lim.memory_mb,
                                                                                             lim.processes):
        return cgroup
    if cgroup is not None:
        cgroup.try_remove()
    cgroup = AgentCgroup.create(f"{sandbox.name}-{os.getpid()}", lim.memory_mb, lim.processes)
    if cgroup is not None:
        _AGENT_CGROUPS[sandbox.name] = cgroup
        sweep(tuple(d.parent for d in cgroup.dirs))  # those of agents whose process has gone
    return cgroup


def release_agent_cgroup(agent_id: str) -> None:
    """Remove ``agent_id``'s cgroup once its last processes have exited (the agent ended; blocks up to
    about a second per directory: call it in a thread). One left busy is removed by a later ``sweep``."""
    cgroup = _AGENT_CGROUPS.pop(agent_id, None)
    if cgroup is not None:
        cgroup.remove()


async def _limit_reasons(sandbox: sbx.Sandbox, cgroup: AgentCgroup | None, before: tuple[int, int],
                         exit_code: int) -> list[str]:
    reasons = cgroup.breaches(before) if cgroup is not None else []
    if note := sbx.describe_breach(exit_code, sandbox.limits):
        reasons.append(note)
    used_mb = await asyncio.to_thread(sbx.workdir_usage_mb, sandbox.workdir, sandbox.limits.workdir_mb)
    if used_mb > sandbox.limits.workdir_mb:
        reasons.append(f"the workdir holds over {sandbox.limits.workdir_mb} MiB, its limit: delete files "
                       "before it is checkpointed or moved")
    return reasons


def utf8_pieces(text: str, max_bytes: int) -> list[str]:
    """``text`` cut (at character boundaries) into pieces of at most ``max_bytes`` UTF-8 bytes each.

    Decoding with ``errors="replace"`` can grow bytes (one bad byte becomes a 3-byte U+FFFD), so a
    chunk read within the bound is measured again as text before it goes out."""
    if not text:
        return []
    if len(text) * 4 <= max_bytes or (text.isascii() and len(text) <= max_bytes):  # isascii is O(1)
        return [text]
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return [text]
    pieces, start = [], 0
    while start < len(raw):
        end = min(start + max_bytes, len(raw))
        while end < len(raw) and raw[end] & 0xC0 == 0x80:  # not inside a character
            end -= 1
        pieces.append(raw[start:end].decode("utf-8"))
        start = end
    return pieces


class _OutputBuffer:
    """What the pumps have read and the consumer has not taken yet, with backpressure.

    Invariants: ``put`` never blocks the caller beyond ``high_bytes`` of held output (a pump then
    waits in ``room``, the pipe fills, and the command blocks writing: a slow reader slows the
    command rather than growing memory); the end marker (None) is always accepted; ``reader_behind``
    says whether a pump waits for the consumer, or did since ``blocked`` was last cleared."""

    def __init__(self, high_bytes: int) -> None:
        self.queue: asyncio.Queue[tuple[OutputStream, bytes] | None] = asyncio.Queue()
        self._high = high_bytes
        self._held = 0
        self._room = asyncio.Event()
        self._room.set()
        self._unbounded = False
        self._waiting = 0  # pumps waiting for room now
        self.blocked = False

    @property
    def reader_behind(self) -> bool:
        """Whether a pump waits for the consumer now, or did since ``blocked`` was last cleared."""
        return self.blocked or self._waiting > 0

    async def put(self, kind: OutputStream, data: bytes) -> None:
        self.queue.put_nowait((kind, data))
        self._held += len(data)
        while self._held >= self._high and not self._unbounded:
            self.blocked = True
            self._room.clear()
            self._waiting += 1
            try:
                await self._room.wait()
            finally:
                self._waiting -= 1

    def end(self) -> None:
        self.queue.put_nowait(None)

    def taken(self, item: tuple[OutputStream, bytes] | None) -> None:
        if item is not None:
            self._held -= len(item[1])
            if self._held < self._high:
                self._room.set()

    def unbound(self) -> None:
        """The consumer went away: pumps read on without waiting (the command is being stopped)."""
        self._unbounded = True
        self._room.set()


async def run_streaming(command: str, *, cwd: str, env: dict[str, str], timeout_s: float,
                        max_output_bytes: int, control: ProcessControl | None = None,
                        sandbox: sbx.Sandbox | None = None,
                        chunk_bytes: int = LIMITS.exec_chunk_bytes) -> AsyncIterator[ExecChunk]:
    """Run ``command`` (in ``sandbox`` when given); yield output chunks, then one chunk with the ``result``.

    Output is coalesced: a chunk goes out once it holds ``chunk_bytes`` or ``FLUSH_S`` after its
    first byte arrived, whichever comes first, and at the end; no chunk's ``data`` is over
    ``chunk_bytes`` UTF-8 bytes, and each holds one stream's output. A reader slower than the
    command holds it back (see ``_OutputBuffer``), so memory stays bounded too."""
    childwatch.install()
    control = control or ProcessControl()
    started = time.monotonic()
    cgroup: AgentCgroup | None = None
    before = (0, 0)
    if sandbox is not None:
        if not sbx.workdir_prepared(sandbox):
            await asyncio.to_thread(sbx.prepare_workdir, sandbox)
        if sandbox.cgroups:  # a few stats (and, once, a few writes): cheaper inline than through a thread
            cgroup = _agent_cgroup(sandbox)
            before = cgroup.counters() if cgroup is not None else before
    pipes = {OutputStream.STDOUT: _OutputPipe(), OutputStream.STDERR: _OutputPipe()}
    try:
        proc = await _spawn(command, cwd, env, sandbox, cgroup, pipes[OutputStream.STDOUT].write_fd,
                            pipes[OutputStream.STDERR].write_fd)
    except BaseException:
        for pipe in pipes.values():
            pipe.close()
        raise
    for pipe in pipes.values():
        pipe.close_write()  # the command's ends: ours closed, EOF comes when the command's close
    pgid = proc.pid  # start_new_session: the child leads its own group
    control.pgid = pgid
    buffer = _OutputBuffer(high_bytes=HELD_CHUNKS * chunk_bytes)
    budget = [max_output_bytes]
    truncated = [False]

    async def pump(pipe: _OutputPipe, kind: OutputStream) -> None:
        try:
            while True:
                data = await pipe.read()
                if not data:
                    return
                if budget[0] <= 0:
                    truncated[0] = True
                    continue  # keep draining so the command does not block on a full pipe
                if len(data) > budget[0]:
                    data, truncated[0] = data[: budget[0]], True
                budget[0] -= len(data)
                await buffer.put(kind, data)
        finally:
            pipe.close()

    pumps = [asyncio.create_task(pump(pipe, kind)) for kind, pipe in pipes.items()]

    async def drain_pipes() -> None:
        """After the command exited: what is still in its pipes, while children that still hold them
        get a short grace. Time the pumps spent waiting for a slow reader does not count."""
        pending = set(pumps)
        while pending:
            buffer.blocked = False
            _, pending = await asyncio.wait(pending, timeout=PIPE_DRAIN_GRACE_S)
            if pending and not buffer.reader_behind:
                for task in pending:
                    task.cancel()
                return

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
            await _terminate_group(proc, pgid, control.grace_s)
        await waiter
        assert proc.returncode is not None
        control.exit_code = TIMEOUT_EXIT_CODE if timed_out else _exit_code(proc.returncode)
        await drain_pipes()
        buffer.end()
        return timed_out

    supervisor = asyncio.create_task(supervise())
    decoders = {kind: codecs.getincrementaldecoder("utf-8")(errors="replace") for kind in OutputStream}
    loop = asyncio.get_running_loop()
    try:
        parts: list[bytes] = []  # the chunk being gathered: one stream's bytes, at most chunk_bytes
        size, kind, flush_at = 0, OutputStream.STDOUT, 0.0
        finished = False
        while not finished:
            item: tuple[OutputStream, bytes] | None
            if parts and buffer.queue.empty():
                try:
                    async with asyncio.timeout_at(flush_at):  # (wait_for may swallow a cancellation in 3.11)
                        item = await buffer.queue.get()
                except TimeoutError:
                    item = (kind, b"")  # FLUSH_S passed: send what there is
            else:
                item = await buffer.queue.get()
            buffer.taken(item)
            if item is None:
                finished = True
                item = (kind, b"")
            new_kind, data = item
            if parts and (new_kind != kind or not data):
                for text in utf8_pieces(decoders[kind].decode(b"".join(parts)), chunk_bytes):
                    yield ExecChunk(stream=kind, data=text)
                parts, size = [], 0
            while data:
                if not parts:
                    kind, flush_at = new_kind, loop.time() + FLUSH_S
                piece, data = data[: chunk_bytes - size], data[chunk_bytes - size:]
                parts.append(piece)
                size += len(piece)
                if size >= chunk_bytes:
                    for text in utf8_pieces(decoders[kind].decode(b"".join(parts)), chunk_bytes):
                        yield ExecChunk(stream=kind, data=text)
                    parts, size = [], 0
        for stream_kind, decoder in decoders.items():
            tail = decoder.decode(b"", final=True)
            if tail:
                yield ExecChunk(stream=stream_kind, data=tail)
        timed_out = await supervisor
        if sandbox is not None:
            assert control.exit_code is not None
            reasons = await _limit_reasons(sandbox, cgroup, before, control.exit_code)
            if reasons:
                control.limit_reason = "; ".join(reasons)
                note = f"{LIMIT_NOTE_PREFIX}{control.limit_reason}\n"
                for text in utf8_pieces(note, chunk_bytes):
                    yield ExecChunk(stream=OutputStream.STDERR, data=text)
    finally:
        if not supervisor.done():  # the consumer went away: stop the command
            buffer.unbound()
            control.kill("exec stream closed")
            with contextlib.suppress(BaseException):
                await asyncio.shield(supervisor)
    assert control.exit_code is not None
    yield ExecChunk(result=ExecResult(exit_code=control.exit_code, duration_s=time.monotonic() - started,
                                      timed_out=timed_out, truncated=truncated[0]))


__all__ = ["KILL_GRACE_S", "LIMIT_NOTE_PREFIX", "TIMEOUT_EXIT_CODE", "ProcessControl", "kill_process_group",
           "release_agent_cgroup", "run_streaming", "utf8_pieces"]
