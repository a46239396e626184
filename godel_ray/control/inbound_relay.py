"""The inbound side of protocol v2's workdir streams on a ``ClusterActor``: ``receive_open`` starts
the cluster client's ``receive`` on a bounded queue, ``push`` feeds it one piece per Ray call, and
``receive_close`` waits for what the cluster applied (or drops the stream on ``abort``).

A mixin base of ``ClusterActor`` (so these stay methods of the actor class ``ray.remote`` wraps in
``godel_ray.control.factory``); it owns nothing but the open streams, ``_inbound``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

from godel_ray.core.cluster_client import ClusterClient
from godel_ray.errors import FailedPrecondition
from godel_ray.models import Cluster, TransferPiece, TransferReport

INBOUND_PIECES = 2  # pieces of an inbound workdir stream queued ahead of the client (backpressure)


class InboundRelay:
    """Open inbound streams by id. Invariants: a stream id is in ``_inbound`` from ``receive_open``
    until its close, its abort, or the receiver finishing early (then its fault is raised to the
    pusher); at most ``INBOUND_PIECES`` pieces wait in a stream's queue."""

    cluster: Cluster
    client: ClusterClient
    _inbound: dict[str, tuple[asyncio.Queue[TransferPiece | None], asyncio.Task[TransferReport]]]

    async def receive_open(self, agent_id: str, *, epoch: int = 0) -> str:
        """Start applying an inbound stream to the importing ``agent_id``; ``push`` feeds it piece by
        piece (at most ``INBOUND_PIECES`` queued), ``receive_close`` waits for the result."""
        pieces: asyncio.Queue[TransferPiece | None] = asyncio.Queue(maxsize=INBOUND_PIECES)

        async def stream() -> AsyncIterator[TransferPiece]:
            while (piece := await pieces.get()) is not None:
                yield piece

        stream_id = uuid.uuid4().hex
        task = asyncio.create_task(self.client.receive(agent_id, stream(), epoch=epoch),
                                   name=f"receive-{agent_id}-{stream_id[:8]}")
        self._inbound[stream_id] = (pieces, task)
        return stream_id

    async def _feed(self, stream_id: str, piece: TransferPiece | None) -> None:
        inbound = self._inbound.get(stream_id)
        if inbound is None:
            raise FailedPrecondition(f"no inbound stream {stream_id[:8]} on cluster {self.cluster.id}")
        pieces, task = inbound
        put = asyncio.ensure_future(pieces.put(piece))
        await asyncio.wait({put, task}, return_when=asyncio.FIRST_COMPLETED)
        if put.done():
            return
        put.cancel()
        self._inbound.pop(stream_id, None)
        await task  # raises the receiver's fault
        raise FailedPrecondition(f"cluster {self.cluster.id} finished the stream before its end")

    async def push(self, stream_id: str, piece: TransferPiece) -> None:
        await self._feed(stream_id, piece)

    async def receive_close(self, stream_id: str, abort: bool = False) -> TransferReport:
        """The stream is complete (its trailer was pushed): what the cluster applied. ``abort`` drops it."""
        if abort:
            inbound = self._inbound.pop(stream_id, None)
            if inbound is not None:
                inbound[1].cancel()
            return TransferReport()
        await self._feed(stream_id, None)
        _, task = self._inbound.pop(stream_id)
        return await task


__all__ = ["INBOUND_PIECES", "InboundRelay"]
