"""What users hold: ``connect()`` -> ``TransparentClusterProxy`` (sync) and its asyncio twin, the
``ClusterRegistry``, and ``StateReader`` (the CLI's light path: the state store, no Ray at all).

The hot path stays off the balancer: ``exec``/``exec_stream`` go straight to the owning
ClusterActor with the cached (cluster, epoch) of the agent; the balancer is asked only on a cache
miss, or when the cluster answers ``AgentMoved``/``StaleEpoch``/``AgentNotFound`` (the command did
not start), after which the call is retried at the new location.

Importing this module does not import Ray: ``connect`` does.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from godel_ray import settings
from godel_ray.errors import (
    AgentMoved,
    AgentNotFound,
    ClusterUnavailable,
    ControlPlaneNotRunning,
    StaleEpoch,
)
from godel_ray.models import (
    Agent,
    AgentStatus,
    Cluster,
    ClusterHealthState,
    ClusterInfo,
    ClusterStats,
    ExecChunk,
    ExecResult,
    FederationEvent,
    JournalEntry,
    Migration,
    PlacementDecision,
    SpawnConfig,
)

REROUTE_ATTEMPTS = 3  # re-resolutions of an agent's location before giving up
BALANCER_RETRY_ATTEMPTS = 5  # read-only calls while the balancer restarts
BALANCER_RETRY_DELAY_S = 0.5
EVENTS_PAGE = 1000
_REROUTE = (AgentMoved, StaleEpoch, AgentNotFound)


def connect(state_dir: str | os.PathLike[str] | None = None, *, address: str | None = None
            ) -> TransparentClusterProxy:
    """Attach to the running control plane (see the module docstring of ``controlplane``).

    Ray already initialised: use it. ``RAY_ADDRESS`` set (inside ``ray job submit``): attach to it.
    Else ``<state_dir>/control.json`` from ``swarmctl up``. No control plane: ``ControlPlaneNotRunning``.
    """
    import ray

    from godel_ray.control import controlplane, factory
    from godel_ray.raykit import rayapi

    root = settings.state_dir(state_dir)
    if not ray.is_initialized():
        if address is not None:
            head = controlplane.read_head(root)
            rayapi.init_client(address, head.env() if head is not None and head.address == address else {})
        elif os.environ.get("RAY_ADDRESS"):
            rayapi.init_client(os.environ["RAY_ADDRESS"], {})
        else:
            head = controlplane.read_head(root)
            if head is None:
                raise ControlPlaneNotRunning(f"no control plane at {root}: run `swarmctl up` first")
            rayapi.init_client(head.address, head.env())
    return TransparentClusterProxy(factory.balancer_handle(), root)


class _Core:
    """State shared by the sync proxy and its twin: the balancer handle and the caches."""

    def __init__(self, balancer: Any, state_dir: Any) -> None:
        self._balancer = balancer
        self.state_dir = state_dir
        self.locations: dict[str, tuple[str, int]] = {}
        self.cluster_actors: dict[str, Any] = {}

    @property
    def balancer(self) -> Any:
        _ensure_attached()
        return self._balancer

    def cluster_actor(self, cluster_id: str) -> Any:
        _ensure_attached()
        actor = self.cluster_actors.get(cluster_id)
        if actor is None:
            from godel_ray.control import factory

            actor = self.cluster_actors[cluster_id] = factory.cluster_actor_handle(cluster_id)
        return actor

    def forget(self, agent_id: str) -> None:
        self.locations.pop(agent_id, None)


def _ensure_attached() -> None:
    """Refuse to call through handles once this process left Ray (``swarmctl down`` in-process, or
    ``ray.shutdown()``): a Ray call would silently start a new, empty local Ray instead."""
    import ray

    if not ray.is_initialized():
        raise ControlPlaneNotRunning("this process is no longer attached to the control plane: call "
                                     "godel_ray.connect() again (after `swarmctl up`)")


def _status_value(status: AgentStatus | str | None) -> str | None:
    if status is None:
        return None
    return AgentStatus(status).value


# --- sync -----------------------------------------------------------------------------------------

class _SyncBalancer:
    def __init__(self, core: _Core) -> None:
        self._core = core

    def _call(self, method: str, *args: Any, retry: bool = False, **kwargs: Any) -> Any:
        """Call the balancer; read-only calls (``retry``) wait out a balancer restart."""
        from godel_ray.raykit import rayapi

        attempts = BALANCER_RETRY_ATTEMPTS if retry else 1
        for attempt in range(attempts):
            try:
                with rayapi.mapped(rayapi.BALANCER_WHAT):  # .remote() itself fails for a gone actor
                    ref = getattr(self._core.balancer, method).remote(*args, **kwargs)
                return rayapi.get(ref, what=rayapi.BALANCER_WHAT)
            except ControlPlaneNotRunning:
                if attempt == attempts - 1:
                    raise
                time.sleep(BALANCER_RETRY_DELAY_S)
        raise AssertionError("unreachable")  # pragma: no cover


class ClusterRegistry(_SyncBalancer):
    """The federation's clusters (every call goes to the balancer)."""

    def register(self, cluster: Cluster) -> ClusterInfo:
        """Probe the endpoint with a heartbeat using the token file, then register.

        Unreachable, wrong token, duplicate id: an error, and nothing registered."""
        info: ClusterInfo = self._call("register_cluster", cluster)
        return info

    def unregister(self, cluster_id: str, *, force: bool = False) -> None:
        self._call("unregister_cluster", cluster_id, force)
        self._core.cluster_actors.pop(cluster_id, None)

    def update(self, cluster_id: str, **changes: Any) -> ClusterInfo:
        """Change registry fields (``max_agents``, ``cost_per_hour``, ``load_threshold``, ``health`` ...)."""
        info: ClusterInfo = self._call("update_cluster", cluster_id, changes)
        return info

    def list(self) -> builtins.list[ClusterInfo]:
        return list(self._call("list_clusters", retry=True))

    def get(self, cluster_id: str) -> ClusterInfo:
        info: ClusterInfo = self._call("get_cluster", cluster_id, retry=True)
        return info

    def health(self) -> builtins.list[ClusterHealthState]:
        return list(self._call("health", retry=True))

    def stats(self) -> builtins.list[ClusterStats]:
        return list(self._call("stats", retry=True))

    def plan(self, config: SpawnConfig) -> PlacementDecision:
        decision: PlacementDecision = self._call("plan", config, retry=True)
        return decision

    def maintenance(self, cluster_id: str, on: bool) -> ClusterInfo:
        info: ClusterInfo = self._call("set_maintenance", cluster_id, on)
        return info

    def regions(self) -> dict[str, builtins.list[str]]:
        return dict(self._call("regions", retry=True))


