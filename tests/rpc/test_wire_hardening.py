"""What a site or a client may put on the wire, for real: grpc.aio servers on port 0, driven through
``GrpcClusterClient`` and the control plane's ``ClusterActor`` (no Ray needed).

- A *hostile site* (a raw servicer: a newer or broken site) sends a heartbeat with ``inf``/``nan``
  in its capacity, and events of a kind or type this version does not know: the heartbeat counts as
  failed and nothing of it is stored; unreadable events are skipped (logged once), the others carried,
  and the stream goes on.
- The real ``ClusterFederationServicer`` over a small in-memory runtime bounds ImportAgent: at most
  ``max_concurrent_imports`` at once (RESOURCE_EXHAUSTED beyond), and one archive held per import.
- A bearer token sent without TLS to a non-loopback host is warned about once, never logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
import pytest

from godel_ray import errors as E
from godel_ray.control.cluster_actor import ClusterActor
from godel_ray.models import (
    Agent,
    AgentSnapshot,
    Cluster,
    ClusterStatus,
    FederationEvent,
    HealthSettings,
    SiteCapacity,
    SpawnConfig,
)
from godel_ray.rpc import convert
from godel_ray.rpc.client import GrpcClusterClient
from godel_ray.rpc.gen import federation_pb2 as pb
from godel_ray.rpc.gen import federation_pb2_grpc as pb_grpc
from godel_ray.rpc.servicer import ClusterFederationServicer, iter_snapshot_chunks
from godel_ray.settings import Limits

T = TypeVar("T")
DEADLINE_S = 30.0
POLL_S = 0.02


async def poll(probe: Callable[[], Awaitable[T | None]], what: str, timeout_s: float = DEADLINE_S) -> T:
    """Await ``probe`` until it returns something truthy, within a deadline (no fixed sleeps)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await probe()
        if value:
            return value
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


async def serve(servicer: pb_grpc.ClusterFederationServicer) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    pb_grpc.add_ClusterFederationServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


# --- a hostile site ----------------------------------------------------------------------------

def good_event(seq: int, type_: str = "agent.spawned") -> pb.Event:
    return pb.Event(seq=seq, kind=pb.EVENT_KIND_AGENT, type=type_, agent_id=f"ag-{seq}", ts=1.0)


HOSTILE_EVENTS = [
    good_event(1),
    pb.Event(seq=2, kind=99, type="quota.exceeded", ts=1.0),  # type: ignore[arg-type]  # unknown: skipped
    pb.Event(seq=3, kind=99, type="agent.hibernated", agent_id="ag-3", ts=1.0),  # type: ignore[arg-type]
    pb.Event(seq=4, kind=pb.EVENT_KIND_AGENT, type="agent.spawned", ts=math.nan),  # refused field: skipped
    good_event(5, "agent.killed"),
    pb.Event(seq=6, kind=99, type="quota.exceeded", ts=2.0),  # type: ignore[arg-type]  # same kind: no new log
    good_event(7),
]
CARRIED = [(1, "agent.spawned"), (3, "agent.hibernated"), (5, "agent.killed"), (7, "agent.spawned")]


class HostileSite(pb_grpc.ClusterFederationServicer):
    """Answers Heartbeat with ``capacity`` and StreamEvents with ``HOSTILE_EVENTS``, then holds the stream."""

    def __init__(self, capacity: pb.SiteCapacity) -> None:
        self.capacity = capacity
        self.heartbeats = 0

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Any) -> pb.HeartbeatResponse:
        self.heartbeats += 1
        return pb.HeartbeatResponse(capacity=self.capacity, received_at=time.time())

    async def StreamEvents(self, request_iterator: AsyncIterator[pb.StreamEventsRequest], context: Any
                           ) -> AsyncIterator[pb.Event]:
        since = 0
        async for first in request_iterator:
            since = first.since_seq
            break
        for event in HOSTILE_EVENTS:
            if event.seq > since:
                yield event
        await asyncio.Event().wait()  # a live site: the stream stays open


def good_capacity() -> pb.SiteCapacity:
    return convert.capacity_to_pb(SiteCapacity(name="hostile", region="r", max_agents=4, available_agents=4,
                                               gpu_types=["a100"], free_gpus={"a100": 1.0}, total_gpus=1.0,
                                               total_cpus=8.0, free_cpus=8.0))


def poisoned(field: str, value: float) -> pb.SiteCapacity:
    capacity = good_capacity()
    if field == "free_gpus":
        capacity.free_gpus["a100"] = value
    else:
        setattr(capacity, field, value)
    return capacity


