"""Typed calls to the project's actors: one method per actor operation, never a method-name string.

Every actor call in the project goes through a gateway here:

    ClusterGateway   one ClusterActor (the control plane's handle on a cluster)
    BalancerGateway  the BalancerActor (the facade ``MultiClusterLoadBalancer``)
    AgentGateway     one AgentActor (the agent runtime's handle on an agent)

A method submits the call at once and returns a ``Call[T]`` (or a ``Stream[T]`` for a streaming
generator): ``await call`` from asyncio code, ``call.get(timeout_s)`` from sync code. Either way
Ray's exceptions come back as the GodelError tree (``rayapi.mapped``), named after the callee, and a
timeout becomes ``DeadlineExceeded``. A reader and mypy can follow every hot path from here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from typing import Any, Generic, TypeVar

import ray

from godel_ray.errors import DeadlineExceeded
from godel_ray.models import (
    Agent,
    AgentSnapshot,
    AgentStatus,
    BusyPolicy,
    Cluster,
    ClusterChanges,
    ClusterHealthState,
    ClusterInfo,
    ClusterStats,
    DrainReport,
    ExecChunk,
    ExecResult,
    FederationEvent,
    FreezeOptions,
    FreezeReport,
    JournalEntry,
    Migration,
    PlacementDecision,
    SiteCapacity,
    SpawnConfig,
    TransferHeader,
    TransferMode,
    TransferPiece,
    TransferReport,
    TransferTrailer,
)
from godel_ray.raykit import rayapi

T = TypeVar("T")
STREAM_AHEAD_PIECES = 4  # a workdir stream's generator pauses when this many pieces wait unconsumed


class Call(Generic[T]):
    """One submitted actor call. Await it, or ``get`` it; errors are GodelErrors."""

    __slots__ = ("_ref", "_what")

    def __init__(self, what: str, submit: Callable[[], Any]) -> None:
        self._what = what
        with rayapi.mapped(what):  # ``.remote()`` itself fails for an actor that is gone
            self._ref = submit()

    def get(self, timeout_s: float | None = None) -> T:
        with rayapi.mapped(self._what):
            value: T = ray.get(self._ref, timeout=timeout_s)
            return value

    async def result(self, timeout_s: float | None = None) -> T:
        with rayapi.mapped(self._what):
            if timeout_s is None:
                value: T = await self._ref
                return value
            try:
                value = await asyncio.wait_for(_awaited(self._ref), timeout_s)
            except TimeoutError as exc:
                raise DeadlineExceeded(f"{self._what} did not answer within {timeout_s:g} s") from exc
            return value

    def __await__(self) -> Generator[Any, None, T]:
        return self.result().__await__()

    @property
    def ref(self) -> Any:
        """The underlying object ref (to pass on to another actor without fetching it)."""
        return self._ref


class Stream(Generic[T]):
    """A submitted streaming-generator call: iterate it (sync) or ``async for`` it."""

    __slots__ = ("_gen", "_what")

    def __init__(self, what: str, submit: Callable[[], Any]) -> None:
        self._what = what
        with rayapi.mapped(what):
            self._gen = submit()

    def __iter__(self) -> Iterator[T]:
        with rayapi.mapped(self._what):
            for ref in self._gen:
                value: T = ray.get(ref)
                yield value

    async def __aiter__(self) -> AsyncIterator[T]:
        with rayapi.mapped(self._what):
            async for ref in self._gen:
                value: T = await ref
                yield value

    async def refs(self) -> AsyncIterator[Any]:
        """Each piece's object ref as soon as it exists, never its value (to pass it on unread)."""
        with rayapi.mapped(self._what):
            async for ref in self._gen:
                yield ref

    def cancel(self) -> None:
        """Stop the generator on the actor (the caller went away mid-stream); best effort."""
        rayapi.cancel(self._gen)


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