class TransparentClusterProxy(_SyncBalancer):
    """The user's handle on the federation. Methods raise GodelErrors, never Ray's exceptions."""

    def __init__(self, balancer: Any, state_dir: Any = None) -> None:
        super().__init__(_Core(balancer, state_dir))
        self.registry = ClusterRegistry(self._core)

    # --- location ---------------------------------------------------------------------------------

    def _locate(self, agent_id: str, *, refresh: bool = False) -> tuple[str, int]:
        if refresh:
            self._core.forget(agent_id)
        location = self._core.locations.get(agent_id)
        if location is None:
            cluster_id, epoch = self._call("locate", agent_id, retry=True)
            location = self._core.locations[agent_id] = (str(cluster_id), int(epoch))
        return location

    # --- agents -----------------------------------------------------------------------------------

    def spawn(self, config: SpawnConfig) -> Agent:
        agent: Agent = self._call("spawn", config)
        self._core.locations[agent.id] = (agent.cluster_id, agent.epoch)
        return agent

    def exec(self, agent_id: str, command: str, *, timeout_s: float | None = None) -> ExecResult:
        from godel_ray.raykit import rayapi

        for attempt in range(REROUTE_ATTEMPTS + 1):
            cluster_id, epoch = self._locate(agent_id, refresh=attempt > 0)
            try:
                with rayapi.mapped(f"cluster {cluster_id}"):  # .remote() itself fails for a gone actor
                    ref = self._core.cluster_actor(cluster_id).exec.remote(agent_id, command, timeout_s=timeout_s,
                                                                           epoch=epoch)
                result: ExecResult = rayapi.get(ref, what=f"cluster {cluster_id}")
                return result
            except _REROUTE:
                if attempt == REROUTE_ATTEMPTS:
                    raise
            except ClusterUnavailable:
                self._core.cluster_actors.pop(cluster_id, None)
                if attempt == REROUTE_ATTEMPTS or self._locate(agent_id, refresh=True) == (cluster_id, epoch):
                    raise  # still placed there: the cluster is down, not the agent moved (failover)
        raise AssertionError("unreachable")  # pragma: no cover

    def exec_stream(self, agent_id: str, command: str, *, timeout_s: float | None = None
                    ) -> Iterator[ExecChunk]:
        """Output chunks as produced; the last carries ``result``."""
        from godel_ray.raykit import rayapi

        for attempt in range(REROUTE_ATTEMPTS + 1):
            cluster_id, epoch = self._locate(agent_id, refresh=attempt > 0)
            what = f"cluster {cluster_id}"
            started = False
            try:
                with rayapi.mapped(what):
                    gen = self._core.cluster_actor(cluster_id).exec_stream.options(
                        num_returns="streaming").remote(agent_id, command, timeout_s=timeout_s, epoch=epoch)
                    for ref in gen:
                        chunk: ExecChunk = rayapi.get(ref, what=what)
                        started = True
                        yield chunk
                return
            except _REROUTE:
                if started or attempt == REROUTE_ATTEMPTS:
                    raise
            except ClusterUnavailable:
                self._core.cluster_actors.pop(cluster_id, None)
                if (started or attempt == REROUTE_ATTEMPTS
                        or self._locate(agent_id, refresh=True) == (cluster_id, epoch)):
                    raise

    def status(self, agent_id: str) -> Agent:
        agent: Agent = self._call("status", agent_id, retry=True)
        return agent

    def list(self, *, status: AgentStatus | str | None = None, labels: dict[str, str] | None = None,
             cluster: str | None = None, model: str | None = None) -> builtins.list[Agent]:
        return list(self._call("list_agents", _status_value(status), labels, cluster, model, retry=True))

    def kill(self, agent_id: str) -> Agent:
        agent: Agent = self._call("kill", agent_id)
        self._core.forget(agent_id)
        return agent

    def explain(self, agent_id: str) -> PlacementDecision:
        decision: PlacementDecision = self._call("explain", agent_id, retry=True)
        return decision

    def journal(self, agent_id: str) -> builtins.list[JournalEntry]:
        return list(self._call("journal", agent_id, retry=True))

    def migrate(self, agent_id: str, target: str, *, wait: bool = True) -> Migration:
        migration: Migration = self._call("migrate", agent_id, target, wait)
        self._core.forget(agent_id)
        return migration

    def migrations(self, agent_id: str | None = None) -> builtins.list[Migration]:
        return list(self._call("migrations", agent_id, retry=True))

    def events(self, since_seq: int = 0, *, follow: bool = False, poll_s: float = 0.5
               ) -> Iterator[FederationEvent]:
        seq = since_seq
        while True:
            batch: builtins.list[FederationEvent] = self._call("events_since", seq, EVENTS_PAGE, retry=True)
            yield from batch
            if batch:
                seq = batch[-1].seq
            if len(batch) == EVENTS_PAGE:
                continue
            if not follow:
                return
            time.sleep(poll_s)

    def aio(self) -> AsyncTransparentClusterProxy:
        return AsyncTransparentClusterProxy(self._core)


