"""``Inbox``: one workdir stream being applied to an importing agent's staging directory as it arrives.

The agent's actor receives a stream as calls (``receive_begin``, ``receive_chunk`` per chunk,
``receive_end``); the tar reader (``agents.transfer``) pulls. The inbox joins the two: chunks go
into a small bounded queue that a worker thread drains into ``unpack_stream`` (a FULL stream, into
the empty staging directory) or ``apply_stream`` (a delta, over it). A full queue makes ``put``
wait, so the sender never runs more than ``INBOX_CHUNKS`` chunks ahead of the disk: memory stays a
few chunks whatever the workdir's size. Pure: no ray, no grpc.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator

from godel_ray.agents import snapshot as snap
from godel_ray.agents.transfer import apply_stream, unpack_stream
from godel_ray.errors import FailedPrecondition
from godel_ray.models import TransferHeader, TransferMode, TransferPiece, TransferReport, TransferTrailer
from godel_ray.settings import Limits

INBOX_CHUNKS = 2  # chunks queued ahead of the writer
PUT_POLL_S = 0.5  # how often a waiting ``put`` looks whether the writer failed
STREAM_SLACK_S = 600.0  # a stream arrives over time: the unpack deadline allows for the transfer itself

_END = b""


class Inbox:
    """One stream, applied in order. Invariants: chunks are applied in the order ``put``; a fault of
    the writer is raised by the next ``put`` or by ``finish`` (never lost); after ``abort`` the
    writer stops at its next chunk and nothing more is applied."""

    def __init__(self, header: TransferHeader, staging: str, limits: Limits) -> None:
        self.mode = header.mode
        self._staging = staging
        self._limits = limits
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=INBOX_CHUNKS)
        self._trailer: TransferTrailer | None = None
        self._aborted = threading.Event()
        self.received = 0
        self._future = asyncio.get_running_loop().run_in_executor(None, self._apply)

    def _chunks(self) -> Iterator[bytes]:
        while not self._aborted.is_set():
            item = self._queue.get()
            if item is _END or self._aborted.is_set():
                return
            yield item

    def _apply(self) -> snap.ArchiveSummary:
        deadline = time.monotonic() + self._limits.snapshot_unpack_timeout_s + STREAM_SLACK_S
        limit = self._limits.max_snapshot_bytes
        if self.mode is TransferMode.FULL:
            return unpack_stream(self._chunks(), self._staging, expected_sha256=self._expected, max_bytes=limit,
                                 limits=self._limits, deadline=deadline)
        return apply_stream(self._chunks(), self._staging, expected_sha256=self._expected,
                            deleted=lambda: list(self._trailer.deleted) if self._trailer else [], max_bytes=limit,
                            limits=self._limits, deadline=deadline)

    def _expected(self) -> str:
        return self._trailer.sha256 if self._trailer is not None else ""

    async def _enqueue(self, item: bytes) -> None:
        while True:
            if self._future.done():
                await self._future  # raises the writer's fault
                raise FailedPrecondition("the workdir stream was complete before its last chunk arrived")
            try:
                await asyncio.to_thread(self._queue.put, item, True, PUT_POLL_S)
                return
            except queue.Full:
                continue

    async def put(self, data: bytes) -> None:
        if data:
            await self._enqueue(bytes(data))
            self.received += len(data)

    async def finish(self, trailer: TransferTrailer) -> TransferReport:
        """The stream ended: wait until it is applied and its checksum matched."""
        self._trailer = trailer
        await self._enqueue(_END)
        summary = await self._future
        return TransferReport(bytes_moved=self.received, dirty_bytes=trailer.dirty_bytes, members=summary.members)

    def abort(self) -> None:
        """Stop applying (the migration rolled back): the writer ends at its next chunk."""
        self._aborted.set()
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        try:
            self._queue.put_nowait(_END)
        except queue.Full:
            pass


async def regrouped(pieces: AsyncIterator[TransferPiece], chunk_bytes: int) -> AsyncIterator[TransferPiece]:
    """The same stream with its data joined into pieces of at least ``chunk_bytes`` (but the last):
    a gRPC stream brings them in message-sized pieces, and each piece is one call to the agent."""
    buffer = bytearray()
    async for piece in pieces:
        if isinstance(piece, bytes | bytearray | memoryview):
            buffer += piece
            if len(buffer) >= chunk_bytes:
                yield bytes(buffer)
                buffer = bytearray()
            continue
        if buffer:
            yield bytes(buffer)
            buffer = bytearray()
        yield piece
    if buffer:
        yield bytes(buffer)


__all__ = ["INBOX_CHUNKS", "Inbox", "regrouped"]
