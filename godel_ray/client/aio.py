"""The asyncio twin of the proxy: ``AsyncTransparentClusterProxy`` and ``AsyncClusterRegistry``.

Get one with ``proxy.aio()``: it shares the sync proxy's session (handles and location cache).
The same methods, awaitable; what to do after each outcome is ``client.policy``'s decision, exactly
as in the sync shell (``client.proxy``). Importing this module does not import Ray.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from godel_ray.client import policy
from godel_ray.client.session import Hop, Session, status_value
from godel_ray.errors import GodelError
from godel_ray.inputs import busy_policy, busy_timeout, move_policy
from godel_ray.models import (
    Agent,
    AgentStatus,
    BusyPolicy,
    Cluster,
    ClusterHealthState,
    ClusterInfo,
    ClusterStats,
    DrainReport,
    ExecChunk,
    ExecResult,
    FederationEvent,
    JournalEntry,
    Migration,
    PlacementDecision,
    SpawnConfig,
)

if TYPE_CHECKING:
    from godel_ray.raykit.gateway import BalancerGateway, Call

T = TypeVar("T")


class _AsyncBalanced:
    """Awaitable calls to the balancer, with the policy's retry for read-only ones."""

    def __init__(self, session: Session) -> None:
        self._session = session

    async def _write(self, call: Callable[[BalancerGateway], Call[T]]) -> T:
        return await self._balancer(call, read_only=False)

    async def _read(self, call: Callable[[BalancerGateway], Call[T]]) -> T:
        return await self._balancer(call, read_only=True)

    async def _balancer(self, call: Callable[[BalancerGateway], Call[T]], *, read_only: bool) -> T:
        balancer = self._session.balancer
        attempt = 0
        while True:
            try:
                return await call(balancer)
            except GodelError as exc:
                step = policy.after_balancer_error(exc, attempt, read_only=read_only)
                if isinstance(step, policy.Raise):
                    raise
                await asyncio.sleep(step.delay_s)
            attempt += 1


class AsyncClusterRegistry(_AsyncBalanced):
    """``ClusterRegistry`` for asyncio code: the same methods, awaitable."""

    async def register(self, cluster: Cluster) -> ClusterInfo:
        return await self._write(lambda b: b.register_cluster(cluster))

    async def unregister(self, cluster_id: str, *, force: bool = False) -> None:
        await self._write(lambda b: b.unregister_cluster(cluster_id, force))
        self._session.drop_cluster(cluster_id)

    async def update(self, cluster_id: str, **changes: Any) -> ClusterInfo:
        return await self._write(lambda b: b.update_cluster(cluster_id, changes))

    async def list(self) -> builtins.list[ClusterInfo]:
        return await self._read(lambda b: b.list_clusters())

    async def get(self, cluster_id: str) -> ClusterInfo:
        return await self._read(lambda b: b.get_cluster(cluster_id))

    async def health(self) -> builtins.list[ClusterHealthState]:
        return await self._read(lambda b: b.health())

    async def stats(self) -> builtins.list[ClusterStats]:
        return await self._read(lambda b: b.stats())

    async def plan(self, config: SpawnConfig) -> PlacementDecision:
        return await self._read(lambda b: b.plan(config))

    async def maintenance(self, cluster_id: str, on: bool) -> ClusterInfo:
        return await self._write(lambda b: b.set_maintenance(cluster_id, on))

    async def regions(self) -> dict[str, builtins.list[str]]:
        return await self._read(lambda b: b.regions())

    async def drain(self, cluster_id: str, *, wait: bool = False, busy: BusyPolicy | str = BusyPolicy.WAIT,
              busy_timeout_s: float | None = None) -> DrainReport:
        """Every live agent moved off ``cluster_id`` live, the cluster left in maintenance; see
        ``ClusterRegistry.drain``."""
        policy, timeout_s = busy_policy(busy), busy_timeout(busy_timeout_s)
        return await self._write(lambda b: b.drain(cluster_id, wait, policy, timeout_s))