# --- asyncio twin ---------------------------------------------------------------------------------

class _AsyncBalancer:
    def __init__(self, core: _Core) -> None:
        self._core = core

    async def _call(self, method: str, *args: Any, retry: bool = False, **kwargs: Any) -> Any:
        from godel_ray.raykit import rayapi

        attempts = BALANCER_RETRY_ATTEMPTS if retry else 1
        for attempt in range(attempts):
            try:
                with rayapi.mapped(rayapi.BALANCER_WHAT):
                    return await getattr(self._core.balancer, method).remote(*args, **kwargs)
            except ControlPlaneNotRunning:
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(BALANCER_RETRY_DELAY_S)
        raise AssertionError("unreachable")  # pragma: no cover


class AsyncClusterRegistry(_AsyncBalancer):
    """``ClusterRegistry`` for asyncio code: the same methods, awaitable."""

    async def register(self, cluster: Cluster) -> ClusterInfo:
        info: ClusterInfo = await self._call("register_cluster", cluster)
        return info

    async def unregister(self, cluster_id: str, *, force: bool = False) -> None:
        await self._call("unregister_cluster", cluster_id, force)
        self._core.cluster_actors.pop(cluster_id, None)

    async def update(self, cluster_id: str, **changes: Any) -> ClusterInfo:
        info: ClusterInfo = await self._call("update_cluster", cluster_id, changes)
        return info

    async def list(self) -> builtins.list[ClusterInfo]:
        return list(await self._call("list_clusters", retry=True))

    async def get(self, cluster_id: str) -> ClusterInfo:
        info: ClusterInfo = await self._call("get_cluster", cluster_id, retry=True)
        return info

    async def health(self) -> builtins.list[ClusterHealthState]:
        return list(await self._call("health", retry=True))

    async def stats(self) -> builtins.list[ClusterStats]:
        return list(await self._call("stats", retry=True))

    async def plan(self, config: SpawnConfig) -> PlacementDecision:
        decision: PlacementDecision = await self._call("plan", config, retry=True)
        return decision

    async def maintenance(self, cluster_id: str, on: bool) -> ClusterInfo:
        info: ClusterInfo = await self._call("set_maintenance", cluster_id, on)
        return info

    async def regions(self) -> dict[str, builtins.list[str]]:
        return dict(await self._call("regions", retry=True))