class ClusterGateway:
    """Typed calls to one ClusterActor (``godel_ray.control.cluster_actor``)."""

    __slots__ = ("cluster_id", "handle", "what")

    def __init__(self, cluster_id: str, handle: Any) -> None:
        self.cluster_id = cluster_id
        self.handle = handle
        self.what = f"cluster {cluster_id}"

    def start(self) -> Call[bool]:
        return Call(self.what, lambda: self.handle.start.remote())

    def update(self, cluster: Cluster) -> Call[None]:
        return Call(self.what, lambda: self.handle.update.remote(cluster))

    def close(self) -> Call[None]:
        return Call(self.what, lambda: self.handle.close.remote())

    def probe(self) -> Call[SiteCapacity]:
        return Call(self.what, lambda: self.handle.probe.remote())

    def health(self) -> Call[ClusterHealthState]:
        return Call(self.what, lambda: self.handle.health.remote())

    def set_maintenance(self, on: bool) -> Call[ClusterHealthState]:
        return Call(self.what, lambda: self.handle.set_maintenance.remote(on))

    def wait_changes(self, incarnation: str, since_local_seq: int, health_version: int, timeout_s: float
                     ) -> Call[ClusterChanges]:
        """A long poll: answered at the first event after ``since_local_seq`` or health change after
        ``health_version``, else after ``timeout_s`` (``ClusterActor.wait_changes``)."""
        return Call(self.what, lambda: self.handle.wait_changes.remote(incarnation, since_local_seq, health_version,
                                                                      timeout_s))

    def spawn(self, config: SpawnConfig, *, agent_id: str | None = None, idempotency_key: str | None = None,
              epoch: int = 1) -> Call[tuple[Agent, bool]]:
        return Call(self.what, lambda: self.handle.spawn.remote(
            config, agent_id=agent_id, idempotency_key=idempotency_key, epoch=epoch))

    def kill(self, agent_id: str, *, epoch: int = 0, reason: str = "") -> Call[Agent]:
        return Call(self.what, lambda: self.handle.kill.remote(agent_id, epoch=epoch, reason=reason))

    def agent_actor(self, agent_id: str, epoch: int) -> Call[Any]:
        """The AgentActor handle of ``agent_id`` at ``epoch`` (``local`` only): a proxy's one hop."""
        return Call(self.what, lambda: self.handle.agent_actor.remote(agent_id, epoch))

    def exec(self, agent_id: str, command: str, *, timeout_s: float | None = None, epoch: int = 0
             ) -> Call[ExecResult]:
        return Call(self.what, lambda: self.handle.exec.remote(agent_id, command, timeout_s=timeout_s, epoch=epoch))

    def exec_stream(self, agent_id: str, command: str, *, timeout_s: float | None = None, epoch: int = 0
                    ) -> Stream[ExecChunk]:
        return Stream(self.what, lambda: self.handle.exec_stream.options(num_returns="streaming").remote(
            agent_id, command, timeout_s=timeout_s, epoch=epoch))

    def status(self, agent_id: str) -> Call[Agent]:
        return Call(self.what, lambda: self.handle.status.remote(agent_id))

    def list_agents(self, status: AgentStatus | None = None, labels: dict[str, str] | None = None
                    ) -> Call[list[Agent]]:
        return Call(self.what, lambda: self.handle.list_agents.remote(status, labels))

    def export(self, agent_id: str, *, epoch: int = 0, freeze: bool = False) -> Call[AgentSnapshot]:
        return Call(self.what, lambda: self.handle.export.remote(agent_id, epoch=epoch, freeze=freeze))

    def import_(self, snapshot: AgentSnapshot | Any) -> Call[Agent]:
        """``snapshot`` is the snapshot or an object ref to it (then Ray resolves it on the actor)."""
        return Call(self.what, lambda: self.handle.import_.remote(snapshot))

    def resume(self, agent_id: str, *, epoch: int = 0) -> Call[Agent]:
        return Call(self.what, lambda: self.handle.resume.remote(agent_id, epoch=epoch))

    def journal(self, agent_id: str) -> Call[list[JournalEntry]]:
        return Call(self.what, lambda: self.handle.journal.remote(agent_id))

    def fence(self, agent_id: str, epoch: int) -> Call[None]:
        """The agent lives at ``epoch`` elsewhere now: the cluster refuses its older copies' commands."""
        return Call(self.what, lambda: self.handle.fence.remote(agent_id, epoch))

    # protocol v2 (live migration): prepare, freeze, workdir streams, activate
    def prepare(self, agent: Agent) -> Call[Agent]:
        """Create ``agent`` here in an importing state (resources held, empty staging)."""
        return Call(self.what, lambda: self.handle.prepare.remote(agent))

    def freeze(self, agent_id: str, *, epoch: int = 0, options: FreezeOptions | None = None) -> Call[FreezeReport]:
        return Call(self.what, lambda: self.handle.freeze.remote(agent_id, epoch=epoch, options=options))

    def send(self, agent_id: str, mode: TransferMode, *, epoch: int = 0) -> Stream[TransferPiece]:
        """The agent's workdir stream, one object per piece (iterate ``refs()`` to pass them on unread)."""
        return Stream(self.what, lambda: self.handle.send.options(
            num_returns="streaming", _generator_backpressure_num_objects=STREAM_AHEAD_PIECES).remote(
            agent_id, mode, epoch=epoch))

    def receive_open(self, agent_id: str, *, epoch: int = 0) -> Call[str]:
        """Open an inbound stream for the importing ``agent_id``; returns its id for ``push``/``receive_close``."""
        return Call(self.what, lambda: self.handle.receive_open.remote(agent_id, epoch=epoch))

    def push(self, stream_id: str, piece: Any) -> Call[None]:
        """One piece of an inbound stream: a value, or an object ref (Ray resolves it on the actor)."""
        return Call(self.what, lambda: self.handle.push.remote(stream_id, piece))

    def receive_close(self, stream_id: str, abort: bool = False) -> Call[TransferReport]:
        """The pushed stream is complete: what was applied. ``abort``: drop it (the sender failed)."""
        return Call(self.what, lambda: self.handle.receive_close.remote(stream_id, abort))

    def activate(self, agent_id: str, *, epoch: int = 0) -> Call[Agent]:
        return Call(self.what, lambda: self.handle.activate.remote(agent_id, epoch=epoch))