@pytest.mark.parametrize(("field", "value"), [("cost_per_hour", math.inf), ("free_cpus", math.nan),
                                              ("total_gpus", float("1e309")), ("free_gpus", -math.inf)])
def test_a_heartbeat_with_a_non_finite_number_fails_and_nothing_is_stored(field: str, value: float,
                                                                         tmp_path: Path) -> None:
    async def scenario() -> None:
        site = HostileSite(poisoned(field, value))
        server, endpoint = await serve(site)
        client = GrpcClusterClient(endpoint, token="", cluster_id="hostile")
        actor = ClusterActor(Cluster(id="hostile", endpoint=endpoint, health=HealthSettings(
            heartbeat_interval_s=0.05, heartbeat_timeout_s=5.0, degraded_after=2)), str(tmp_path))
        try:
            with pytest.raises(E.InvalidArgument, match=f"site capacity: {field}.*finite number") as info:
                await client.heartbeat()
            assert info.value.field == field

            # the control plane's heartbeat loop: failures, never a stored capacity
            await actor.start()
            state = await poll(lambda: _failed_twice(actor), "two failed heartbeats")
            assert state.status == ClusterStatus.DEGRADED
            assert "finite number" in state.last_error and field in state.last_error
            assert state.capacity == SiteCapacity() and state.last_success_at is None

            site.capacity = good_capacity()  # the site is fixed: its capacity is taken again
            healthy = await poll(lambda: _capacity_named(actor, "hostile"), "a good heartbeat")
            assert healthy.capacity.free_gpus == {"a100": 1.0}
        finally:
            await actor.close()
            await client.close()
            await server.stop(None)

    asyncio.run(scenario())


async def _failed_twice(actor: ClusterActor) -> Any:
    state = await actor.health()
    return state if state.consecutive_failures >= 2 else None


async def _capacity_named(actor: ClusterActor, name: str) -> Any:
    state = await actor.health()
    return state if state.capacity.name == name else None


