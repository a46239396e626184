"""The proxy's policy (client/policy.py): what to do after each outcome, without Ray.

Also drives the sync and asyncio shells against in-memory gateways, to show both carry out the one
policy identically (no Ray: the shells only ever see ``Call``-like and stream-like objects).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from godel_ray.client import policy
from godel_ray.client.policy import AgentRoute, EventCursor, Location, Page, Raise, Reroute, Retry, Send
from godel_ray.errors import (
    AgentMoved,
    AgentNotFound,
    AgentNotRunning,
    ClusterUnavailable,
    ControlPlaneNotRunning,
    DeadlineExceeded,
    GodelError,
    InvalidArgument,
    StaleEpoch,
)
from godel_ray.models import EventKind, ExecChunk, ExecResult, FederationEvent

HERE = Location("east", 3)
THERE = Location("west", 4)

# --------------------------------------------------------------- balancer calls


def test_read_only_balancer_calls_wait_out_a_restart_then_give_up() -> None:
    down = ControlPlaneNotRunning("restarting")
    steps = [policy.after_balancer_error(down, attempt, read_only=True)
             for attempt in range(policy.BALANCER_RETRY_ATTEMPTS)]
    assert steps[:-1] == [Retry(policy.BALANCER_RETRY_DELAY_S)] * (policy.BALANCER_RETRY_ATTEMPTS - 1)
    assert steps[-1] == Raise(down)


@pytest.mark.parametrize("error", [InvalidArgument("bad"), AgentNotFound("gone"), DeadlineExceeded("slow")])
def test_other_balancer_errors_are_raised_at_once(error: GodelError) -> None:
    assert policy.after_balancer_error(error, 0, read_only=True) == Raise(error)


def test_calls_that_change_state_are_never_retried() -> None:
    down = ControlPlaneNotRunning("restarting")
    assert policy.after_balancer_error(down, 0, read_only=False) == Raise(down)


# --------------------------------------------------------------- routing a call to an agent


def test_a_cache_miss_asks_the_balancer_first() -> None:
    route = AgentRoute(None)
    assert route.start() == Reroute()
    assert route.located(HERE) == Send(HERE)


def test_a_cached_location_is_used_without_asking() -> None:
    assert AgentRoute(HERE).start() == Send(HERE)


@pytest.mark.parametrize("error", [AgentMoved("moved"), StaleEpoch("fenced"), AgentNotFound("not here")])
def test_moved_agent_is_rerouted_and_sent_again(error: GodelError) -> None:
    route = AgentRoute(HERE)
    route.start()
    assert route.failed(error, started=False) == Reroute()
    assert route.located(THERE) == Send(THERE)


def test_reroutes_are_bounded() -> None:
    route = AgentRoute(HERE, max_reroutes=2)
    route.start()
    moved = AgentMoved("moved")
    for _ in range(2):
        assert route.failed(moved, started=False) == Reroute()
        assert route.located(THERE) == Send(THERE)
    assert route.failed(moved, started=False) == Raise(moved)
    assert route.reroutes == 2


def test_nothing_is_sent_again_once_output_started() -> None:
    for error in (AgentMoved("moved"), ClusterUnavailable("down", cluster_id="east")):
        route = AgentRoute(HERE)
        route.start()
        assert route.failed(error, started=True) == Raise(error)


@pytest.mark.parametrize("error", [AgentNotRunning("done"), InvalidArgument("bad"), DeadlineExceeded("slow")])
def test_other_errors_are_raised_at_once(error: GodelError) -> None:
    route = AgentRoute(HERE)
    route.start()
    assert route.failed(error, started=False) == Raise(error)


def test_unavailable_cluster_reroutes_only_when_the_agent_is_placed_elsewhere() -> None:
    down = ClusterUnavailable("cluster east is unavailable", cluster_id="east")
    route = AgentRoute(HERE)
    route.start()
    assert route.failed(down, started=False) == Reroute(drop_cluster="east")
    assert route.located(HERE) == Raise(down), "still placed there: the cluster is down, not the agent moved"

    route = AgentRoute(HERE)
    route.start()
    assert route.failed(down, started=False) == Reroute(drop_cluster="east")
    assert route.located(THERE) == Send(THERE), "failover restored it elsewhere: go there"


def test_same_location_after_a_moved_error_is_sent_again() -> None:
    """AgentMoved with the same answer can be a race with the commit: send again (bounded)."""
    route = AgentRoute(HERE)
    route.start()
    route.failed(AgentMoved("moved"), started=False)
    assert route.located(HERE) == Send(HERE)


LOCAL = Location("local", 5)


def test_a_local_agent_is_sent_to_directly() -> None:
    assert AgentRoute(LOCAL).start() == Send(LOCAL, direct=True)
    assert AgentRoute(HERE).start() == Send(HERE, direct=False), "a remote agent goes through its cluster"
    route = AgentRoute(None)
    route.start()
    assert route.located(LOCAL) == Send(LOCAL, direct=True)


@pytest.mark.parametrize("error", [AgentMoved("moved"), StaleEpoch("stale"), AgentNotFound("gone"),
                                   ClusterUnavailable("actor died"), ClusterUnavailable("actor unreachable")])
def test_a_refused_direct_send_reroutes_then_goes_through_the_cluster(error: GodelError) -> None:
    route = AgentRoute(LOCAL)
    route.start()
    assert route.failed(error, started=False, direct=True) == Reroute(), "no cluster to drop: the actor refused"
    assert route.located(LOCAL) == Send(LOCAL, direct=False), "the same place: the cluster answers exactly"
    assert route.failed(AgentMoved("moved"), started=False) == Reroute()
    assert route.located(Location("local", 6)) == Send(Location("local", 6), direct=False)


def test_a_direct_send_is_never_sent_again_once_output_started() -> None:
    route = AgentRoute(LOCAL)
    route.start()
    died = ClusterUnavailable("actor died")
    assert route.failed(died, started=True, direct=True) == Raise(died)


def test_a_direct_send_that_fails_otherwise_is_raised() -> None:
    route = AgentRoute(LOCAL)
    route.start()
    ended = AgentNotRunning("terminated")
    assert route.failed(ended, started=False, direct=True) == Raise(ended)


# --------------------------------------------------------------- paging the event log


def _events(*seqs: int) -> list[FederationEvent]:
    return [FederationEvent(seq=seq, kind=EventKind.AGENT, type="agent.spawned") for seq in seqs]


def test_event_cursor_pages_then_stops_or_polls() -> None:
    cursor = EventCursor(5, page_size=2)
    assert cursor.advance(_events(6, 7)) is Page.NEXT and cursor.seq == 7
    assert cursor.advance(_events(8)) is Page.DONE and cursor.seq == 8
    follow = EventCursor(8, follow=True, page_size=2)
    assert follow.advance([]) is Page.POLL and follow.seq == 8


# --------------------------------------------------------------- both shells, one policy


class FakeCall:
    """Stands in for ``raykit.gateway.Call``: ``get()`` or ``await``."""

    def __init__(self, outcome: Callable[[], Any]) -> None:
        self._outcome = outcome

    def get(self, timeout_s: float | None = None) -> Any:
        return self._outcome()

    def __await__(self) -> Any:
        async def result() -> Any:
            return self._outcome()
        return result().__await__()


class FakeStream:
    """Stands in for ``raykit.gateway.Stream``: iterate it, or ``async for`` it."""

    def __init__(self, items: list[Any], error: GodelError | None) -> None:
        self._items, self._error = items, error

    def __iter__(self) -> Iterator[Any]:
        yield from self._items
        if self._error:
            raise self._error

    async def __aiter__(self) -> AsyncIterator[Any]:
        for item in self._items:
            yield item
        if self._error:
            raise self._error


class World:
    """Where agents really are, and what each cluster answers; records every call."""

    def __init__(self) -> None:
        self.placed = {"ag-1": THERE}
        self.down: set[str] = set()
        self.calls: list[str] = []

    def balancer(self) -> Any:
        world = self

        class Balancer:
            def locate(self, agent_id: str) -> FakeCall:
                world.calls.append(f"locate {agent_id}")
                return FakeCall(lambda: tuple(world.placed[agent_id]))

        return Balancer()

    def cluster(self, cluster_id: str) -> Any:
        world = self

        def check(epoch: int, agent_id: str) -> None:
            if cluster_id in world.down:
                raise ClusterUnavailable(f"cluster {cluster_id} is unavailable", cluster_id=cluster_id)
            if world.placed[agent_id] != (cluster_id, epoch):
                raise AgentMoved(f"{agent_id} moved", agent_id=agent_id)

        class Cluster:
            def agent_actor(self, agent_id: str, epoch: int) -> FakeCall:
                world.calls.append(f"agent_actor {cluster_id}@{epoch}")

                def look_up() -> FakeActor:
                    check(epoch, agent_id)
                    return FakeActor(world, agent_id, epoch)
                return FakeCall(look_up)

            def exec(self, agent_id: str, command: str, *, timeout_s: float | None, epoch: int) -> FakeCall:
                world.calls.append(f"exec {cluster_id}@{epoch}")

                def run() -> ExecResult:
                    check(epoch, agent_id)
                    return ExecResult(exit_code=0, stdout=f"{command} on {cluster_id}")
                return FakeCall(run)

            def exec_stream(self, agent_id: str, command: str, *, timeout_s: float | None, epoch: int
                            ) -> FakeStream:
                world.calls.append(f"stream {cluster_id}@{epoch}")
                try:
                    check(epoch, agent_id)
                except GodelError as exc:
                    return FakeStream([], exc)
                return FakeStream([ExecChunk(data="out"), ExecChunk(result=ExecResult(exit_code=0))], None)

        return Cluster()


class FakeActor:
    """Stands in for an AgentActor's gateway: serves ``agent_id`` at ``epoch`` until it moved."""

    def __init__(self, world: World, agent_id: str, epoch: int) -> None:
        self.world, self.agent_id, self.epoch = world, agent_id, epoch

    def _check(self, epoch: int) -> None:
        if self.world.placed[self.agent_id] != ("local", self.epoch):
            raise AgentMoved(f"{self.agent_id} moved", agent_id=self.agent_id)
        if epoch != self.epoch:
            raise StaleEpoch("stale")

    def run(self, command: str, timeout_s: float | None, epoch: int) -> FakeCall:
        self.world.calls.append(f"run actor@{self.epoch}")

        def run() -> ExecResult:
            self._check(epoch)
            return ExecResult(exit_code=0, stdout=f"{command} on actor@{self.epoch}")
        return FakeCall(run)

    def exec(self, command: str, timeout_s: float | None, epoch: int) -> FakeStream:
        self.world.calls.append(f"stream actor@{self.epoch}")
        try:
            self._check(epoch)
        except GodelError as exc:
            return FakeStream([], exc)
        return FakeStream([ExecChunk(data="out"), ExecChunk(result=ExecResult(exit_code=0))], None)


