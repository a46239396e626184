"""The site's gRPC stack, for real: a grpc.aio server on port 0 in this process, over a real
``AgentRuntime`` on the ``ray_head`` cluster, driven through ``GrpcClusterClient`` (and raw stubs
where the wire itself is under test).

The server, the runtime and the clients live on one event loop in a background thread; tests hand
it coroutines (``site.run``). One server for the module keeps the runtime small.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import math
import os
import socket
import tarfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from godel_ray import errors as E
from godel_ray.core.cluster_client import collect
from godel_ray.models import AgentStatus, FederationEvent, SpawnConfig
from godel_ray.raykit.heads import RayHead
from godel_ray.rpc import convert
from godel_ray.rpc.auth import bearer_metadata
from godel_ray.rpc.client import GrpcClusterClient
from godel_ray.rpc.gen import federation_pb2 as pb
from godel_ray.rpc.gen import federation_pb2_grpc as pb_grpc
from godel_ray.rpc.server import SERVICE_NAME, build_server
from godel_ray.settings import LIMITS, Limits
from tests.helpers import ECHO_SELF, gone_or_blocked_writing, wait_for

pytestmark = pytest.mark.ray
T = TypeVar("T")
TOKEN = "test-token-" + uuid.uuid4().hex
CALL_DEADLINE_S = 60.0


@dataclass
class Site:
    loop: asyncio.AbstractEventLoop
    endpoint: str
    runtime: Any
    client: GrpcClusterClient

    def run(self, coro: Awaitable[T], timeout_s: float = CALL_DEADLINE_S) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)  # type: ignore[arg-type]

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.endpoint)


@pytest.fixture(scope="module")
def site(ray_client: RayHead, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    from godel_ray.agents.runtime import AgentRuntime

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    workdir = tmp_path_factory.mktemp("site-rpc")

    async def start() -> tuple[Any, Any, int]:
        runtime = AgentRuntime("rpc-site", str(workdir), region="test", cost_per_hour=1.5, max_agents=20)
        server, port, _ = await build_server(runtime, token=TOKEN, port=0, cluster_id="rpc-site")
        return runtime, server, port

    runtime, server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(120)
    endpoint = f"127.0.0.1:{port}"
    client = GrpcClusterClient(endpoint, token=TOKEN, cluster_id="rpc-site")
    site = Site(loop=loop, endpoint=endpoint, runtime=runtime, client=client)
    try:
        yield site
    finally:
        async def stop() -> None:
            await client.close()
            await server.stop(None)
            await runtime.close()

        site.run(stop(), timeout_s=120)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def _label() -> dict[str, str]:
    return {"test": uuid.uuid4().hex[:10]}


async def _first_event(client: GrpcClusterClient, since_seq: int, agent_id: str,
                       deadline_s: float = 30.0) -> FederationEvent:
    async def find() -> FederationEvent:
        async for event in client.events(since_seq):
            if event.agent_id == agent_id:
                return event
        raise AssertionError("event stream ended")

    return await asyncio.wait_for(find(), deadline_s)


# --- every RPC through the client ---------------------------------------------------------------

def test_every_rpc_through_the_client(site: Site) -> None:
    c = site.client
    labels = _label()

    async def scenario() -> None:
        capacity = await c.heartbeat()
        assert capacity.name == "rpc-site" and capacity.region == "test" and capacity.max_agents == 20
        assert capacity.total_cpus > 0

        agent, created = await c.spawn(SpawnConfig(model="m1", labels=labels, env={"GREETING": "hi"}))
        assert created and agent.cluster_id == "rpc-site" and agent.config.labels == labels

        status = await c.status(agent.id)
        assert status.id == agent.id and status.status == AgentStatus.RUNNING

        listed = await c.list_agents(labels=labels)
        assert [a.id for a in listed] == [agent.id]
        assert await c.list_agents(status=AgentStatus.FAILED, labels=labels) == []

        chunks = [ch async for ch in c.exec_stream(agent.id, "echo $GREETING > f.txt; cat f.txt; echo oops >&2")]
        result = collect(chunks)
        assert (result.exit_code, result.stdout, result.stderr) == (0, "hi\n", "oops\n")

        event = await _first_event(c, 0, agent.id)
        assert event.seq > 0 and event.cluster_id == "rpc-site"
        later = await _first_event(c, event.seq, agent.id)  # resume: strictly after the given seq
        assert later.seq > event.seq

        snapshot = await c.export(agent.id, freeze=True)
        assert snapshot.agent.id == agent.id and snapshot.size_bytes > 0
        assert snapshot.sha256 == hashlib.sha256(snapshot.archive).hexdigest()
        assert [e.command for e in snapshot.journal][-1].startswith("echo $GREETING")

        resumed = await c.resume(agent.id)
        assert resumed.status == AgentStatus.RUNNING

        # import it back under a new id, as a migration target would (epoch + 1)
        copy_id = "ag-copy-" + uuid.uuid4().hex[:8]
        moved = snapshot.agent.model_copy(update={"id": copy_id, "epoch": snapshot.agent.epoch + 1})
        imported = await c.import_(snapshot.model_copy(update={"agent": moved}))
        assert imported.id == copy_id and imported.epoch == snapshot.agent.epoch + 1
        again = collect([ch async for ch in c.exec_stream(copy_id, "cat f.txt")])
        assert again.stdout == "hi\n"

        killed = await c.kill(agent.id)
        assert killed.status.is_final
        await c.kill(copy_id)
        assert {a.status.is_final for a in await c.list_agents(labels=labels)} == {True}

    site.run(scenario(), timeout_s=180)


def test_exec_streams_and_reports_timeout(site: Site) -> None:
    async def scenario() -> None:
        agent, _ = await site.client.spawn(SpawnConfig(labels=_label()))
        chunks = [ch async for ch in site.client.exec_stream(agent.id, "echo start; sleep 30", timeout_s=1)]
        result = collect(chunks)
        assert result.timed_out and result.stdout == "start\n"
        await site.client.kill(agent.id)

    site.run(scenario())


def test_a_slow_reader_gets_bounded_messages_every_byte_and_the_result_last(site: Site) -> None:
    """Through gRPC: a reader stalling until the command exited or blocks on its pipe gets every byte,
    in messages within ``exec_chunk_bytes``, the result last; the command's events follow, in order."""
    big = 12_000_000  # under max_output_bytes, over max_message_bytes

    async def scenario() -> None:
        agent, _ = await site.client.spawn(SpawnConfig(labels=_label()))
        since = site.runtime.last_event_seq
        command = f"{ECHO_SELF} > writer.pid; exec head -c {big} /dev/zero"
        chunks = []
        async for chunk in site.client.exec_stream(agent.id, command):
            if not chunks:
                ref = (Path(site.runtime.workdir_root) / agent.id / "writer.pid").read_text()
                await asyncio.to_thread(wait_for, partial(gone_or_blocked_writing, ref), "the writer to stall",
                                        CALL_DEADLINE_S, 0.05)
            chunks.append(chunk)
        assert all(c.result is None for c in chunks[:-1]) and chunks[-1].result is not None
        assert chunks[-1].result.exit_code == 0 and not chunks[-1].result.truncated
        sizes = [len(c.data.encode()) for c in chunks[:-1]]
        assert max(sizes) <= LIMITS.exec_chunk_bytes and sum(sizes) == big

        async def command_events() -> list[FederationEvent]:
            out: list[FederationEvent] = []
            async for event in site.client.events(since):
                if event.agent_id == agent.id and event.type.startswith("command."):
                    out.append(event)
                    if event.type == "command.finished":
                        return out
            raise AssertionError("event stream ended")

        events = await asyncio.wait_for(command_events(), CALL_DEADLINE_S)
        assert [e.type for e in events] == ["command.started", "command.finished"]
        assert events[0].seq < events[1].seq and events[1].data["exit_code"] == "0"
        await site.client.kill(agent.id)

    site.run(scenario(), timeout_s=2 * CALL_DEADLINE_S)