class AgentGateway:
    """Typed calls to one AgentActor (``godel_ray.agents.actor``), the agent runtime's handle on it.

    Ray failures come back as the GodelError tree, named ``agent <id>``: a dead actor as
    ``rayapi.ActorDied``, an unreachable one as ``rayapi.ActorUnreachable`` (the runtime turns
    those into its agent statuses).
    """

    __slots__ = ("agent_id", "handle", "what")

    def __init__(self, agent_id: str, handle: Any) -> None:
        self.agent_id = agent_id
        self.handle = handle
        self.what = f"agent {agent_id}"

    def for_agent(self, agent_id: str) -> AgentGateway:
        """The same actor, named for the agent it now serves (a warm-pool member after ``adopt``)."""
        return AgentGateway(agent_id, self.handle)

    def ready(self) -> Call[bool]:
        return Call(self.what, lambda: self.handle.ready.remote())

    def start(self) -> Call[Agent]:
        return Call(self.what, lambda: self.handle.start.remote())

    def adopt(self, agent: Agent, workdir_root: str, archive: bytes | None = None,
              journal: list[JournalEntry] | None = None, sha256: str = "", importing: bool = False) -> Call[Agent]:
        return Call(self.what, lambda: self.handle.adopt.remote(agent, workdir_root, archive, journal, sha256,
                                                               importing))

    def origin(self) -> Call[dict[str, int | bool]]:
        return Call(self.what, lambda: self.handle.origin.remote())

    def exec(self, command: str, timeout_s: float | None = None, epoch: int = 0) -> Stream[ExecChunk]:
        """Streamed; ``epoch`` (a proxy's direct call) is checked by the actor itself."""
        return Stream(self.what, lambda: self.handle.exec.options(num_returns="streaming").remote(
            command, timeout_s, epoch))

    def run(self, command: str, timeout_s: float | None = None, epoch: int = 0) -> Call[ExecResult]:
        """``exec`` collected on the actor: one reply with the whole ``ExecResult``."""
        return Call(self.what, lambda: self.handle.run.remote(command, timeout_s, epoch))

    def command_events(self, wait: bool = True) -> Call[tuple[list[tuple[str, JournalEntry]], bool]]:
        return Call(self.what, lambda: self.handle.command_events.remote(wait))

    def fence(self, epoch: int) -> Call[None]:
        return Call(self.what, lambda: self.handle.fence.remote(epoch))

    def freeze(self, options: FreezeOptions | None = None) -> Call[FreezeReport]:
        return Call(self.what, lambda: self.handle.freeze.remote(options))

    def resume(self) -> Call[Agent]:
        return Call(self.what, lambda: self.handle.resume.remote())

    def terminate(self, reason: str = "") -> Call[Agent]:
        return Call(self.what, lambda: self.handle.terminate.remote(reason))

    def export(self) -> Call[AgentSnapshot]:
        return Call(self.what, lambda: self.handle.export.remote())

    def info(self) -> Call[Agent]:
        return Call(self.what, lambda: self.handle.info.remote())

    def send(self, mode: TransferMode) -> Stream[TransferPiece]:
        return Stream(self.what, lambda: self.handle.send.options(
            num_returns="streaming", _generator_backpressure_num_objects=STREAM_AHEAD_PIECES).remote(mode))

    def receive_begin(self, header: TransferHeader) -> Call[None]:
        return Call(self.what, lambda: self.handle.receive_begin.remote(header))

    def receive_chunk(self, data: bytes) -> Call[None]:
        return Call(self.what, lambda: self.handle.receive_chunk.remote(data))

    def receive_end(self, trailer: TransferTrailer) -> Call[TransferReport]:
        return Call(self.what, lambda: self.handle.receive_end.remote(trailer))

    def activate(self) -> Call[Agent]:
        return Call(self.what, lambda: self.handle.activate.remote())

    def journal(self) -> Call[list[JournalEntry]]:
        return Call(self.what, lambda: self.handle.journal.remote())

    def workdir(self) -> Call[str]:
        return Call(self.what, lambda: self.handle.workdir.remote())

    def wait_change(self, seen: int = 0) -> Call[tuple[int, Agent]]:
        return Call(self.what, lambda: self.handle.wait_change.remote(seen))

    def kill(self) -> None:
        """End the actor for good (no restart); an actor already gone is fine."""
        with contextlib.suppress(Exception):
            rayapi.kill_actor(self.handle)


