"""Protocol v2's workdir streams on the wire (rpc/workdir_wire.py): pieces -> messages -> pieces.

No server needed: ``pieces_to_pb`` is what a sender puts on ExportAgent/ImportAgent and
``pieces_from_pb`` what the other side reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import TypeVar

import pytest

from godel_ray.errors import InvalidArgument
from godel_ray.models import (
    Agent,
    JournalEntry,
    SpawnConfig,
    TransferHeader,
    TransferMode,
    TransferPiece,
    TransferTrailer,
)
from godel_ray.rpc.gen import federation_pb2 as pb
from godel_ray.rpc.workdir_wire import pieces_from_pb, pieces_to_pb
from godel_ray.settings import LIMITS

T = TypeVar("T")
SMALL = LIMITS.model_copy(update={"snapshot_chunk_bytes": 1000, "transfer_chunk_bytes": 4000})


async def _aiter(items: Iterable[T]) -> AsyncIterator[T]:
    for item in items:
        yield item


def _to_pb(pieces: list[TransferPiece]) -> list[pb.SnapshotChunk]:
    async def go() -> list[pb.SnapshotChunk]:
        return [m async for m in pieces_to_pb(_aiter(pieces), "ag-w", 7, SMALL)]
    return asyncio.run(go())


def _from_pb(messages: list[pb.SnapshotChunk]) -> list[TransferPiece]:
    async def go() -> list[TransferPiece]:
        return [p async for p in pieces_from_pb(_aiter(messages), SMALL)]
    return asyncio.run(go())


def test_a_final_stream_round_trips_with_its_journal_deletions_and_regrouped_data() -> None:
    journal = [JournalEntry(seq=i, command=f"echo {i}", started_at=1.0, exit_code=0) for i in range(1, 4)]
    agent = Agent(id="ag-w", config=SpawnConfig(labels={"k": "v"}), epoch=6)
    data = [bytes([i]) * 2500 for i in range(5)]  # 12.5 kB in 2.5 kB pieces
    trailer = TransferTrailer(sha256="ab" * 32, size_bytes=12500, deleted=["gone", "d/old"], dirty_bytes=0)
    messages = _to_pb([TransferHeader(mode=TransferMode.FINAL, agent=agent, journal=journal), *data, trailer])
    header = messages[0].header
    assert (header.mode, header.agent_id, header.epoch, header.journal_entries) == (pb.TRANSFER_MODE_FINAL, "ag-w",
                                                                                      7, 3)
    assert max(len(m.data) for m in messages) <= 1000  # cut to the message size
    back = _from_pb(messages)
    first, *chunks, last = back
    assert isinstance(first, TransferHeader) and first.journal == journal and first.agent is not None
    assert first.agent.config.labels == {"k": "v"}
    assert b"".join(c for c in chunks if isinstance(c, bytes)) == b"".join(data)
    assert all(len(c) >= 4000 for c in chunks[:-1] if isinstance(c, bytes))  # regrouped into larger pieces
    assert last == trailer


@pytest.mark.parametrize(("messages", "match"), [
    ([pb.SnapshotChunk(data=b"x")], "does not start with its header"),
    ([pb.SnapshotChunk(header=pb.SnapshotHeader(mode=pb.TRANSFER_MODE_FULL))], "without its trailer"),
    ([pb.SnapshotChunk(header=pb.SnapshotHeader(mode=pb.TRANSFER_MODE_FINAL, journal_entries=2)),
      pb.SnapshotChunk(data=b"x")], "before its journal ended"),
    ([pb.SnapshotChunk(header=pb.SnapshotHeader(mode=pb.TRANSFER_MODE_CHANGES)),
      pb.SnapshotChunk(deleted_path="a"), pb.SnapshotChunk(data=b"x")], "after its deleted paths"),
    ([pb.SnapshotChunk(header=pb.SnapshotHeader(mode=pb.TRANSFER_MODE_FULL)),
      pb.SnapshotChunk(header=pb.SnapshotHeader())], "unexpected header"),
])
def test_a_stream_out_of_order_is_refused(messages: list[pb.SnapshotChunk], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        _from_pb(messages)