class AsyncTransparentClusterProxy(_AsyncBalanced):
    """The asyncio twin of ``TransparentClusterProxy`` (shares its session and caches)."""

    def __init__(self, session: Session) -> None:
        super().__init__(session)
        self.registry = AsyncClusterRegistry(session)

    # --- routing: the one asyncio shell around policy.AgentRoute ------------------------------------

    async def _locate(self, agent_id: str) -> policy.Location:
        cluster_id, epoch = await self._read(lambda b: b.locate(agent_id))
        return self._session.remember(agent_id, cluster_id, epoch)

    async def _hop(self, agent_id: str, send: policy.Send) -> Hop:
        if not send.direct:
            return self._session.hop(agent_id, send.location)
        hop = self._session.cached_hop(agent_id, send.location)
        if hop is not None:
            return hop
        local = self._session.cluster(send.location.cluster_id)
        return self._session.hop(agent_id, send.location, await local.agent_actor(agent_id, send.location.epoch))

    async def _routed(self, agent_id: str, attempt: Callable[[Hop], AsyncIterator[T]]) -> AsyncIterator[T]:
        """Yield what ``attempt(hop)`` yields, at wherever the agent lives now."""
        route = policy.AgentRoute(self._session.locations.get(agent_id))
        step: policy.Send | policy.Reroute | policy.Raise = route.start()
        while True:
            if isinstance(step, policy.Raise):
                raise step.error
            if isinstance(step, policy.Reroute):
                self._session.reroute(agent_id, step)
                step = route.located(await self._locate(agent_id))
                continue
            started = False
            try:
                async for item in attempt(await self._hop(agent_id, step)):
                    started = True
                    yield item
                return
            except GodelError as exc:
                step = route.failed(exc, started=started, direct=step.direct)

    # --- agents -----------------------------------------------------------------------------------

    async def spawn(self, config: SpawnConfig) -> Agent:
        agent = await self._write(lambda b: b.spawn(config))
        self._session.remember(agent.id, agent.cluster_id, agent.epoch)
        return agent

    async def exec(self, agent_id: str, command: str, *, timeout_s: float | None = None) -> ExecResult:
        """Run ``command`` and return its whole result, in one reply (collect mode)."""
        async def once(hop: Hop) -> AsyncIterator[ExecResult]:
            yield await hop.exec(command, timeout_s)

        results = [result async for result in self._routed(agent_id, once)]
        return results[0]

    def exec_stream(self, agent_id: str, command: str, *, timeout_s: float | None = None
                    ) -> AsyncIterator[ExecChunk]:
        """Output chunks as produced; the last carries ``result``."""
        return self._routed(agent_id, lambda hop: aiter(hop.exec_stream(command, timeout_s)))

    async def status(self, agent_id: str) -> Agent:
        return await self._read(lambda b: b.status(agent_id))

    async def list(self, *, status: AgentStatus | str | None = None, labels: dict[str, str] | None = None,
                   cluster: str | None = None, model: str | None = None) -> builtins.list[Agent]:
        return await self._read(lambda b: b.list_agents(status_value(status), labels, cluster, model))

    async def kill(self, agent_id: str) -> Agent:
        agent = await self._write(lambda b: b.kill(agent_id))
        self._session.forget(agent_id)
        return agent

    async def explain(self, agent_id: str) -> PlacementDecision:
        return await self._read(lambda b: b.explain(agent_id))

    async def journal(self, agent_id: str) -> builtins.list[JournalEntry]:
        return await self._read(lambda b: b.journal(agent_id))

    async def migrate(self, agent_id: str, target: str, *, wait: bool = True, interrupt: bool = False,
                busy_timeout_s: float | None = None, live_process: bool = False) -> Migration:
        """Move the agent to ``target``. A running command: by default the move freezes the agent at
        its first idle moment (it keeps serving commands until then; rolled back, nothing frozen,
        after ``busy_timeout_s``); ``interrupt`` stops the command instead (its caller gets
        ``CommandInterrupted``, its journal entry says so). ``live_process`` (opt-in, CRIU) would move
        the running command along; it is refused with the reason (``LiveProcessUnavailable``) where it
        cannot be done, which today is everywhere."""
        policy, timeout_s = move_policy(interrupt=interrupt, live_process=live_process), busy_timeout(busy_timeout_s)
        migration = await self._write(lambda b: b.migrate(agent_id, target, wait, policy, timeout_s))
        self._session.forget(agent_id)
        return migration

    async def migrations(self, agent_id: str | None = None) -> builtins.list[Migration]:
        return await self._read(lambda b: b.migrations(agent_id))

    async def _events_page(self, cursor: policy.EventCursor) -> builtins.list[FederationEvent]:
        return await self._read(lambda b: b.events_since(cursor.seq, cursor.page_size))

    async def events(self, since_seq: int = 0, *, follow: bool = False, poll_s: float = policy.EVENTS_POLL_S
                     ) -> AsyncIterator[FederationEvent]:
        """The event log after ``since_seq``; with ``follow``, keep waiting for new events."""
        cursor = policy.EventCursor(since_seq, follow=follow)
        while True:
            batch = await self._events_page(cursor)
            for event in batch:
                yield event
            page = cursor.advance(batch)
            if page is policy.Page.DONE:
                return
            if page is policy.Page.POLL:
                await asyncio.sleep(poll_s)


__all__ = ["AsyncClusterRegistry", "AsyncTransparentClusterProxy"]
