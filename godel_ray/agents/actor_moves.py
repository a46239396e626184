"""What a move does to an ``AgentActor``: ``freeze`` (WAIT for idle, INTERRUPT the running
command, or LIVE_PROCESS) and ``resume``, and protocol v2's workdir streams: ``send`` on the source,
``receive_begin``/``receive_chunk``/``receive_end`` into an importing copy's staging directory, and
``activate`` (staging becomes the workdir, the agent runs).

A mixin base of ``AgentActor``, so these stay methods of the actor class that
``raykit.rayapi.remote_actor`` wraps; the state it uses is the actor's, declared below. The
invariants are the actor's (``agents.actor``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import TYPE_CHECKING, Any

from godel_ray.agents.criu import live_process_refusal
from godel_ray.agents.inbox import Inbox
from godel_ray.agents.process import ProcessControl
from godel_ray.agents.transfer import WorkdirStream, dirty_bytes
from godel_ray.agents.workdir import remove_tree
from godel_ray.errors import AgentBusy, FailedPrecondition, LiveProcessUnavailable
from godel_ray.models import (
    Agent,
    AgentStatus,
    BusyPolicy,
    FreezeOptions,
    FreezeReport,
    JournalEntry,
    TransferHeader,
    TransferMode,
    TransferPiece,
    TransferReport,
    TransferTrailer,
    now_s,
)
from godel_ray.settings import Limits

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


class AgentMoves:
    """Freeze/resume and workdir streams of one agent. Invariants: a FINAL stream is sent only while
    frozen (MIGRATING), a delta only after a full stream; streams are received only by an importing
    (PENDING) copy, one at a time; ``activate`` refuses while a stream is open."""

    _agent: Agent
    _workdir_root: str
    _workdir: str
    _limits: Limits
    _journal: list[JournalEntry]
    _importing: bool
    _manifest: dict[str, Any] | None
    _inbox: Inbox | None
    _lock: asyncio.Lock
    _unfrozen: asyncio.Event
    _activity: asyncio.Event
    _running: ProcessControl | None
    _running_seq: int
    _waiting: int
    _frozen_at: float | None
    _moving_to: str

    if TYPE_CHECKING:  # the actor's own
        async def start(self) -> Agent: ...
        def info(self) -> Agent: ...
        def journal(self) -> list[JournalEntry]: ...
        def _check_running(self) -> None: ...
        def _check_running_or_frozen(self) -> None: ...
        def _idle(self) -> bool: ...

    # --- freeze / resume ---------------------------------------------------------

    async def freeze(self, options: FreezeOptions | None = None) -> FreezeReport:
        """Freeze the agent for a move; return once it is frozen (no command runs, new ones wait),
        with when it froze and the journal entry of the command it interrupted (if any).

        LIVE_PROCESS: at once when idle, else ``LiveProcessUnavailable`` with the reason (CRIU is
        not used yet: ``agents.criu``), nothing frozen. WAIT (the default): at the first idle moment, when no command runs and none waits; until
        then the agent keeps serving commands in order. ``AgentBusy`` past ``busy_timeout_s``, with
        nothing frozen. INTERRUPT: new commands wait from now on, the running one is stopped
        (SIGTERM, ``grace_s``, SIGKILL). Idempotent: freezing a frozen agent returns at once.
        """
        options = options or FreezeOptions()
        self._check_running()
        if not self._unfrozen.is_set():
            return self._freeze_report(None)
        if options.busy is BusyPolicy.LIVE_PROCESS and not self._idle():
            reason = await asyncio.to_thread(live_process_refusal)
            raise LiveProcessUnavailable(
                f"agent {self._agent.id} cannot move with its running command: {reason}. Nothing was frozen; "
                "move it when idle (the default) or interrupt the command (--interrupt)",
                agent_id=self._agent.id, reason=reason)
        interrupted: int | None = None
        if options.busy is BusyPolicy.INTERRUPT:
            self._moving_to = options.target
            self._hold_commands()
            running = self._running
            if running is not None:
                where = options.target or "another cluster"
                running.interrupt(f"interrupted to move agent {self._agent.id} to {where}", options.grace_s)
            async with self._lock:  # the interrupted command has been reaped
                pass
            if running is not None and self._journal and self._journal[-1].interrupted:
                interrupted = self._journal[-1].seq
        else:
            await self._until_idle(options.busy_timeout_s)
            self._hold_commands()  # no await since the idle check: nothing slipped in
            self._moving_to = options.target
        self._frozen_at = now_s()
        return self._freeze_report(interrupted)

    def _freeze_report(self, interrupted_seq: int | None) -> FreezeReport:
        return FreezeReport(agent=self.info(), frozen_at=self._frozen_at, interrupted_seq=interrupted_seq)

    def _hold_commands(self) -> None:
        self._unfrozen.clear()
        self._agent.status = AgentStatus.MIGRATING

    async def _until_idle(self, timeout_s: float) -> None:
        """Return at the first moment the agent is idle; ``AgentBusy`` after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            self._check_running()
            if self._idle():
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                seq = f"command #{self._running_seq}" if self._running_seq else "a command"
                raise AgentBusy(
                    f"agent {self._agent.id} stayed busy for {timeout_s:g} s ({seq} running, {self._waiting} "
                    "waiting): the move is given up and nothing was frozen; retry when it is idle, with a "
                    "longer --busy-timeout, or interrupt the command (--interrupt / --busy interrupt)",
                    agent_id=self._agent.id, busy_timeout_s=timeout_s, seq=self._running_seq)
            self._activity.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._activity.wait(), remaining)

    async def resume(self) -> Agent:
        """Undo ``freeze``: waiting commands start again, in order."""
        self._check_running_or_frozen()
        self._agent.status = AgentStatus.RUNNING
        self._frozen_at, self._moving_to = None, ""
        self._unfrozen.set()
        return self.info()

    # --- workdir streams (protocol v2) -------------------------------------------------------

    @property
    def _staging(self) -> str:
        return os.path.join(self._workdir_root, f".staging-{self._agent.id}")

    def _fresh_staging(self) -> None:
        remove_tree(self._staging)  # left by an earlier attempt that did not finish
        os.makedirs(self._staging, mode=0o700)

    async def send(self, mode: TransferMode) -> AsyncIterator[TransferPiece]:
        """Stream the workdir: a header, the tar in ``limits.transfer_chunk_bytes`` chunks, a trailer.

        FULL: the whole tree, commands keep running. CHANGES: what changed since the last stream's
        manifest. FINAL: the same, with the agent and its journal; only while frozen (``freeze``).
        """
        self._check_running_or_frozen()
        if mode is TransferMode.FINAL and self._agent.status is not AgentStatus.MIGRATING:
            raise FailedPrecondition(f"agent {self._agent.id} must be frozen before its final delta")
        if mode is not TransferMode.FULL and self._manifest is None:
            raise FailedPrecondition(f"agent {self._agent.id}: a delta needs a full stream first")
        final = mode is TransferMode.FINAL
        stream = WorkdirStream(self._workdir, max_bytes=self._limits.max_snapshot_bytes,
                               chunk_bytes=self._limits.transfer_chunk_bytes,
                               since=None if mode is TransferMode.FULL else self._manifest)
        yield TransferHeader(mode=mode, agent=self.info() if final else None,
                             journal=self.journal() if final else [])
        chunks = iter(stream)
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            yield chunk
        self._manifest = stream.manifest
        dirty = 0 if final else await asyncio.to_thread(dirty_bytes, self._workdir, stream.manifest)
        yield TransferTrailer(sha256=stream.sha256, size_bytes=stream.size, deleted=stream.deleted,
                              dirty_bytes=dirty)

    def _check_importing(self) -> None:
        if not self._importing or self._agent.status is not AgentStatus.PENDING:
            raise FailedPrecondition(f"agent {self._agent.id} here is not a prepared migration target "
                                     f"({self._agent.status.value})", agent_id=self._agent.id)

    async def receive_begin(self, header: TransferHeader) -> None:
        """Open the stream ``header`` starts: its chunks are applied to staging as they come."""
        self._check_importing()
        if self._inbox is not None:
            self._inbox.abort()
        self._inbox = Inbox(header, self._staging, self._limits)
        if header.mode is TransferMode.FINAL and header.agent is not None:
            self._journal = list(header.journal)
            self._agent.started_at = header.agent.started_at or self._agent.started_at

    async def receive_chunk(self, data: bytes) -> None:
        self._check_importing()
        if self._inbox is None:
            raise FailedPrecondition(f"agent {self._agent.id}: a chunk came before its stream's header")
        await self._inbox.put(data)

    async def receive_end(self, trailer: TransferTrailer) -> TransferReport:
        """Close the stream: wait until it is applied and checked; what it moved."""
        self._check_importing()
        inbox, self._inbox = self._inbox, None
        if inbox is None:
            raise FailedPrecondition(f"agent {self._agent.id}: a stream ended that never began")
        return await inbox.finish(trailer)

    async def activate(self) -> Agent:
        """The staging directory becomes the workdir; the agent runs (its lifetime clock resumes)."""
        self._check_importing()
        if self._inbox is not None:
            raise FailedPrecondition(f"agent {self._agent.id}: a stream is still being received")
        await asyncio.to_thread(self._promote_staging)
        self._importing = False
        return await self.start()

    def _promote_staging(self) -> None:
        remove_tree(self._workdir)  # an older copy's leftovers at this path
        os.rename(self._staging, self._workdir)
        os.chmod(self._workdir, 0o700)


__all__ = ["AgentMoves"]
