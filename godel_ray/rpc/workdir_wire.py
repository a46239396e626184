"""Protocol v2's workdir streams on the wire: ``TransferPiece``s <-> ``SnapshotChunk`` messages.

One stream (ExportAgent's answer, ImportAgent's request) is: the header (mode, agent id, epoch;
FINAL: the agent and ``journal_entries``), exactly that many ``journal_entry`` messages, ``data``
messages of at most ``snapshot_chunk_bytes`` each (a domain chunk of a few MiB is cut as it is
sent, by views, no copy), ``deleted_path`` messages, then the ``trailer``, last. The reader checks
that order and the journal's limits, and regroups data into domain chunks of
``transfer_chunk_bytes`` (fewer, larger objects on the Ray side). Its checksum is the receiver's
to check (``agents.transfer``), over the data as applied.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from godel_ray.errors import InvalidArgument
from godel_ray.models import (
    JournalEntry,
    TransferHeader,
    TransferMode,
    TransferPiece,
    TransferTrailer,
)
from godel_ray.rpc import convert
from godel_ray.rpc.gen import federation_pb2 as pb
from godel_ray.settings import LIMITS, Limits

_MODE_TO_PB: dict[TransferMode, pb.TransferMode] = {TransferMode.FULL: pb.TRANSFER_MODE_FULL, TransferMode.CHANGES: pb.TRANSFER_MODE_CHANGES,
               TransferMode.FINAL: pb.TRANSFER_MODE_FINAL}
_MODE_FROM_PB: dict[int, TransferMode] = {int(v): k for k, v in _MODE_TO_PB.items()}


def mode_to_pb(mode: TransferMode) -> pb.TransferMode:
    return _MODE_TO_PB[mode]


def mode_from_pb(value: int) -> TransferMode:
    mode = _MODE_FROM_PB.get(int(value))
    if mode is None:
        raise InvalidArgument(f"not a workdir stream mode: {value}", field="mode")
    return mode


async def pieces_to_pb(pieces: AsyncIterator[TransferPiece], agent_id: str, epoch: int,
                       limits: Limits = LIMITS) -> AsyncIterator[pb.SnapshotChunk]:
    """The wire form of one workdir stream, made as it is sent."""
    async for piece in pieces:
        if isinstance(piece, TransferHeader):
            header = pb.SnapshotHeader(mode=mode_to_pb(piece.mode), agent_id=agent_id, epoch=epoch,
                                       format_version=piece.format_version, journal_entries=len(piece.journal))
            if piece.agent is not None:
                header.agent.CopyFrom(convert.agent_to_pb(piece.agent))
            yield pb.SnapshotChunk(header=header)
            for entry in piece.journal:
                yield pb.SnapshotChunk(journal_entry=convert.journal_entry_to_pb(entry))
        elif isinstance(piece, TransferTrailer):
            for path in piece.deleted:
                yield pb.SnapshotChunk(deleted_path=path)
            yield pb.SnapshotChunk(trailer=pb.SnapshotTrailer(sha256=piece.sha256, size_bytes=piece.size_bytes,
                                                              dirty_bytes=piece.dirty_bytes))
        else:
            view = memoryview(piece)
            for start in range(0, len(view), limits.snapshot_chunk_bytes):
                yield pb.SnapshotChunk(data=bytes(view[start:start + limits.snapshot_chunk_bytes]))


async def pieces_from_pb(chunks: AsyncIterator[pb.SnapshotChunk], limits: Limits = LIMITS,
                         cluster_id: str = "") -> AsyncIterator[TransferPiece]:
    """Read one workdir stream; ``InvalidArgument`` on any fault of its order or limits."""
    header: pb.SnapshotHeader | None = None
    journal: list[JournalEntry] = []
    journal_bytes = 0
    buffer = bytearray()
    deleted: list[str] = []
    names_bytes = 0
    async for chunk in chunks:
        kind = chunk.WhichOneof("payload")
        if header is None:
            if kind != "header":
                raise InvalidArgument("workdir stream does not start with its header")
            header = chunk.header
            if not 0 <= header.journal_entries <= limits.max_snapshot_journal_entries:
                raise InvalidArgument(f"workdir stream announces {header.journal_entries} journal entries, over "
                                      f"the limit of {limits.max_snapshot_journal_entries}", field="journal_entries")
            if not header.journal_entries:
                yield _header(header, journal, cluster_id)
            continue
        if kind == "journal_entry":
            if len(journal) >= header.journal_entries:
                raise InvalidArgument("workdir stream has more journal entries than its header announced",
                                      field="journal_entries")
            journal_bytes += len(chunk.journal_entry.command)
            if journal_bytes > limits.max_snapshot_journal_bytes:
                raise InvalidArgument(f"workdir stream journal is over the limit of "
                                      f"{limits.max_snapshot_journal_bytes} bytes", field="journal_entries")
            journal.append(convert.journal_entry_from_pb(chunk.journal_entry))
            if len(journal) == header.journal_entries:
                yield _header(header, journal, cluster_id)
            continue
        if len(journal) != header.journal_entries:
            raise InvalidArgument(f"workdir stream data before its journal ended ({len(journal)} of "
                                  f"{header.journal_entries} entries)", field="journal_entries")
        if kind == "data":
            if deleted:
                raise InvalidArgument("workdir stream data after its deleted paths")
            buffer += chunk.data
            if len(buffer) >= limits.transfer_chunk_bytes:
                yield bytes(buffer)
                buffer = bytearray()
        elif kind == "deleted_path":
            names_bytes += len(chunk.deleted_path)
            if len(deleted) >= limits.max_snapshot_members or names_bytes > limits.max_snapshot_names_total_bytes:
                raise InvalidArgument("workdir stream deletes more paths than a snapshot may hold")
            deleted.append(chunk.deleted_path)
        elif kind == "trailer":
            if buffer:
                yield bytes(buffer)
                buffer = bytearray()
            t = chunk.trailer
            yield TransferTrailer(sha256=t.sha256, size_bytes=t.size_bytes, dirty_bytes=max(0, t.dirty_bytes),
                                  deleted=deleted)
            return
        else:
            raise InvalidArgument(f"workdir stream carries an unexpected {kind or 'empty'} message")
    raise InvalidArgument("workdir stream ended without its trailer")


def _header(header: pb.SnapshotHeader, journal: list[JournalEntry], cluster_id: str) -> TransferHeader:
    agent = convert.agent_from_pb(header.agent, cluster_id) if header.HasField("agent") else None
    return TransferHeader(format_version=header.format_version or 2, mode=mode_from_pb(header.mode),
                          agent=agent, journal=list(journal))


__all__ = ["mode_from_pb", "mode_to_pb", "pieces_from_pb", "pieces_to_pb"]
