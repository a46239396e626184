"""``AgentRuntime``: the ``ClusterClient`` that hosts agents on the Ray cluster this process is attached to.

Shared by the ``local`` ClusterActor and every site server: one code path hosts agents. It keeps
the agent table (id -> actor handle + last known ``Agent``), the idempotency keys, the event log,
and enforces epochs (fencing), ``max_agents`` and spawn validation.

Invariants:
- spawning never leaves a half-created agent: the request is validated and checked against the
  nodes' total resources before an actor exists, and an actor that does not become ready within
  ``ready_timeout_s`` is killed and its table entry removed;
- an agent's status only moves forward to a final status; a killed agent stays listed (final)
  so its status can still be read, and its id can be reused by an import with a newer epoch;
- an operation with ``epoch != 0`` that is not the agent's epoch raises ``StaleEpoch``;
- the event log records ``agent.spawned``, ``agent.status``, ``command.started``,
  ``command.finished``, ``agent.exported``, ``agent.imported`` and ``agent.killed``.

Runs on one asyncio event loop (the caller's); Ray calls are awaited, never blocking ``ray.get``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import ray
import ray.exceptions as rex

from godel_ray import settings
from godel_ray.agents import snapshot as snap
from godel_ray.agents.actor import GPU_TYPE_RESOURCE_UNITS, create_agent_actor
from godel_ray.agents.pool import WarmPool, normalise_gpu_type, pool_sizes
from godel_ray.core.cluster_client import KILL_REASON_MIGRATED
from godel_ray.core.events import EventLog
from godel_ray.core.validation import (
    validate_agent_id,
    validate_command,
    validate_exec_timeout,
    validate_spawn_config,
)
from godel_ray.errors import (
    AgentMoved,
    AgentNotFound,
    AgentNotRunning,
    AlreadyExists,
    ClusterUnavailable,
    GodelError,
    ResourceExhausted,
    StaleEpoch,
)
from godel_ray.models import (
    LOCAL_CLUSTER_ID,
    Agent,
    AgentSnapshot,
    AgentStatus,
    EventKind,
    EventType,
    ExecChunk,
    FederationEvent,
    JournalEntry,
    SiteCapacity,
    SpawnConfig,
    new_agent_id,
    now_s,
)
from godel_ray.raykit import rayapi
from godel_ray.settings import LIMITS, Limits

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0  # an actor not ready by then is killed: its resources are busy or gone
TERMINATE_TIMEOUT_S = 15.0
EVENT_WAIT_S = 30.0
GPU_TYPE_PREFIX = "accelerator_type:"
LOCAL_WARM_POOL_ENV = "GODEL_LOCAL_WARM_POOL"  # warm pool size of the ``local`` runtime when not given


def default_warm_pool_size(name: str) -> int:
    """``$GODEL_LOCAL_WARM_POOL`` for the runtime named ``local``; 0 otherwise (or when unset/invalid)."""
    raw = os.environ.get(LOCAL_WARM_POOL_ENV, "") if name == LOCAL_CLUSTER_ID else ""
    try:
        return max(0, int(raw)) if raw.strip() else 0
    except ValueError:
        log.warning("ignoring %s=%r: not an integer", LOCAL_WARM_POOL_ENV, raw)
        return 0


def resolve_gpu_type(requested: str, advertised: list[str]) -> str | None:
    """The advertised spelling of ``requested`` (case-insensitive, optional ``nvidia-``), or None."""
    for name in advertised:
        if name == requested:
            return name
    wanted = normalise_gpu_type(requested)
    for name in sorted(advertised):
        if normalise_gpu_type(name) == wanted:
            return name
    return None


def gpu_types_of(resources: dict[str, float]) -> list[str]:
    return sorted(k[len(GPU_TYPE_PREFIX):] for k, v in resources.items()
                  if k.startswith(GPU_TYPE_PREFIX) and v > 0)


def placement_problem(config: SpawnConfig, nodes: list[dict[str, float]]) -> tuple[str | None, str | None]:
    """Check ``config`` against each alive node's TOTAL resources.

    Returns ``(problem, accelerator_type)``: ``problem`` is None when some node could host the
    agent, else a sentence naming what is missing; ``accelerator_type`` is the GPU type as the
    cluster spells it (None for no type).
    """
    advertised = sorted({t for node in nodes for t in gpu_types_of(node)})
    accel: str | None = None
    if config.needs_gpu and config.gpu_type:
        accel = resolve_gpu_type(config.gpu_type, advertised)
        if accel is None:
            have = ", ".join(advertised) or "none"
            return (f"no node has GPU type {config.gpu_type!r} (GPU types here: {have})", None)
    for node in nodes:
        if node.get("CPU", 0.0) < config.cpus:
            continue
        if node.get("GPU", 0.0) < config.num_gpus:
            continue
        if accel and node.get(GPU_TYPE_PREFIX + accel, 0.0) <= 0:
            continue
        return None, accel
    want = f"{config.cpus:g} CPUs"
    if config.needs_gpu:
        want += f" and {config.num_gpus} GPU(s)" + (f" of type {accel}" if accel else "")
    biggest = max(((n.get("CPU", 0.0), n.get("GPU", 0.0)) for n in nodes), default=(0.0, 0.0))
    return (f"no node has {want} (largest node: {biggest[0]:g} CPUs, {biggest[1]:g} GPUs)", accel)


@dataclass
class _Entry:
    agent: Agent
    handle: Any = None  # the AgentActor handle; None once it is gone
    journal: list[JournalEntry] = field(default_factory=list)  # last known, kept after the actor ends
    moved: bool = False
    watcher: asyncio.Task[None] | None = None


class AgentRuntime:
    """Hosts agents as ``AgentActor``s on the current Ray cluster; implements ``ClusterClient``."""

    def __init__(self, name: str, workdir_root: str, *, region: str = "", cost_per_hour: float = 0.0,
                 max_agents: int = 100, limits: Limits = LIMITS,
                 ready_timeout_s: float = READY_TIMEOUT_S, warm_pool_size: int | None = None,
                 warm_pool_gpu: dict[str, int] | None = None) -> None:
        self.name = name
        self.workdir_root = workdir_root
        self.region = region
        self.cost_per_hour = cost_per_hour
        self.max_agents = max_agents
        self._limits = limits
        self._ready_timeout_s = ready_timeout_s
        self._agents: dict[str, _Entry] = {}
        self._idempotency: dict[str, str] = {}  # key -> agent id
        self._key_locks: dict[str, asyncio.Lock] = {}
        self._log = EventLog()
        self._closed = False
        if warm_pool_size is None:
            warm_pool_size = default_warm_pool_size(name)
        self.pool = WarmPool(name, workdir_root, pool_sizes(warm_pool_size, warm_pool_gpu), limits=limits,
                             ready_timeout_s=ready_timeout_s)

    # --- helpers -----------------------------------------------------------------------------

    def _emit(self, type_: str, agent_id: str = "", kind: EventKind = EventKind.AGENT,
              **data: object) -> None:
        self._log.append(FederationEvent(kind=kind, type=type_, cluster_id=self.name, agent_id=agent_id,
                                         data={k: str(v) for k, v in data.items()}))

    def _entry(self, agent_id: str, epoch: int = 0) -> _Entry:
        entry = self._agents.get(agent_id)
        if entry is None:
            raise AgentNotFound(f"agent {agent_id} is not on cluster {self.name}", agent_id=agent_id,
                                cluster_id=self.name)
        if epoch and epoch != entry.agent.epoch:
            raise StaleEpoch(f"agent {agent_id} is at epoch {entry.agent.epoch} here, not {epoch}: "
                             "this copy was superseded; resolve the agent's location again",
                             agent_id=agent_id, epoch=entry.agent.epoch)
        return entry

    def _live(self, agent_id: str, epoch: int = 0) -> _Entry:
        entry = self._entry(agent_id, epoch)
        if entry.moved:
            raise AgentMoved(f"agent {agent_id} was migrated away from cluster {self.name}",
                             agent_id=agent_id, cluster_id=self.name)
        if entry.agent.status.is_final or entry.handle is None:
            reason = f" ({entry.agent.status_reason})" if entry.agent.status_reason else ""
            raise AgentNotRunning(f"agent {agent_id} is {entry.agent.status.value}{reason}",
                                  agent_id=agent_id, status=entry.agent.status.value)
        return entry

    def _set_agent(self, entry: _Entry, agent: Agent) -> None:
        """Record a fresh view of the agent; emit ``agent.status`` when the status changed."""
        before = entry.agent.status
        if before.is_final and not agent.status.is_final:
            return  # a late answer from before the end: final statuses never move back
        agent = agent.model_copy(update={"cluster_id": self.name})
        entry.agent = agent
        if agent.status != before:
            self._emit(EventType.AGENT_STATUS, agent.id, status=agent.status.value, reason=agent.status_reason)

    def _error(self, entry: _Entry, exc: BaseException) -> GodelError:
        """Map a Ray failure of ``entry``'s actor into the GodelError tree (one place)."""
        if isinstance(exc, rex.ActorUnavailableError):
            return ClusterUnavailable(f"agent {entry.agent.id} is unreachable right now; retry",
                                      agent_id=entry.agent.id, cluster_id=self.name)
        if isinstance(exc, rex.RayActorError) and not isinstance(exc, rex.RayTaskError):
            if entry.moved:
                return AgentMoved(f"agent {entry.agent.id} was migrated away from cluster {self.name}",
                                  agent_id=entry.agent.id, cluster_id=self.name)
            if not entry.agent.status.is_final:
                died = entry.agent.model_copy(update={
                    "status": AgentStatus.FAILED, "finished_at": now_s(),
                    "status_reason": f"agent process died: {str(exc).strip().splitlines()[0][:200]}"})
                self._set_agent(entry, died)
                entry.handle = None
            return AgentNotRunning(f"agent {entry.agent.id} is {entry.agent.status.value} "
                                   f"({entry.agent.status_reason})", agent_id=entry.agent.id,
                                   status=entry.agent.status.value)
        err = rayapi.translate(exc, f"agent {entry.agent.id}")
        if err is None:
            raise exc
        return err

    async def _call(self, entry: _Entry, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        handle = entry.handle
        if handle is None:
            raise AgentNotRunning(f"agent {entry.agent.id} is {entry.agent.status.value}",
                                  agent_id=entry.agent.id)
        try:
            ref = getattr(handle, method).remote(*args)
            return await (asyncio.wait_for(ref, timeout_s) if timeout_s else ref)
        except rex.RayError as exc:  # before GodelError: Ray's dual RayTaskError(GodelError) is both
            raise self._error(entry, exc) from None

    async def _resources(self) -> tuple[list[dict[str, float]], dict[str, float], dict[str, float]]:
        def read() -> tuple[list[dict[str, float]], dict[str, float], dict[str, float]]:
            alive = [n for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]
            total = ray.cluster_resources()  # type: ignore[no-untyped-call]
            free = ray.available_resources()  # type: ignore[no-untyped-call]
            return [dict(n.get("Resources", {})) for n in alive], total, free

        with rayapi.mapped("ray cluster"):
            return await asyncio.to_thread(read)

    def _active_count(self) -> int:
        return sum(1 for e in self._agents.values() if not e.agent.status.is_final)

    # --- creation ----------------------------------------------------------------------------

    async def _create(self, agent: Agent, archive: bytes | None = None, sha256: str = "",
                      journal: list[JournalEntry] | None = None) -> Agent:
        """Create and start the actor for ``agent``; on any failure nothing is left behind."""
        if self._closed:
            raise AgentNotRunning(f"the agent runtime of cluster {self.name} is closed")
        previous = self._agents.get(agent.id)
        if previous is not None and not previous.agent.status.is_final:
            raise AlreadyExists(f"agent {agent.id} already exists on cluster {self.name}", agent_id=agent.id)
        if previous is not None and agent.epoch < previous.agent.epoch:
            raise StaleEpoch(f"agent {agent.id} was at epoch {previous.agent.epoch} here; refusing "
                             f"epoch {agent.epoch}", agent_id=agent.id, epoch=previous.agent.epoch)
        if self._active_count() >= self.max_agents:
            raise ResourceExhausted(f"cluster {self.name} already runs its maximum of {self.max_agents} "
                                    "agents: kill some or raise --max-agents", cluster_id=self.name)
        self.pool.start()
        agent = agent.model_copy(update={"cluster_id": self.name, "status": AgentStatus.PENDING,
                                         "status_reason": "", "finished_at": None})
        claimed = self.pool.claim(agent.config)  # a pre-started actor with exactly these resources
        if claimed is not None:
            entry = _Entry(agent=agent, journal=list(journal or []), handle=claimed[0])
            self._agents[agent.id] = entry
            try:
                started = await self._call(entry, "adopt", agent, self.workdir_root, archive, journal, sha256,
                                           timeout_s=self._ready_timeout_s)
            except (GodelError, TimeoutError) as exc:  # the member died meanwhile: start a fresh actor
                log.warning("agent %s: warm-pool actor unusable (%s); starting a fresh one", agent.id, exc)
                with contextlib.suppress(Exception):
                    ray.kill(claimed[0], no_restart=True)
                self._agents.pop(agent.id, None)
                if previous is not None:
                    self._agents[agent.id] = previous
            except BaseException:
                with contextlib.suppress(Exception):
                    ray.kill(claimed[0], no_restart=True)
                self._restore(agent.id, previous)
                raise
            else:
                return self._started(entry, started)
        nodes, _, free = await self._resources()
        problem, accel = placement_problem(agent.config, nodes)
        if problem is not None:
            raise ResourceExhausted(f"cannot place agent {agent.id} on cluster {self.name}: {problem}",
                                    cluster_id=self.name, agent_id=agent.id)
        if self.pool.must_evict_for(free.get("CPU", 0.0), free.get("GPU", 0.0), agent.config.cpus,
                                    agent.config.num_gpus):
            await self.pool.evict(agent.config.cpus - free.get("CPU", 0.0),
                                  max(0, agent.config.num_gpus - int(free.get("GPU", 0.0))))
        entry = _Entry(agent=agent, journal=list(journal or []))
        self._agents[agent.id] = entry  # reserves a max_agents slot while the actor starts
        try:
            with rayapi.mapped(f"agent {agent.id}"):
                entry.handle = create_agent_actor(agent, self.workdir_root, archive, journal, sha256=sha256,
                                                  accelerator_type=accel, limits=self._limits)
            try:
                started = await self._call(entry, "start", timeout_s=self._ready_timeout_s)
            except TimeoutError:
                raise ResourceExhausted(
                    f"agent {agent.id} was not placed within {self._ready_timeout_s:g} s on cluster "
                    f"{self.name}: the resources it needs ({_wants(agent.config, accel)}) exist but are busy",
                    cluster_id=self.name, agent_id=agent.id) from None
        except BaseException:
            if entry.handle is not None:
                with contextlib.suppress(Exception):
                    ray.kill(entry.handle, no_restart=True)
            self._restore(agent.id, previous)
            raise
        return self._started(entry, started)

    def _restore(self, agent_id: str, previous: _Entry | None) -> None:
        if previous is not None:
            self._agents[agent_id] = previous
        else:
            self._agents.pop(agent_id, None)

    def _started(self, entry: _Entry, started: Agent) -> Agent:
        entry.agent = started.model_copy(update={"cluster_id": self.name})
        entry.watcher = asyncio.create_task(self._watch(entry, entry.handle))
        return entry.agent

    async def _watch(self, entry: _Entry, handle: Any) -> None:
        """Notice an agent ending by itself (lifetime) or dying; release its actor."""
        try:
            done = await handle.wait_done.remote()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the actor ends the watch
            if entry.handle is handle and not entry.agent.status.is_final:
                self._error(entry, exc)
            return
        if entry.handle is not handle or entry.agent.status.is_final:
            return  # killed through the runtime: kill() did the bookkeeping
        self._set_agent(entry, done)
        await self._release(entry, done.status_reason)

    async def _release(self, entry: _Entry, reason: str) -> None:
        """Terminate and kill the actor (idempotent); keep the journal and final status."""
        handle, entry.handle = entry.handle, None
        if handle is None:
            return
        try:
            entry.journal = await asyncio.wait_for(handle.journal.remote(), TERMINATE_TIMEOUT_S)
            final = await asyncio.wait_for(handle.terminate.remote(reason), TERMINATE_TIMEOUT_S)
            self._set_agent(entry, final)
        except Exception as exc:  # noqa: BLE001 - already dead, or not answering: kill it regardless
            log.warning("agent %s: terminate failed (%s); killing its actor", entry.agent.id, exc)
        finally:
            with contextlib.suppress(Exception):
                ray.kill(handle, no_restart=True)

    # --- ClusterClient -------------------------------------------------------------------------

    async def spawn(self, config: SpawnConfig, *, agent_id: str | None = None,
                    idempotency_key: str | None = None, epoch: int = 1) -> tuple[Agent, bool]:
        validate_spawn_config(config, self._limits)
        agent_id = validate_agent_id(agent_id) if agent_id else new_agent_id()
        key = idempotency_key or config.idempotency_key
        if not key:
            agent = await self._create(Agent(id=agent_id, config=config, epoch=max(epoch, 1)))
            self._emit(EventType.AGENT_SPAWNED, agent.id, model=config.model, node_id=agent.node_id)
            return agent, True
        lock = self._key_locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key in self._idempotency and self._idempotency[key] in self._agents:
                return await self.status(self._idempotency[key]), False
            agent = await self._create(Agent(id=agent_id, config=config, epoch=max(epoch, 1)))
            self._idempotency[key] = agent.id
            self._emit(EventType.AGENT_SPAWNED, agent.id, model=config.model, node_id=agent.node_id)
            return agent, True

    async def kill(self, agent_id: str, *, epoch: int = 0, reason: str = "") -> Agent:
        entry = self._entry(agent_id, epoch)
        if reason == KILL_REASON_MIGRATED:
            entry.moved = True
        if entry.handle is None:
            return entry.agent  # already ended: idempotent
        if entry.watcher is not None:
            entry.watcher.cancel()
        await self._release(entry, reason or "killed")
        if entry.handle is None and not entry.agent.status.is_final:
            # terminate did not answer: record the end ourselves
            self._set_agent(entry, entry.agent.model_copy(update={
                "status": AgentStatus.TERMINATED, "status_reason": reason or "killed",
                "finished_at": now_s()}))
        self._emit(EventType.AGENT_KILLED, agent_id, reason=reason or "killed")
        return entry.agent

    async def exec_stream(self, agent_id: str, command: str, *, timeout_s: float | None = None,
                          epoch: int = 0) -> AsyncIterator[ExecChunk]:
        validate_command(command, self._limits)
        timeout = validate_exec_timeout(timeout_s, self._limits)
        entry = self._live(agent_id, epoch)
        self._emit(EventType.COMMAND_STARTED, agent_id, EventKind.COMMAND, command=command[:200])
        finished = False
        stream = entry.handle.exec.options(num_returns="streaming").remote(command, timeout)
        try:
            async for ref in stream:
                chunk: ExecChunk = await ref
                if chunk.result is not None:
                    finished = True
                    self._emit(EventType.COMMAND_FINISHED, agent_id, EventKind.COMMAND,
                               exit_code=chunk.result.exit_code, duration_s=f"{chunk.result.duration_s:.3f}",
                               timed_out=chunk.result.timed_out)
                yield chunk
        except rex.RayError as exc:  # before GodelError: Ray's dual RayTaskError(GodelError) is both
            finished = True
            raise self._error(entry, exc) from None
        finally:
            if not finished:  # the caller went away mid-command: stop it (its process group dies)
                with contextlib.suppress(Exception):
                    ray.cancel(stream)

    async def status(self, agent_id: str) -> Agent:
        entry = self._entry(agent_id)
        if entry.handle is not None and not entry.agent.status.is_final:
            with contextlib.suppress(GodelError):
                self._set_agent(entry, await self._call(entry, "info"))
        return entry.agent

    async def list_agents(self, status: AgentStatus | None = None,
                          labels: dict[str, str] | None = None) -> list[Agent]:
        out = []
        for entry in self._agents.values():
            agent = entry.agent
            if status is not None and agent.status != status:
                continue
            if labels and any(agent.config.labels.get(k) != v for k, v in labels.items()):
                continue
            out.append(agent)
        return sorted(out, key=lambda a: (a.created_at, a.id))

    async def heartbeat(self) -> SiteCapacity:
        """Capacity; resources held by idle warm-pool members count as free (a spawn claims or
        evicts them), and idle members never reduce ``available_agents``."""
        self.pool.start()
        _, total, free = await self._resources()
        types = gpu_types_of(total)
        pool_cpus, pool_gpus = self.pool.held()
        free_gpu = free.get("GPU", 0.0) + sum(pool_gpus.values())
        active = self._active_count()
        return SiteCapacity(
            name=self.name, region=self.region, cost_per_hour=self.cost_per_hour,
            max_agents=self.max_agents, active_agents=active,
            available_agents=max(0, self.max_agents - active), gpu_types=types,
            free_gpus={t: min(free_gpu, free.get(GPU_TYPE_PREFIX + t, 0.0)
                              + pool_gpus.get(t, 0.0) * GPU_TYPE_RESOURCE_UNITS) for t in types},
            total_gpus=total.get("GPU", 0.0), total_cpus=total.get("CPU", 0.0),
            free_cpus=min(total.get("CPU", 0.0), free.get("CPU", 0.0) + pool_cpus),
            warm_pool=self.pool.idle_count, version=settings.VERSION, isolation=self._limits.sandbox.isolation)

    async def events(self, since_seq: int = 0) -> AsyncIterator[FederationEvent]:
        # A cursor past our last event comes from an earlier life of this site (its log restarts at 1
        # with the process): replay everything rather than skip events until the numbers catch up.
        seq = since_seq if since_seq <= self._log.last_seq else 0
        while True:
            for event in await self._log.wait_since(seq, EVENT_WAIT_S):
                seq = event.seq
                yield event

    async def export(self, agent_id: str, *, epoch: int = 0, freeze: bool = False) -> AgentSnapshot:
        entry = self._live(agent_id, epoch)
        if freeze:
            self._set_agent(entry, await self._call(entry, "freeze"))
        try:
            snapshot: AgentSnapshot = await self._call(entry, "export")
        except BaseException:
            if freeze:
                with contextlib.suppress(GodelError):
                    self._set_agent(entry, await self._call(entry, "resume"))
            raise
        snapshot = snapshot.model_copy(update={"agent": snapshot.agent.model_copy(
            update={"cluster_id": self.name})})
        self._emit(EventType.AGENT_EXPORTED, agent_id, bytes=snapshot.size_bytes, frozen=freeze)
        return snapshot

    async def import_(self, snapshot: AgentSnapshot) -> Agent:
        agent = snapshot.agent
        validate_agent_id(agent.id)
        validate_spawn_config(agent.config, self._limits)
        await asyncio.to_thread(snap.check_archive, snapshot.archive, snapshot.sha256,
                                self._limits.max_snapshot_bytes)
        created = await self._create(agent, archive=snapshot.archive, sha256=snapshot.sha256,
                                     journal=snapshot.journal)
        if agent.config.idempotency_key:
            self._idempotency.setdefault(agent.config.idempotency_key, agent.id)
        self._emit(EventType.AGENT_IMPORTED, agent.id, epoch=agent.epoch, bytes=snapshot.size_bytes)
        return created

    async def resume(self, agent_id: str, *, epoch: int = 0) -> Agent:
        entry = self._live(agent_id, epoch)
        self._set_agent(entry, await self._call(entry, "resume"))
        return entry.agent

    async def close(self) -> None:
        self._closed = True
        await self.pool.close()
        live = [e for e in self._agents.values() if e.handle is not None]
        for entry in live:
            if entry.watcher is not None:
                entry.watcher.cancel()
        await asyncio.gather(*(self.kill(e.agent.id, reason="runtime closed") for e in live),
                             return_exceptions=True)

    # --- extras --------------------------------------------------------------------------------

    async def journal(self, agent_id: str) -> list[JournalEntry]:
        """The agent's command journal (kept after the agent ended)."""
        entry = self._entry(agent_id)
        if entry.handle is not None:
            with contextlib.suppress(GodelError):
                entry.journal = await self._call(entry, "journal")
        return list(entry.journal)

    @property
    def last_event_seq(self) -> int:
        return self._log.last_seq

    def recent_events(self, since_seq: int = 0) -> list[FederationEvent]:
        """The kept events newer than ``since_seq``, without waiting."""
        return self._log.since(since_seq)


def _wants(config: SpawnConfig, accel: str | None) -> str:
    text = f"{config.cpus:g} CPUs"
    if config.needs_gpu:
        text += f", {config.num_gpus} GPU(s)" + (f" of type {accel}" if accel else "")
    return text


__all__ = ["AgentRuntime", "default_warm_pool_size", "normalise_gpu_type", "placement_problem",
           "resolve_gpu_type"]