class AsyncTransparentClusterProxy(_AsyncBalancer):
    """The asyncio twin of ``TransparentClusterProxy`` (shares its caches)."""

    def __init__(self, core: _Core) -> None:
        super().__init__(core)
        self.registry = AsyncClusterRegistry(core)

    async def _locate(self, agent_id: str, *, refresh: bool = False) -> tuple[str, int]:
        if refresh:
            self._core.forget(agent_id)
        location = self._core.locations.get(agent_id)
        if location is None:
            cluster_id, epoch = await self._call("locate", agent_id, retry=True)
            location = self._core.locations[agent_id] = (str(cluster_id), int(epoch))
        return location

    async def spawn(self, config: SpawnConfig) -> Agent:
        agent: Agent = await self._call("spawn", config)
        self._core.locations[agent.id] = (agent.cluster_id, agent.epoch)
        return agent

    async def exec(self, agent_id: str, command: str, *, timeout_s: float | None = None) -> ExecResult:
        from godel_ray.raykit import rayapi

        for attempt in range(REROUTE_ATTEMPTS + 1):
            cluster_id, epoch = await self._locate(agent_id, refresh=attempt > 0)
            try:
                with rayapi.mapped(f"cluster {cluster_id}"):
                    result: ExecResult = await self._core.cluster_actor(cluster_id).exec.remote(
                        agent_id, command, timeout_s=timeout_s, epoch=epoch)
                return result
            except _REROUTE:
                if attempt == REROUTE_ATTEMPTS:
                    raise
            except ClusterUnavailable:
                self._core.cluster_actors.pop(cluster_id, None)
                if attempt == REROUTE_ATTEMPTS or await self._locate(agent_id, refresh=True) == (cluster_id, epoch):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def exec_stream(self, agent_id: str, command: str, *, timeout_s: float | None = None
                          ) -> AsyncIterator[ExecChunk]:
        from godel_ray.raykit import rayapi

        for attempt in range(REROUTE_ATTEMPTS + 1):
            cluster_id, epoch = await self._locate(agent_id, refresh=attempt > 0)
            started = False
            try:
                with rayapi.mapped(f"cluster {cluster_id}"):
                    gen = self._core.cluster_actor(cluster_id).exec_stream.options(
                        num_returns="streaming").remote(agent_id, command, timeout_s=timeout_s, epoch=epoch)
                    async for ref in gen:
                        chunk: ExecChunk = await ref
                        started = True
                        yield chunk
                return
            except _REROUTE:
                if started or attempt == REROUTE_ATTEMPTS:
                    raise
            except ClusterUnavailable:
                self._core.cluster_actors.pop(cluster_id, None)
                if (started or attempt == REROUTE_ATTEMPTS
                        or await self._locate(agent_id, refresh=True) == (cluster_id, epoch)):
                    raise

    async def status(self, agent_id: str) -> Agent:
        agent: Agent = await self._call("status", agent_id, retry=True)
        return agent

    async def list(self, *, status: AgentStatus | str | None = None, labels: dict[str, str] | None = None,
                   cluster: str | None = None, model: str | None = None) -> builtins.list[Agent]:
        return list(await self._call("list_agents", _status_value(status), labels, cluster, model, retry=True))

    async def kill(self, agent_id: str) -> Agent:
        agent: Agent = await self._call("kill", agent_id)
        self._core.forget(agent_id)
        return agent

    async def explain(self, agent_id: str) -> PlacementDecision:
        decision: PlacementDecision = await self._call("explain", agent_id, retry=True)
        return decision

    async def journal(self, agent_id: str) -> builtins.list[JournalEntry]:
        return list(await self._call("journal", agent_id, retry=True))

    async def migrate(self, agent_id: str, target: str, *, wait: bool = True) -> Migration:
        migration: Migration = await self._call("migrate", agent_id, target, wait)
        self._core.forget(agent_id)
        return migration

    async def migrations(self, agent_id: str | None = None) -> builtins.list[Migration]:
        return list(await self._call("migrations", agent_id, retry=True))

    async def events(self, since_seq: int = 0, *, follow: bool = False, poll_s: float = 0.5
                     ) -> AsyncIterator[FederationEvent]:
        seq = since_seq
        while True:
            batch: builtins.list[FederationEvent] = await self._call("events_since", seq, EVENTS_PAGE, retry=True)
            for event in batch:
                yield event
            if batch:
                seq = batch[-1].seq
            if len(batch) == EVENTS_PAGE:
                continue
            if not follow:
                return
            await asyncio.sleep(poll_s)