# --- authentication -----------------------------------------------------------------------------

@pytest.mark.parametrize("token", ["", "wrong-token"])
def test_bad_credentials_are_refused_with_no_side_effect(site: Site, token: str) -> None:
    labels = _label()
    intruder = GrpcClusterClient(site.endpoint, token=token)

    async def scenario() -> None:
        with pytest.raises(E.Unauthenticated):
            await intruder.spawn(SpawnConfig(labels=labels))
        with pytest.raises(E.Unauthenticated):
            await intruder.list_agents()
        with pytest.raises(E.Unauthenticated):
            [ch async for ch in intruder.exec_stream("ag-x", "touch /tmp/pwned")]
        async with site.channel() as channel:
            stub = pb_grpc.ClusterFederationStub(channel)
            md = bearer_metadata(token) if token else ()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.SpawnAgent(pb.SpawnAgentRequest(spec=pb.AgentSpec(model="m", labels=labels)),
                                      metadata=md)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED

            async def one_chunk() -> AsyncIterator[pb.SnapshotChunk]:
                yield pb.SnapshotChunk(data=b"x")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ImportAgent(one_chunk(), metadata=md)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        await intruder.close()
        assert await site.client.list_agents(labels=labels) == []  # nothing was spawned

    site.run(scenario())


