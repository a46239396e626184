"""``ClusterFederationServicer``: the site's gRPC service, a translator over an ``AgentRuntime``.

Each method converts proto to domain values, calls the runtime (a ``ClusterClient``), and converts
back; errors become statuses through ``status_errors``. Validation belongs to the runtime; the only
checks here are about the wire itself: the order, size and checksum of snapshot chunks, and the
fields that travel beside a domain value (an idempotency key, an event cursor).

Snapshots stream as ``SnapshotChunk``s (format 2): the header first (agent, format version,
journal length, archive size, sha256), then the journal as its own section, one entry per message
(a long journal never makes one message too large), then the archive in pieces of
``LIMITS.snapshot_chunk_bytes``. Protocol v2's workdir streams travel on the same two RPCs, told
apart by the header's ``mode`` (``rpc.workdir_wire``). A format-1 stream (journal inside the header) is still read. An
import is refused with INVALID_ARGUMENT, before the runtime sees anything, when the header is
missing, not first, or repeated, when the format is newer than this side knows, when the journal
is out of place, over its limits or shorter than announced, when the announced or received size
is over ``LIMITS.max_snapshot_bytes`` (checked while receiving), or when the received bytes do not
match the announced size and checksum.

Memory: an import holds at most one archive (``max_snapshot_bytes``): chunks go into one growing
buffer that becomes the archive without a copy, hashed as they arrive (a list of chunks joined at
the end held the archive twice). At most ``max_concurrent_imports`` imports run at once; one more is
refused at once with RESOURCE_EXHAUSTED (its sender retries later) rather than buffered.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import AsyncIterator, Iterator
from typing import TypeAlias

import grpc.aio

from godel_ray.core.cluster_client import ClusterClient
from godel_ray.core.validation import validate_idempotency_key
from godel_ray.errors import InvalidArgument, ResourceExhausted, SnapshotRejected
from godel_ray.models import AgentSnapshot, AgentStatus, JournalEntry
from godel_ray.rpc import convert, workdir_wire
from godel_ray.rpc.errors import status_errors
from godel_ray.rpc.gen import federation_pb2 as pb
from godel_ray.rpc.gen import federation_pb2_grpc as pb_grpc
from godel_ray.settings import LIMITS, Limits

Context: TypeAlias = grpc.aio.ServicerContext


def iter_snapshot_chunks(snapshot: AgentSnapshot, chunk_bytes: int = LIMITS.snapshot_chunk_bytes
                         ) -> Iterator[pb.SnapshotChunk]:
    """The wire form of a snapshot (format 2), made as it is sent: the header, then the journal one
    entry per message, then the archive in ``chunk_bytes`` pieces."""
    yield pb.SnapshotChunk(header=convert.snapshot_header_to_pb(
        snapshot.agent, len(snapshot.journal), snapshot.size_bytes, snapshot.sha256, snapshot.taken_at,
        snapshot.frozen_at))
    for entry in snapshot.journal:
        yield pb.SnapshotChunk(journal_entry=convert.journal_entry_to_pb(entry))
    view = memoryview(snapshot.archive)
    for start in range(0, len(view), chunk_bytes):
        yield pb.SnapshotChunk(data=bytes(view[start:start + chunk_bytes]))


def snapshot_chunks(snapshot: AgentSnapshot, chunk_bytes: int = LIMITS.snapshot_chunk_bytes
                    ) -> list[pb.SnapshotChunk]:
    """Every chunk of ``iter_snapshot_chunks`` at once (a second copy of the archive: for tests)."""
    return list(iter_snapshot_chunks(snapshot, chunk_bytes))


async def assemble_snapshot(chunks: AsyncIterator[pb.SnapshotChunk], limits: Limits = LIMITS,
                            cluster_id: str = "") -> AgentSnapshot:
    """Reassemble a chunk stream into an ``AgentSnapshot``; ``InvalidArgument`` on any wire fault.

    Holds at most the announced archive size (itself at most ``limits.max_snapshot_bytes``) and a
    journal of at most ``limits.max_snapshot_journal_entries`` entries and ``max_snapshot_journal_bytes``
    bytes of commands. Reads format 1 (journal in the header) and format 2 (journal section).
    """
    header: pb.SnapshotHeader | None = None
    journal: list[JournalEntry] = []
    journal_bytes = 0
    buffer = io.BytesIO()
    hasher = hashlib.sha256()
    received = 0
    async for chunk in chunks:
        kind = chunk.WhichOneof("payload")
        if kind == "header":
            if header is not None:
                raise InvalidArgument("snapshot stream has a second header: the header goes first, once")
            header = chunk.header
            if not 0 <= header.archive_size <= limits.max_snapshot_bytes:
                raise InvalidArgument(
                    f"snapshot archive of {header.archive_size} bytes is over the limit of "
                    f"{limits.max_snapshot_bytes}", field="archive_size")
            if convert.snapshot_format(header) < 2 and header.journal_entries:
                raise InvalidArgument("a format-1 snapshot header announces journal entries",
                                      field="journal_entries")
            if not 0 <= header.journal_entries <= limits.max_snapshot_journal_entries:
                raise InvalidArgument(
                    f"snapshot journal of {header.journal_entries} entries is over the limit of "
                    f"{limits.max_snapshot_journal_entries}", field="journal_entries")
        elif kind == "journal_entry":
            if header is None:
                raise InvalidArgument("snapshot stream starts with a journal entry: send the header first")
            if len(journal) >= header.journal_entries or received:
                raise InvalidArgument("snapshot journal entry out of place: the header announced "
                                      f"{header.journal_entries}, and entries go before the archive",
                                      field="journal_entries")
            journal_bytes += len(chunk.journal_entry.command)
            if journal_bytes > limits.max_snapshot_journal_bytes:
                raise InvalidArgument(f"snapshot journal is over the limit of {limits.max_snapshot_journal_bytes}"
                                      " bytes", field="journal_entries")
            journal.append(convert.journal_entry_from_pb(chunk.journal_entry))
        elif kind == "data":
            if header is None:
                raise InvalidArgument("snapshot stream starts with data: send the header first")
            if len(journal) != header.journal_entries:
                raise InvalidArgument(f"snapshot archive data before the journal ended ({len(journal)} of "
                                      f"{header.journal_entries} entries)", field="journal_entries")
            received += len(chunk.data)
            if received > header.archive_size:
                raise InvalidArgument(
                    f"snapshot archive is larger than its header announced ({header.archive_size} bytes)",
                    field="archive_size")
            buffer.write(chunk.data)
            hasher.update(chunk.data)
        else:
            raise InvalidArgument("empty snapshot chunk: set header or data")
    if header is None:
        raise InvalidArgument("snapshot stream has no header")
    if not header.HasField("agent") or not header.agent.id:
        raise InvalidArgument("snapshot header has no agent", field="agent")
    if len(journal) != header.journal_entries:
        raise InvalidArgument(f"snapshot journal is truncated: got {len(journal)} of {header.journal_entries} "
                              "entries", field="journal_entries")
    if received != header.archive_size:
        raise InvalidArgument(
            f"snapshot archive is truncated: got {received} of {header.archive_size} bytes",
            field="archive_size")
    digest = hasher.hexdigest()
    if digest != header.sha256:
        raise SnapshotRejected(
            f"snapshot checksum mismatch: header says {header.sha256[:16] or '(none)'}..., "
            f"data hashes to {digest[:16]}...", field="sha256")
    archive = buffer.getvalue()  # the buffer's own bytes object: no second copy
    del buffer
    return convert.snapshot_from_header(header, archive, cluster_id, journal)


class ClusterFederationServicer(pb_grpc.ClusterFederationServicer):
    """Translates ``godel.federation.v1.ClusterFederation`` onto one ``ClusterClient`` (the runtime)."""

    def __init__(self, runtime: ClusterClient, cluster_id: str = "", limits: Limits = LIMITS) -> None:
        self._runtime = runtime
        self._cluster_id = cluster_id
        self._limits = limits
        self._imports = 0  # ImportAgent calls in flight: a counting semaphore (one event loop)

    @property
    def imports_in_flight(self) -> int:
        return self._imports

    @status_errors
    async def SpawnAgent(self, request: pb.SpawnAgentRequest, context: Context) -> pb.SpawnAgentResponse:
        # the key travels beside the spec, not in it: checked where it comes off the wire
        key = validate_idempotency_key(request.idempotency_key) if request.idempotency_key else None
        agent, created = await self._runtime.spawn(
            convert.spec_from_pb(request.spec), agent_id=request.agent_id or None,
            idempotency_key=key, epoch=request.epoch or 1)
        return pb.SpawnAgentResponse(agent=convert.agent_to_pb(agent), created=created)

    @status_errors
    async def KillAgent(self, request: pb.KillAgentRequest, context: Context) -> pb.KillAgentResponse:
        agent = await self._runtime.kill(request.agent_id, epoch=request.epoch, reason=request.reason)
        return pb.KillAgentResponse(agent=convert.agent_to_pb(agent))

    @status_errors
    async def ExecuteCommand(self, request: pb.ExecuteCommandRequest, context: Context
                             ) -> AsyncIterator[pb.ExecuteCommandResponse]:
        stream = self._runtime.exec_stream(request.agent_id, request.command,
                                           timeout_s=request.timeout_s or None, epoch=request.epoch)
        async for chunk in stream:
            yield convert.exec_chunk_to_pb(chunk)

    @status_errors
    async def Exec(self, request: pb.ExecuteCommandRequest, context: Context) -> pb.ExecResponse:
        result = await self._runtime.exec(request.agent_id, request.command, timeout_s=request.timeout_s or None,
                                          epoch=request.epoch)
        return convert.exec_result_to_pb(result)

    @status_errors
    async def GetAgentStatus(self, request: pb.GetAgentStatusRequest, context: Context
                             ) -> pb.GetAgentStatusResponse:
        return pb.GetAgentStatusResponse(agent=convert.agent_to_pb(await self._runtime.status(request.agent_id)))

    @status_errors
    async def ListAgents(self, request: pb.ListAgentsRequest, context: Context) -> pb.ListAgentsResponse:
        status: AgentStatus | None = convert.agent_status_from_pb(request.status)
        agents = await self._runtime.list_agents(status=status, labels=dict(request.labels) or None)
        return pb.ListAgentsResponse(agents=[convert.agent_to_pb(a) for a in agents])

    @status_errors
    async def StreamEvents(self, request_iterator: AsyncIterator[pb.StreamEventsRequest], context: Context
                           ) -> AsyncIterator[pb.Event]:
        since_seq = 0
        async for first in request_iterator:  # the first request says where to resume
            since_seq = first.since_seq
            break
        if since_seq < 0:
            raise InvalidArgument(f"since_seq must be >= 0; got {since_seq}", field="since_seq")
        async for event in self._runtime.events(since_seq):
            yield convert.event_to_pb(event)

    @status_errors
    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Context) -> pb.HeartbeatResponse:
        capacity = await self._runtime.heartbeat()
        return pb.HeartbeatResponse(capacity=convert.capacity_to_pb(capacity), received_at=time.time())

    @status_errors
    async def ExportAgent(self, request: pb.ExportAgentRequest, context: Context
                          ) -> AsyncIterator[pb.SnapshotChunk]:
        if request.mode != pb.TRANSFER_MODE_SNAPSHOT:  # a workdir stream (protocol v2)
            pieces = self._runtime.send(request.agent_id, workdir_wire.mode_from_pb(request.mode),
                                        epoch=request.epoch)
            async for message in workdir_wire.pieces_to_pb(pieces, request.agent_id, request.epoch, self._limits):
                yield message
            return
        snapshot = await self._runtime.export(request.agent_id, epoch=request.epoch, freeze=request.freeze)
        for chunk in iter_snapshot_chunks(snapshot, self._limits.snapshot_chunk_bytes):
            yield chunk

    @status_errors
    async def ImportAgent(self, request_iterator: AsyncIterator[pb.SnapshotChunk], context: Context
                          ) -> pb.ImportAgentResponse:
        if self._imports >= self._limits.max_concurrent_imports:
            raise ResourceExhausted(
                f"site {self._cluster_id or '(this one)'} is already receiving {self._imports} agent imports, "
                "its limit: "
                "retry when one has finished", cluster_id=self._cluster_id,
                max_concurrent_imports=self._limits.max_concurrent_imports)
        self._imports += 1
        try:
            it = aiter(request_iterator)
            first = await anext(it, None)
            chunks = _chain(first, it)
            if first is not None and first.WhichOneof("payload") == "header" and \
                    first.header.mode != pb.TRANSFER_MODE_SNAPSHOT:  # a workdir stream (protocol v2)
                report = await self._runtime.receive(
                    first.header.agent_id, workdir_wire.pieces_from_pb(chunks, self._limits, self._cluster_id),
                    epoch=first.header.epoch)
                return pb.ImportAgentResponse(bytes_moved=report.bytes_moved, dirty_bytes=report.dirty_bytes,
                                              members=report.members)
            snapshot = await assemble_snapshot(chunks, self._limits, self._cluster_id)
            agent = await self._runtime.import_(snapshot)
        finally:
            self._imports -= 1
        return pb.ImportAgentResponse(agent=convert.agent_to_pb(agent))

    @status_errors
    async def ResumeAgent(self, request: pb.ResumeAgentRequest, context: Context) -> pb.ResumeAgentResponse:
        agent = await self._runtime.resume(request.agent_id, epoch=request.epoch)
        return pb.ResumeAgentResponse(agent=convert.agent_to_pb(agent))

    @status_errors
    async def PrepareAgent(self, request: pb.PrepareAgentRequest, context: Context) -> pb.PrepareAgentResponse:
        if not request.HasField("agent") or not request.agent.id:
            raise InvalidArgument("PrepareAgent needs the agent", field="agent")
        agent = await self._runtime.prepare(convert.agent_from_pb(request.agent, self._cluster_id))
        return pb.PrepareAgentResponse(agent=convert.agent_to_pb(agent))

    @status_errors
    async def FreezeAgent(self, request: pb.FreezeAgentRequest, context: Context) -> pb.FreezeAgentReply:
        report = await self._runtime.freeze(request.agent_id, epoch=request.epoch,
                                            options=convert.freeze_options_from_pb(request))
        return convert.freeze_report_to_pb(report)

    @status_errors
    async def ActivateAgent(self, request: pb.AgentRef, context: Context) -> pb.AgentReply:
        agent = await self._runtime.activate(request.agent_id, epoch=request.epoch)
        return pb.AgentReply(agent=convert.agent_to_pb(agent))


async def _chain(first: pb.SnapshotChunk | None, rest: AsyncIterator[pb.SnapshotChunk]
                 ) -> AsyncIterator[pb.SnapshotChunk]:
    if first is not None:
        yield first
    async for chunk in rest:
        yield chunk


__all__ = ["ClusterFederationServicer", "assemble_snapshot", "iter_snapshot_chunks", "snapshot_chunks"]