# --- the light path -------------------------------------------------------------------------------

class StateReader:
    """Read the control plane's state store directly: no Ray, for fast CLI reads.

    What it shows is what the balancer last wrote (health at most ``CONTROL_LOOP_INTERVAL_S`` old).
    """

    def __init__(self, state_dir: str | os.PathLike[str] | None = None) -> None:
        from godel_ray.control.store import open_store

        self.state_dir = settings.state_dir(state_dir)
        self._store = open_store(self.state_dir, readonly=True)

    def close(self) -> None:
        self._store.close()

    def _health(self, cluster_id: str) -> ClusterHealthState:
        return self._store.health(cluster_id) or ClusterHealthState(cluster_id=cluster_id)

    def clusters(self) -> builtins.list[ClusterInfo]:
        counts = self._store.active_counts()
        return [ClusterInfo(cluster=c, health=self._health(c.id), agents=counts.get(c.id, 0))
                for c in self._store.clusters()]

    def agents(self, *, status: AgentStatus | str | None = None, labels: dict[str, str] | None = None,
               cluster: str | None = None, model: str | None = None) -> builtins.list[Agent]:
        return self._store.agents(cluster_id=cluster, status=status, labels=labels, model=model)

    def agent(self, agent_id: str) -> Agent:
        return self._store.require_agent(agent_id)

    def decision(self, agent_id: str) -> PlacementDecision:
        self.agent(agent_id)
        decision = self._store.decision(agent_id)
        if decision is None:
            raise AgentNotFound(f"no placement decision is recorded for agent {agent_id!r}", agent_id=agent_id)
        return decision

    def migrations(self, agent_id: str | None = None) -> builtins.list[Migration]:
        return self._store.migrations(agent_id)

    def events(self, since_seq: int = 0, limit: int = 1000) -> builtins.list[FederationEvent]:
        return self._store.events(since_seq, limit)

    def health(self) -> builtins.list[ClusterHealthState]:
        return [self._health(c.id) for c in self._store.clusters()]


__all__ = ["AsyncClusterRegistry", "AsyncTransparentClusterProxy", "ClusterRegistry", "StateReader",
           "TransparentClusterProxy", "connect"]
