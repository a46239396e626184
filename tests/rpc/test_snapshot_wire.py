"""The snapshot wire form (format 2): the journal as its own bounded section, and the format version.

No server needed: ``iter_snapshot_chunks`` is what a site sends and ``assemble_snapshot`` what it
reads, on both the export and the import side.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterable

import pytest

from godel_ray.errors import InvalidArgument
from godel_ray.models import SNAPSHOT_FORMAT_VERSION, Agent, AgentSnapshot, JournalEntry, SpawnConfig
from godel_ray.rpc import convert
from godel_ray.rpc.gen import federation_pb2 as pb
from godel_ray.rpc.servicer import assemble_snapshot, snapshot_chunks
from godel_ray.settings import LIMITS, Limits


def _snapshot(entries: int, command_bytes: int = 16, archive: bytes = b"tar bytes") -> AgentSnapshot:
    journal = [JournalEntry(seq=i, command=f"{i}:" + "x" * command_bytes, exit_code=0, started_at=float(i))
               for i in range(1, entries + 1)]
    return AgentSnapshot(agent=Agent(id="ag-journal", config=SpawnConfig(), epoch=2), journal=journal,
                         archive=archive, sha256=hashlib.sha256(archive).hexdigest(), taken_at=3.0)


def _replay(chunks: Iterable[pb.SnapshotChunk], limits: Limits = LIMITS) -> AgentSnapshot:
    async def stream() -> AsyncIterator[pb.SnapshotChunk]:
        for chunk in chunks:
            yield chunk

    return asyncio.run(assemble_snapshot(stream(), limits))


def test_a_journal_over_the_message_limit_travels_in_its_own_section() -> None:
    """130 commands of 64 KiB: 8.5 MB of journal, over the 8 MiB message limit as one header."""
    snapshot = _snapshot(130, command_bytes=LIMITS.max_command_bytes - 8)
    assert sum(len(e.command) for e in snapshot.journal) > LIMITS.max_message_bytes
    chunks = snapshot_chunks(snapshot)
    assert [c.WhichOneof("payload") for c in chunks] == ["header"] + ["journal_entry"] * 130 + ["data"]
    assert chunks[0].header.format_version == SNAPSHOT_FORMAT_VERSION == 2
    assert chunks[0].header.journal_entries == 130 and not chunks[0].header.journal
    assert max(c.ByteSize() for c in chunks) < LIMITS.max_message_bytes
    back = _replay(chunks)
    assert back == snapshot and back.format_version == SNAPSHOT_FORMAT_VERSION


def test_a_format_1_stream_with_the_journal_in_its_header_is_still_read() -> None:
    snapshot = _snapshot(3)
    header = pb.SnapshotHeader(agent=convert.agent_to_pb(snapshot.agent),
                               journal=[convert.journal_entry_to_pb(e) for e in snapshot.journal],
                               archive_size=snapshot.size_bytes, sha256=snapshot.sha256, taken_at=snapshot.taken_at)
    back = _replay([pb.SnapshotChunk(header=header), pb.SnapshotChunk(data=snapshot.archive)])
    assert back.journal == snapshot.journal and back.archive == snapshot.archive


def _refusal(chunks: list[pb.SnapshotChunk], limits: Limits = LIMITS) -> str:
    with pytest.raises(InvalidArgument) as info:
        _replay(chunks, limits)
    return str(info.value)


def test_the_journal_section_is_checked_for_order_count_and_bounds() -> None:
    chunks = snapshot_chunks(_snapshot(3))
    header, entries, data = chunks[0], chunks[1:4], chunks[4:]
    assert "out of place" in _refusal([header, *entries, *data, entries[2]])
    assert "before the journal ended" in _refusal([header, *entries[:2], *data])
    assert "journal is truncated" in _refusal([header, *entries[:2]])
    assert "out of place" in _refusal([header, *entries, entries[0], *data])
    assert "send the header first" in _refusal([entries[0], header, *data])
    small = LIMITS.model_copy(update={"max_snapshot_journal_entries": 2})
    assert "over the limit of 2" in _refusal(chunks, small)
    tight = LIMITS.model_copy(update={"max_snapshot_journal_bytes": 10})
    assert "journal is over the limit of 10 bytes" in _refusal(chunks, tight)


def test_a_newer_format_is_refused_by_name() -> None:
    chunks = snapshot_chunks(_snapshot(1))
    newer = pb.SnapshotChunk()
    newer.CopyFrom(chunks[0])
    newer.header.format_version = SNAPSHOT_FORMAT_VERSION + 1
    assert f"snapshot format {SNAPSHOT_FORMAT_VERSION + 1} is newer" in _refusal([newer, *chunks[1:]])