def _proxy(world: World) -> Any:
    from godel_ray.client.proxy import TransparentClusterProxy

    proxy = TransparentClusterProxy(world.balancer())
    proxy._session.locations["ag-1"] = HERE  # cached from an earlier answer
    proxy._session.cluster = world.cluster  # type: ignore[method-assign]
    return proxy


@pytest.fixture
def attached(monkeypatch: pytest.MonkeyPatch) -> None:
    from godel_ray.client import session

    monkeypatch.setattr(session, "ensure_attached", lambda: None)


@pytest.mark.usefixtures("attached")
@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_both_shells_reroute_a_stale_cache_the_same_way(flavour: str) -> None:
    world = World()
    proxy = _proxy(world)
    if flavour == "sync":
        result = proxy.exec("ag-1", "ls")
        chunks = list(proxy.exec_stream("ag-1", "ls"))
    else:
        aio = proxy.aio()

        async def run() -> tuple[ExecResult, list[ExecChunk]]:
            return await aio.exec("ag-1", "ls"), [c async for c in aio.exec_stream("ag-1", "ls")]

        result, chunks = asyncio.run(run())
    assert result.stdout == "ls on west"
    assert [c.data for c in chunks] == ["out", ""] and chunks[-1].result is not None
    assert world.calls == ["exec east@3", "locate ag-1", "exec west@4", "stream west@4"], "cache refreshed once"