class BalancerGateway:
    """Typed calls to the BalancerActor (``godel_ray.control.balancer.MultiClusterLoadBalancer``)."""

    __slots__ = ("handle",)
    what = rayapi.BALANCER_WHAT

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def ping(self) -> Call[str]:
        return Call(self.what, lambda: self.handle.ping.remote())

    def role(self) -> Call[dict[str, str]]:
        """This control plane's role, and the active one's holder and Ray address (in every role)."""
        return Call(self.what, lambda: self.handle.role.remote())

    def prepare_shutdown(self) -> Call[int]:
        return Call(self.what, lambda: self.handle.prepare_shutdown.remote())

    # registry
    def register_cluster(self, cluster: Cluster) -> Call[ClusterInfo]:
        return Call(self.what, lambda: self.handle.register_cluster.remote(cluster))

    def unregister_cluster(self, cluster_id: str, force: bool = False) -> Call[None]:
        return Call(self.what, lambda: self.handle.unregister_cluster.remote(cluster_id, force))

    def update_cluster(self, cluster_id: str, changes: dict[str, Any]) -> Call[ClusterInfo]:
        return Call(self.what, lambda: self.handle.update_cluster.remote(cluster_id, changes))

    def list_clusters(self) -> Call[list[ClusterInfo]]:
        return Call(self.what, lambda: self.handle.list_clusters.remote())

    def get_cluster(self, cluster_id: str) -> Call[ClusterInfo]:
        return Call(self.what, lambda: self.handle.get_cluster.remote(cluster_id))

    def health(self) -> Call[list[ClusterHealthState]]:
        return Call(self.what, lambda: self.handle.health.remote())

    def stats(self) -> Call[list[ClusterStats]]:
        return Call(self.what, lambda: self.handle.stats.remote())

    def set_maintenance(self, cluster_id: str, on: bool) -> Call[ClusterInfo]:
        return Call(self.what, lambda: self.handle.set_maintenance.remote(cluster_id, on))

    def regions(self) -> Call[dict[str, list[str]]]:
        return Call(self.what, lambda: self.handle.regions.remote())

    def drain(self, cluster_id: str, wait: bool = False, busy: BusyPolicy = BusyPolicy.WAIT,
              busy_timeout_s: float | None = None) -> Call[DrainReport]:
        return Call(self.what, lambda: self.handle.drain.remote(cluster_id, wait, busy, busy_timeout_s))

    def plan(self, config: SpawnConfig) -> Call[PlacementDecision]:
        return Call(self.what, lambda: self.handle.plan.remote(config))

    # agents
    def spawn(self, config: SpawnConfig) -> Call[Agent]:
        return Call(self.what, lambda: self.handle.spawn.remote(config))

    def kill(self, agent_id: str) -> Call[Agent]:
        return Call(self.what, lambda: self.handle.kill.remote(agent_id))

    def status(self, agent_id: str) -> Call[Agent]:
        return Call(self.what, lambda: self.handle.status.remote(agent_id))

    def list_agents(self, status: str | None = None, labels: dict[str, str] | None = None,
                    cluster: str | None = None, model: str | None = None) -> Call[list[Agent]]:
        return Call(self.what, lambda: self.handle.list_agents.remote(status, labels, cluster, model))

    def locate(self, agent_id: str) -> Call[tuple[str, int]]:
        return Call(self.what, lambda: self.handle.locate.remote(agent_id))

    def explain(self, agent_id: str) -> Call[PlacementDecision]:
        return Call(self.what, lambda: self.handle.explain.remote(agent_id))

    def journal(self, agent_id: str) -> Call[list[JournalEntry]]:
        return Call(self.what, lambda: self.handle.journal.remote(agent_id))

    def events_since(self, since_seq: int = 0, limit: int = 1000) -> Call[list[FederationEvent]]:
        return Call(self.what, lambda: self.handle.events_since.remote(since_seq, limit))

    def migrate(self, agent_id: str, target: str, wait: bool = True, busy: BusyPolicy = BusyPolicy.WAIT,
                busy_timeout_s: float | None = None) -> Call[Migration]:
        return Call(self.what, lambda: self.handle.migrate.remote(agent_id, target, wait, busy, busy_timeout_s))

    def migrations(self, agent_id: str | None = None) -> Call[list[Migration]]:
        return Call(self.what, lambda: self.handle.migrations.remote(agent_id))


__all__ = ["AgentGateway", "BalancerGateway", "Call", "ClusterGateway", "Stream"]