def test_unknown_events_are_carried_or_skipped_and_the_stream_goes_on(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        server, endpoint = await serve(HostileSite(good_capacity()))
        client = GrpcClusterClient(endpoint, token="", cluster_id="hostile")
        actor = ClusterActor(Cluster(id="hostile", endpoint=endpoint), str(tmp_path))
        try:
            got: list[FederationEvent] = []
            stream = client.events(0)
            try:
                async with asyncio.timeout(DEADLINE_S):
                    async for event in stream:
                        got.append(event)
                        if len(got) == len(CARRIED):
                            break
            finally:
                await stream.aclose()
            assert [(e.seq, e.type) for e in got] == CARRIED
            assert {e.cluster_id for e in got} == {"hostile"}

            # the control plane's event loop keeps going past them, too (it used to retry seq 2 forever)
            await actor.start()
            buffered = await poll(lambda: _drained(actor, len(CARRIED)), "the cluster actor's events")
            assert [(e.seq, e.type) for e in buffered] == [(i + 1, t) for i, (_, t) in enumerate(CARRIED)]
            assert actor.site_seq == 7
        finally:
            await actor.close()
            await client.close()
            await server.stop(None)

    with caplog.at_level(logging.WARNING, logger="godel_ray.rpc.client"):
        asyncio.run(scenario())
    skipped = [r.getMessage() for r in caplog.records if "skipping event" in r.getMessage()]
    # once per client and (kind, type): seq 2 and seq 4 for each of the two clients; seq 6 repeats seq 2's
    assert sum("skipping event 2 " in m for m in skipped) == 2 and sum("skipping event 4 " in m for m in skipped) == 2
    assert not any("skipping event 6 " in m for m in skipped), skipped


async def _drained(actor: ClusterActor, count: int) -> list[FederationEvent] | None:
    events, _ = await actor.drain_events(0)
    return events if len(events) >= count else None


# --- ImportAgent bounds, on the real servicer --------------------------------------------------

class MemoryRuntime:
    """Just enough of a ``ClusterClient`` for ImportAgent: it keeps what it imports."""

    def __init__(self) -> None:
        self.imported: list[AgentSnapshot] = []

    async def import_(self, snapshot: AgentSnapshot) -> Agent:
        self.imported.append(snapshot)
        return snapshot.agent

    async def close(self) -> None:
        return None


def snapshot_of(size: int) -> AgentSnapshot:
    archive = os.urandom(size)
    return AgentSnapshot(agent=Agent(id="ag-" + uuid.uuid4().hex[:10], config=SpawnConfig()), archive=archive,
                         sha256=hashlib.sha256(archive).hexdigest())


def test_imports_beyond_the_limit_are_refused_with_resource_exhausted() -> None:
    async def scenario() -> None:
        runtime = MemoryRuntime()
        servicer = ClusterFederationServicer(runtime, "bounded", Limits(max_concurrent_imports=1))  # type: ignore[arg-type]
        server, endpoint = await serve(servicer)
        release = asyncio.Event()
        held = snapshot_of(1000)

        async def slow_sender() -> AsyncIterator[pb.SnapshotChunk]:
            chunks = iter_snapshot_chunks(held)
            yield next(chunks)  # the header, then wait: an import in flight
            await release.wait()
            for chunk in chunks:
                yield chunk

        async with grpc.aio.insecure_channel(endpoint) as channel:
            stub = pb_grpc.ClusterFederationStub(channel)  # type: ignore[no-untyped-call]
            first = asyncio.ensure_future(stub.ImportAgent(slow_sender(), timeout=DEADLINE_S))

            async def one_in_flight() -> bool:
                return servicer.imports_in_flight == 1
            await poll(one_in_flight, "the first import to be in flight")

            second = snapshot_of(10)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ImportAgent(_chunks(second), timeout=DEADLINE_S)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "already receiving 1 agent imports" in (info.value.details() or "")
            assert "retry" in (info.value.details() or "")
            with pytest.raises(E.ResourceExhausted):  # the client maps it to the error tree
                await GrpcClusterClient(endpoint, token="").import_(second)

            release.set()
            assert (await first).agent.id == held.agent.id
            assert servicer.imports_in_flight == 0
            assert (await stub.ImportAgent(_chunks(second), timeout=DEADLINE_S)).agent.id == second.agent.id
        assert [s.agent.id for s in runtime.imported] == [held.agent.id, second.agent.id]
        await server.stop(None)

    asyncio.run(scenario())


async def _chunks(snapshot: AgentSnapshot) -> AsyncIterator[pb.SnapshotChunk]:
    for chunk in iter_snapshot_chunks(snapshot):
        yield chunk


def test_an_import_holds_one_copy_of_its_archive() -> None:
    """Received over a real stream, a 24 MiB archive costs the site about 24 MiB, not twice that."""
    size = 24 * 1024 * 1024

    async def scenario() -> tuple[int, AgentSnapshot]:
        runtime = MemoryRuntime()
        server, endpoint = await serve(ClusterFederationServicer(runtime, "mem"))  # type: ignore[arg-type]
        client = GrpcClusterClient(endpoint, token="")
        snapshot = snapshot_of(size)
        try:
            await client.import_(snapshot_of(1024))  # warm the channel up outside the measurement
            tracemalloc.start()
            try:
                await client.import_(snapshot)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        finally:
            await client.close()
            await server.stop(None)
        assert runtime.imported[-1].archive == snapshot.archive
        return peak, snapshot

    peak, _ = asyncio.run(scenario())
    assert peak < size * 1.5, f"receiving {size} bytes took {peak} bytes at the peak"


# --- the token and plaintext -------------------------------------------------------------------

def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "without TLS" in r.getMessage()]


def test_a_token_sent_without_tls_to_a_remote_host_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    token = "tok-" + uuid.uuid4().hex
    host = f"10.{os.getpid() % 250}.{uuid.uuid4().int % 250}.7"  # this test's own endpoint: warned once per process
    with caplog.at_level(logging.WARNING, logger="godel_ray.rpc.client"):
        GrpcClusterClient(f"{host}:50051", token=token)
        GrpcClusterClient(f"grpc://{host}:50051", token=token)  # the same endpoint: no second warning
        assert len(_warnings(caplog)) == 1
        assert f"{host}:50051" in _warnings(caplog)[0] and "grpcs://" in _warnings(caplog)[0]
        for quiet in (f"grpcs://{host}:50052", "127.0.0.1:50051", "127.8.9.10:1", "localhost:50051",
                      "[::1]:50051", f"{host}:50053"):
            GrpcClusterClient(quiet, token=token if not quiet.endswith(":50053") else "")
        assert len(_warnings(caplog)) == 1  # TLS, loopback, or no token: nothing to warn about
        GrpcClusterClient(f"site-{uuid.uuid4().hex[:6]}.example.com:443", token=token)  # a name may be anywhere
        assert len(_warnings(caplog)) == 2
    assert all(token not in r.getMessage() and token not in str(r.args) for r in caplog.records)