def test_health_answers_without_a_token(site: Site) -> None:
    async def scenario() -> None:
        async with site.channel() as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", SERVICE_NAME):
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING

    site.run(scenario())


async def _reflected_services(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")
    async for reply in stub.ServerReflectionInfo(ask(), metadata=metadata, timeout=10):
        return [s.name for s in reply.list_services_response.service]
    return []


def test_reflection_lists_the_service(site: Site) -> None:
    async def scenario() -> list[str]:
        async with site.channel() as channel:
            return await _reflected_services(channel, bearer_metadata(TOKEN))

    assert SERVICE_NAME in site.run(scenario())


@pytest.mark.parametrize("token", ["", "wrong-token"])
def test_reflection_needs_the_credential(site: Site, token: str) -> None:
    """Only grpc.health.v1 is open: reflection (the whole API's description) needs the token."""
    async def scenario() -> grpc.StatusCode:
        async with site.channel() as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _reflected_services(channel, bearer_metadata(token) if token else ())
            return info.value.code()

    assert site.run(scenario()) == grpc.StatusCode.UNAUTHENTICATED


# --- bounded streams ----------------------------------------------------------------------------

class _Watch:
    """One health Watch stream, held open; ``first`` is its first reply's status."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME))

    async def next_status(self) -> int:
        reply = await self.call.read()
        assert reply is not grpc.aio.EOF
        return int(reply.status)


def _events_call(channel: grpc.aio.Channel) -> Any:
    async def since_zero() -> AsyncIterator[pb.StreamEventsRequest]:
        yield pb.StreamEventsRequest(since_seq=0)
    return pb_grpc.ClusterFederationStub(channel).StreamEvents(since_zero(), metadata=bearer_metadata(TOKEN))


def test_open_streams_are_bounded_in_all_and_without_a_credential(site: Site) -> None:
    """With room for 3 streams, 2 of them public: a third unauthenticated health Watch is refused
    with RESOURCE_EXHAUSTED, so is any stream once 3 are open (an authenticated one too); unary
    calls still pass; a stream that ends frees its place."""
    limits = Limits(max_open_streams=3, max_public_streams=2)

    async def refused(call: Any) -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
        return info.value.code()

    async def scenario() -> None:
        server, port, _ = await build_server(site.runtime, token=TOKEN, port=0, cluster_id="rpc-site",
                                             limits=limits)
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(6)]
        try:
            public = [_Watch(channels[0]), _Watch(channels[1])]
            assert [await w.next_status() for w in public] == [health_pb2.HealthCheckResponse.SERVING] * 2
            assert await refused(_Watch(channels[2]).call) == grpc.StatusCode.RESOURCE_EXHAUSTED

            events = _events_call(channels[3])  # authenticated: the third and last place
            agent, _ = await site.runtime.spawn(SpawnConfig(labels=_label()))  # an event to read
            assert (await events.read()).seq >= 1  # so it is open
            await site.runtime.kill(agent.id)
            assert await refused(_events_call(channels[4])) == grpc.StatusCode.RESOURCE_EXHAUSTED
            health = health_pb2_grpc.HealthStub(channels[4])
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING  # unary: not counted

            public[0].call.cancel()  # a place frees up (public and total)
            again = _Watch(channels[5])
            assert await again.next_status() == health_pb2.HealthCheckResponse.SERVING
            again.call.cancel()
            events.cancel()
        finally:
            for channel in channels:
                await channel.close()
            await server.stop(None)

    site.run(scenario())


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_SETTINGS = 0x4
H2_ACK = 0x1
H2_MAX_CONCURRENT_STREAMS = 0x3


def _h2_settings(port: int) -> dict[int, int]:
    """The SETTINGS the server sends on a fresh HTTP/2 connection (a raw handshake, no gRPC)."""
    empty_settings = (0).to_bytes(3, "big") + bytes([H2_SETTINGS, 0]) + (0).to_bytes(4, "big")
    with socket.create_connection(("127.0.0.1", port), timeout=CALL_DEADLINE_S) as sock:
        sock.sendall(H2_PREFACE + empty_settings)
        buf = b""
        while True:
            while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise AssertionError("the server closed the connection before its SETTINGS")
                buf += chunk
            length, kind, flags = int.from_bytes(buf[:3], "big"), buf[3], buf[4]
            payload, buf = buf[9:9 + length], buf[9 + length:]
            if kind == H2_SETTINGS and not flags & H2_ACK:
                return {int.from_bytes(payload[i:i + 2], "big"): int.from_bytes(payload[i + 2:i + 6], "big")
                        for i in range(0, length, 6)}


def test_streams_per_connection_are_bounded(site: Site) -> None:
    """The server advertises at most 2 concurrent streams per connection (HTTP/2 SETTINGS); a third
    stream on a full connection waits until one of the two ends, while another connection is served."""
    limits = Limits(max_streams_per_connection=2)

    async def scenario() -> None:
        server, port, _ = await build_server(site.runtime, token=TOKEN, port=0, cluster_id="rpc-site",
                                             limits=limits)
        # each channel its own connection (by default, channels in one process share one per target)
        own = [("grpc.use_local_subchannel_pool", 1)]
        shared = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=own)
        other = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=own)
        try:
            settings = await asyncio.to_thread(_h2_settings, port)
            assert settings.get(H2_MAX_CONCURRENT_STREAMS) == 2, settings
            first, second = _Watch(shared), _Watch(shared)
            assert await first.next_status() == health_pb2.HealthCheckResponse.SERVING
            assert await second.next_status() == health_pb2.HealthCheckResponse.SERVING
            third = _Watch(shared)
            third_first = asyncio.ensure_future(third.next_status())
            elsewhere = _Watch(other)  # another connection: served at once
            assert await elsewhere.next_status() == health_pb2.HealthCheckResponse.SERVING
            first.call.cancel()  # a place on the shared connection: the third is served
            assert await third_first == health_pb2.HealthCheckResponse.SERVING
            for watch in (second, third, elsewhere):
                watch.call.cancel()
        finally:
            await shared.close()
            await other.close()
            await server.stop(None)

    site.run(scenario())


# --- idempotency and validation -----------------------------------------------------------------

def test_spawn_retried_with_the_same_key_returns_the_same_agent(site: Site) -> None:
    key = "key-" + uuid.uuid4().hex
    labels = _label()

    async def scenario() -> None:
        first, created1 = await site.client.spawn(SpawnConfig(labels=labels), idempotency_key=key)
        second, created2 = await site.client.spawn(SpawnConfig(labels=labels), idempotency_key=key)
        assert (created1, created2) == (True, False)
        assert second.id == first.id
        assert [a.id for a in await site.client.list_agents(labels=labels)] == [first.id]
        await site.client.kill(first.id)

    site.run(scenario())


def test_invalid_input_is_invalid_argument_with_a_reason(site: Site) -> None:
    labels = _label()

    async def scenario() -> None:
        with pytest.raises(E.InvalidArgument, match="env name"):
            await site.client.spawn(SpawnConfig(labels=labels, env={"1BAD": "x"}))
        with pytest.raises(E.InvalidArgument, match="agent id"):
            await site.client.spawn(SpawnConfig(labels=labels), agent_id="../../etc")
        with pytest.raises(E.NotFound):
            await site.client.status("ag-does-not-exist")
        async with site.channel() as channel:
            stub = pb_grpc.ClusterFederationStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.SpawnAgent(pb.SpawnAgentRequest(spec=pb.AgentSpec(model="m", labels=labels,
                                                                             env={"A B": "x"})),
                                      metadata=bearer_metadata(TOKEN))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "env name" in (info.value.details() or "")
            assert ("godel-error", "InvalidArgument") in tuple(info.value.trailing_metadata() or ())
        assert await site.client.list_agents(labels=labels) == []

    site.run(scenario())


@pytest.mark.parametrize(("field", "value"), [("checkpoint_interval_s", math.inf), ("timeout_s", math.nan),
                                              ("cpus", float("1e309")), ("checkpoint_interval_s", -math.inf)])
def test_non_finite_numbers_are_refused_naming_the_field(site: Site, field: str, value: float) -> None:
    """inf / nan / 1e309 in a spawn, from a raw client or through GrpcClusterClient: INVALID_ARGUMENT
    naming the field, and nothing spawned (they used to spawn, and poison the agent table)."""
    labels = _label()

    async def scenario() -> None:
        spec = convert.spec_to_pb(SpawnConfig(labels=labels))
        setattr(spec, field, value)
        async with site.channel() as channel:
            stub = pb_grpc.ClusterFederationStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.SpawnAgent(pb.SpawnAgentRequest(spec=spec), metadata=bearer_metadata(TOKEN), timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"{field}: Input should be a finite number" in (info.value.details() or "")
        built_around = SpawnConfig(labels=labels).model_copy(update={field: value})  # skips pydantic
        with pytest.raises(E.InvalidArgument, match=field) as refused:
            await site.client.spawn(built_around)
        assert refused.value.field == field
        assert await site.client.list_agents(labels=labels) == []

    site.run(scenario())


@pytest.mark.parametrize("case", ["agent-id-newline", "env-name-newline", "label-key-newline", "gpu-type-newline",
                                  "long-idempotency-key", "nul-idempotency-key"])
def test_names_with_a_trailing_newline_and_bad_keys_are_refused(site: Site, case: str) -> None:
    labels = _label()
    spec = convert.spec_to_pb(SpawnConfig(labels=labels))
    request = pb.SpawnAgentRequest(spec=spec)
    if case == "agent-id-newline":
        request.agent_id = "ag-newline\n"
    elif case == "env-name-newline":
        request.spec.env["HOME\n"] = "x"
    elif case == "label-key-newline":
        request.spec.labels["task\n"] = "x"
    elif case == "gpu-type-newline":
        request.spec.gpu_type = "nvidia-a100\n"
    elif case == "long-idempotency-key":
        request.idempotency_key = "k" * 257
    else:
        request.idempotency_key = "k\x00"

    async def scenario() -> None:
        async with site.channel() as channel:
            stub = pb_grpc.ClusterFederationStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.SpawnAgent(request, metadata=bearer_metadata(TOKEN), timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
        assert await site.client.list_agents(labels=labels) == []

    site.run(scenario())


# --- snapshot import over the wire -------------------------------------------------------------

def _header(agent_id: str, archive: bytes, sha256: str | None = None, taken_at: float | None = None
            ) -> pb.SnapshotChunk:
    from godel_ray.models import Agent

    agent = Agent(id=agent_id, config=SpawnConfig(labels={"import": "test"}), status=AgentStatus.RUNNING)
    return pb.SnapshotChunk(header=pb.SnapshotHeader(
        agent=convert.agent_to_pb(agent), archive_size=len(archive),
        sha256=hashlib.sha256(archive).hexdigest() if sha256 is None else sha256,
        taken_at=time.time() if taken_at is None else taken_at))


def _many_files_archive(count: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i in range(count):
            tar.addfile(tarfile.TarInfo(f"f{i}"), io.BytesIO(b""))
    return buf.getvalue()


def _hostile_archive() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"pwned"
        info = tarfile.TarInfo("../escaped.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _good_archive() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"ok"
        info = tarfile.TarInfo("ok.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("case", ["data-first", "no-header", "two-headers", "bad-checksum", "truncated",
                                  "oversize", "hostile", "nan-taken-at", "too-many-files"])
def test_bad_imports_are_refused_and_leave_nothing(site: Site, case: str, tmp_path: Path) -> None:
    agent_id = "ag-imp-" + uuid.uuid4().hex[:8]
    good = _good_archive()
    many = _many_files_archive(LIMITS.max_snapshot_members + 1) if case == "too-many-files" else b""
    chunks: list[pb.SnapshotChunk] = {
        "data-first": [pb.SnapshotChunk(data=good), _header(agent_id, good)],
        "no-header": [pb.SnapshotChunk(data=good)],
        "two-headers": [_header(agent_id, good), _header(agent_id, good), pb.SnapshotChunk(data=good)],
        "bad-checksum": [_header(agent_id, good, sha256="0" * 64), pb.SnapshotChunk(data=good)],
        "truncated": [_header(agent_id, good), pb.SnapshotChunk(data=good[:-3])],
        "oversize": [_header(agent_id, good), pb.SnapshotChunk(data=good), pb.SnapshotChunk(data=b"more")],
        "hostile": [_header(agent_id, _hostile_archive()), pb.SnapshotChunk(data=_hostile_archive())],
        "nan-taken-at": [_header(agent_id, good, taken_at=math.nan), pb.SnapshotChunk(data=good)],
        "too-many-files": [_header(agent_id, many), pb.SnapshotChunk(data=many)],
    }[case]

    async def scenario() -> None:
        async with site.channel() as channel:
            stub = pb_grpc.ClusterFederationStub(channel)

            async def send() -> AsyncIterator[pb.SnapshotChunk]:
                for chunk in chunks:
                    yield chunk
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ImportAgent(send(), metadata=bearer_metadata(TOKEN), timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
            assert info.value.details()
        with pytest.raises(E.NotFound):
            await site.client.status(agent_id)
        assert agent_id not in [a.id for a in await site.client.list_agents()]
        root = site.runtime.workdir_root
        assert not [n for n in os.listdir(root) if n.startswith(".import-") or n == agent_id]

    site.run(scenario())


def test_a_good_raw_import_works(site: Site) -> None:
    """The control for the refusals above: the same stream, well formed, is accepted."""
    agent_id = "ag-imp-" + uuid.uuid4().hex[:8]
    good = _good_archive()

    async def scenario() -> None:
        async with site.channel() as channel:
            stub = pb_grpc.ClusterFederationStub(channel)

            async def send() -> AsyncIterator[pb.SnapshotChunk]:
                yield _header(agent_id, good)
                yield pb.SnapshotChunk(data=good)
            reply = await stub.ImportAgent(send(), metadata=bearer_metadata(TOKEN), timeout=60)
            assert reply.agent.id == agent_id
        result = collect([ch async for ch in site.client.exec_stream(agent_id, "cat ok.txt")])
        assert result.stdout == "ok"
        await site.client.kill(agent_id)

    site.run(scenario())


def test_events_reconnect_after_a_restart_and_resume_after_the_last_seq(site: Site) -> None:
    """The site's server goes away and comes back on the same port: the stream resumes, no repeats."""

    async def scenario() -> None:
        server, port, _ = await build_server(site.runtime, token=TOKEN, port=0, cluster_id="rpc-site")
        client = GrpcClusterClient(f"127.0.0.1:{port}", token=TOKEN, cluster_id="rpc-site")
        events = client.events(0)
        try:
            first, _ = await site.client.spawn(SpawnConfig(labels=_label()))
            seen = []
            async for event in events:
                seen.append(event.seq)
                if event.agent_id == first.id:
                    break
            await server.stop(None)  # the stream breaks; the client keeps trying
            second, _ = await site.client.spawn(SpawnConfig(labels=_label()))
            server, _, _ = await build_server(site.runtime, token=TOKEN, port=port, cluster_id="rpc-site")
            async for event in events:
                seen.append(event.seq)
                if event.agent_id == second.id:
                    break
            # every event exactly once, in order, across the reconnect
            assert seen == list(range(seen[0], seen[-1] + 1))
            await site.client.kill(first.id)
            await site.client.kill(second.id)
        finally:
            await events.aclose()
            await client.close()
            await server.stop(None)

    site.run(scenario())


def test_snapshot_chunking_round_trip_header_first() -> None:
    """No server needed: the wire form of a snapshot and its reassembly."""
    from godel_ray.models import Agent, AgentSnapshot, JournalEntry
    from godel_ray.rpc.servicer import assemble_snapshot, snapshot_chunks
    from godel_ray.settings import LIMITS

    archive = os.urandom(2 * LIMITS.snapshot_chunk_bytes + 123)
    snapshot = AgentSnapshot(agent=Agent(id="ag-chunks", config=SpawnConfig(labels={"a": "b"}), epoch=4),
                             journal=[JournalEntry(seq=1, command="ls", exit_code=0, started_at=1.0)],
                             archive=archive, sha256=hashlib.sha256(archive).hexdigest(), taken_at=5.0)
    chunks = snapshot_chunks(snapshot)
    assert [c.WhichOneof("payload") for c in chunks] == ["header", "journal_entry", "data", "data", "data"]
    assert [len(c.data) for c in chunks[2:]] == [LIMITS.snapshot_chunk_bytes] * 2 + [123]

    async def replay() -> AsyncIterator[pb.SnapshotChunk]:
        for chunk in chunks:
            yield chunk

    back = asyncio.run(assemble_snapshot(replay()))
    assert back == snapshot