@pytest.mark.usefixtures("attached")
@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_both_shells_raise_when_the_cluster_is_down_and_the_agent_still_there(flavour: str) -> None:
    world = World()
    world.placed["ag-1"] = HERE
    world.down.add("east")
    proxy = _proxy(world)
    with pytest.raises(ClusterUnavailable):
        if flavour == "sync":
            proxy.exec("ag-1", "ls")
        else:
            asyncio.run(proxy.aio().exec("ag-1", "ls"))
    assert world.calls == ["exec east@3", "locate ag-1"]


@pytest.mark.usefixtures("attached")
@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_both_shells_exec_on_a_local_agents_actor_and_reroute_a_stale_one(flavour: str) -> None:
    world = World()
    world.placed["ag-2"] = LOCAL
    proxy = _proxy(world)
    proxy._session.locations["ag-2"] = LOCAL
    proxy._session.agent_gateway = lambda agent_id, handle: handle
    aio = proxy.aio()

    def exec_() -> str:
        if flavour == "sync":
            return str(proxy.exec("ag-2", "ls").stdout)
        return str(asyncio.run(aio.exec("ag-2", "ls")).stdout)

    def stream() -> list[ExecChunk]:
        if flavour == "sync":
            return list(proxy.exec_stream("ag-2", "ls"))

        async def run() -> list[ExecChunk]:
            return [c async for c in aio.exec_stream("ag-2", "ls")]
        return asyncio.run(run())

    assert exec_() == "ls on actor@5" and exec_() == "ls on actor@5"
    assert [c.data for c in stream()] == ["out", ""]
    assert world.calls == ["agent_actor local@5", "run actor@5", "run actor@5", "stream actor@5"], \
        "looked up once, then straight to the actor"
    world.calls.clear()
    world.placed["ag-2"] = Location("local", 6)  # moved away and back: the cached actor is stale
    assert exec_() == "ls on local"
    assert world.calls == ["run actor@5", "locate ag-2", "exec local@6"], "refused, re-resolved, sent via the cluster"
    world.calls.clear()
    assert exec_() == "ls on actor@6"
    assert world.calls == ["agent_actor local@6", "run actor@6"]


def test_the_client_imports_neither_ray_nor_grpc() -> None:
    code = ("import sys, godel_ray.client.proxy, godel_ray.client.aio, godel_ray.client.reader\n"
            "print(sorted(m for m in ('ray', 'grpc') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.strip() == "[]"
