"""``AgentRuntime``: the ``ClusterClient`` that hosts agents on the Ray cluster this process is attached to.

Shared by the ``local`` ClusterActor and every site server: one code path hosts agents. It keeps
the agent table (``agents.table``: id -> actor + last known ``Agent``, fencing by epoch), the
idempotency keys, the event log and the warm pool, and enforces ``max_agents`` and spawn validation.

Invariants:
- spawning never leaves a half-created agent: the request is validated and checked against the
  nodes' total resources before an actor exists, and an actor that does not become ready within
  ``ready_timeout_s`` is killed and its table entry removed;
- an agent's status only moves forward to a final status; a killed agent stays listed (final)
  so its status can still be read, and its id can be reused by an import with a newer epoch;
- an operation with ``epoch != 0`` that is not the agent's epoch raises ``StaleEpoch``;
- at most about as many cold starts (a new actor: a new worker process) run at once as the cluster
  has CPUs; the rest wait in arrival order, each refused with ``ResourceExhausted`` once
  ``admission_timeout_s`` passes (``agents.admission``); a warm-pool claim is not gated;
- the event log records ``agent.spawned``, ``agent.status``, ``command.started``,
  ``command.finished``, ``agent.exported``, ``agent.imported`` and ``agent.killed``; a command's
  two events are deferred (``EventLog.defer``), and ``command.finished`` comes after its result
  was handed to the caller.

Moving agents in and out (``export``/``import_``, and protocol v2's ``prepare``/``freeze``/``send``/
``receive``/``activate``/``resume``) is the ``RuntimeMoves`` base's (``agents.runtime_moves``).

Runs on one asyncio event loop (the caller's); actor calls go through the typed ``AgentGateway``
and are awaited, never blocking. What the Ray cluster can host, and the capacity report, are
``agents.capacity``'s (pure); GPU types match by ``core.gpu``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator

from godel_ray.agents import direct_calls
from godel_ray.agents.actor import create_agent_actor
from godel_ray.agents.admission import StartGate
from godel_ray.agents.capacity import NodeResources, placement_problem, site_capacity, wants
from godel_ray.agents.pool import WarmPool, pool_sizes
from godel_ray.agents.resource_cache import ResourceCache
from godel_ray.agents.runtime_moves import RuntimeMoves
from godel_ray.agents.table import AgentEntry, AgentTable, record
from godel_ray.core.cluster_client import KILL_REASON_MIGRATED
from godel_ray.core.events import EventLog
from godel_ray.core.gpu import normalise_gpu_type, resolve_gpu_type
from godel_ray.core.validation import (
    validate_agent_id,
    validate_command,
    validate_exec_timeout,
    validate_spawn_config,
)
from godel_ray.core.views import agent_matches
from godel_ray.errors import (
    AgentNotRunning,
    AlreadyExists,
    CommandInterrupted,
    DeadlineExceeded,
    GodelError,
    ResourceExhausted,
    StaleEpoch,
)
from godel_ray.models import (
    LOCAL_CLUSTER_ID,
    Agent,
    AgentStatus,
    EventKind,
    EventType,
    ExecChunk,
    ExecResult,
    FederationEvent,
    JournalEntry,
    SiteCapacity,
    SpawnConfig,
    new_agent_id,
    now_s,
)
from godel_ray.raykit import rayapi
from godel_ray.raykit.gateway import AgentGateway
from godel_ray.settings import LIMITS, Limits

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0  # an actor not ready by then is killed: its resources are busy or gone
ADMISSION_TIMEOUT_S = 120.0  # how long a cold start waits for a start slot (``agents.admission``)
TERMINATE_TIMEOUT_S = 15.0
LOCAL_WARM_POOL_ENV = "GODEL_LOCAL_WARM_POOL"  # warm pool size of the ``local`` runtime when not given


def default_warm_pool_size(name: str) -> int:
    """``$GODEL_LOCAL_WARM_POOL`` for the runtime named ``local``; 0 otherwise (or when unset/invalid)."""
    raw = os.environ.get(LOCAL_WARM_POOL_ENV, "") if name == LOCAL_CLUSTER_ID else ""
    try:
        return max(0, int(raw)) if raw.strip() else 0
    except ValueError:
        log.warning("ignoring %s=%r: not an integer", LOCAL_WARM_POOL_ENV, raw)
        return 0


class AgentRuntime(RuntimeMoves):
    """Hosts agents as ``AgentActor``s on the current Ray cluster; implements ``ClusterClient``."""

    def __init__(self, name: str, workdir_root: str, *, region: str = "", cost_per_hour: float = 0.0,
                 max_agents: int = 100, limits: Limits = LIMITS,
                 ready_timeout_s: float = READY_TIMEOUT_S, warm_pool_size: int | None = None,
                 warm_pool_gpu: dict[str, int] | None = None, direct_calls: bool = False,
                 admission_timeout_s: float = ADMISSION_TIMEOUT_S) -> None:
        self.name = name
        self._direct_calls = direct_calls  # callers may exec on the actors directly (``local``): follow them
        self.workdir_root = workdir_root
        self.region = region
        self.cost_per_hour = cost_per_hour
        self.max_agents = max_agents
        self._limits = limits
        self._ready_timeout_s = ready_timeout_s
        self._idempotency: dict[str, str] = {}  # key -> agent id
        self._key_locks: dict[str, asyncio.Lock] = {}
        self._log = EventLog()
        self._table = AgentTable(name, self._log)
        self._closed = False
        self._starts = StartGate(name)  # admission control of cold agent starts (``agents.admission``)
        self._admission_timeout_s = admission_timeout_s
        if warm_pool_size is None:
            warm_pool_size = default_warm_pool_size(name)
        self.pool = WarmPool(name, workdir_root, pool_sizes(warm_pool_size, warm_pool_gpu), limits=limits,
                             ready_timeout_s=ready_timeout_s)
        # heartbeats answer from here, never waiting long on Ray's GCS (see agents.resource_cache)
        self._capacity_resources: ResourceCache[tuple[dict[str, float], dict[str, float], list[NodeResources]]] = (
            ResourceCache(
                self._totals))

    # --- helpers -----------------------------------------------------------------------------

    def _emit(self, type_: str, agent_id: str = "", kind: EventKind = EventKind.AGENT, *, later: bool = False,
              **data: object) -> None:
        record(self._log, self.name, type_, agent_id, kind, later=later, **data)

    async def _resources(self) -> tuple[list[dict[str, float]], dict[str, float], dict[str, float]]:
        """(each alive node's total resources, the cluster's total, what is free now)."""
        def read() -> tuple[list[dict[str, float]], dict[str, float], dict[str, float]]:
            return rayapi.alive_node_resources(), rayapi.cluster_resources(), rayapi.available_resources()

        with rayapi.mapped("ray cluster"):
            return await asyncio.to_thread(read)  # Ray's reads block: off the loop

    async def _totals(self) -> tuple[dict[str, float], dict[str, float], list[NodeResources]]:
        """(the cluster's total resources, what is free now, each node's): what a heartbeat reports."""
        _, total, free = await self._resources()
        with rayapi.mapped("ray cluster"):
            nodes: list[NodeResources] = [*await asyncio.to_thread(rayapi.node_resources)]
        return total, free, nodes

    # --- creation ----------------------------------------------------------------------------

    async def _create(self, agent: Agent, archive: bytes | None = None, sha256: str = "",
                      journal: list[JournalEntry] | None = None, importing: bool = False) -> Agent:
        """Create and start the actor for ``agent``; on any failure nothing is left behind. The warm
        pool refills only once starts have stopped for a moment (``WarmPool.starting``)."""
        with self.pool.starting():
            return await self._start_agent(agent, archive, sha256, journal, importing)

    async def _start_agent(self, agent: Agent, archive: bytes | None, sha256: str,
                           journal: list[JournalEntry] | None, importing: bool) -> Agent:
        if self._closed:
            raise AgentNotRunning(f"the agent runtime of cluster {self.name} is closed")
        previous = self._table.get(agent.id)
        if previous is not None and not previous.agent.status.is_final:
            raise AlreadyExists(f"agent {agent.id} already exists on cluster {self.name}", agent_id=agent.id)
        if previous is not None and agent.epoch < previous.agent.epoch:
            raise StaleEpoch(f"agent {agent.id} was at epoch {previous.agent.epoch} here; refusing "
                             f"epoch {agent.epoch}", agent_id=agent.id, epoch=previous.agent.epoch)
        if self._table.active_count() >= self.max_agents:
            raise ResourceExhausted(f"cluster {self.name} already runs its maximum of {self.max_agents} "
                                    "agents: kill some or raise --max-agents", cluster_id=self.name)
        self.pool.start()
        agent = agent.model_copy(update={"cluster_id": self.name, "status": AgentStatus.PENDING,
                                         "status_reason": "", "finished_at": None})
        claimed = self.pool.claim(agent.config)  # a pre-started actor with these resources
        if claimed is not None:
            member = claimed[0].for_agent(agent.id)
            entry = AgentEntry(agent=agent, journal=list(journal or []), actor=member)
            self._table.put(entry)
            try:
                started = await self._table.ask(entry, lambda a: a.adopt(agent, self.workdir_root, archive, journal,
                                                                   sha256, importing), self._ready_timeout_s)
            except GodelError as exc:  # the member died meanwhile: start a fresh actor
                log.warning("agent %s: warm-pool actor unusable (%s); starting a fresh one", agent.id, exc)
                member.kill()
                self._table.restore(agent.id, previous)
            except BaseException:
                member.kill()
                self._table.restore(agent.id, previous)
                raise
            else:
                return self._started(entry, started)
        nodes, total, free = await self._resources()
        problem, accel = placement_problem(agent.config, nodes)
        if problem is not None:
            raise ResourceExhausted(f"cannot place agent {agent.id} on cluster {self.name}: {problem}",
                                    cluster_id=self.name, agent_id=agent.id)
        if self.pool.must_evict_for(free.get("CPU", 0.0), free.get("GPU", 0.0), agent.config.cpus,
                                    agent.config.num_gpus):
            await self.pool.evict(agent.config.cpus - free.get("CPU", 0.0),
                                  max(0, agent.config.num_gpus - int(free.get("GPU", 0.0))))
        entry = AgentEntry(agent=agent, journal=list(journal or []))
        self._table.put(entry)  # reserves a max_agents slot while the actor starts
        try:
            # at most about as many cold starts at once as the cluster has cores; the rest wait in order
            async with self._starts.admitted(int(total.get("CPU", 1.0)), self._admission_timeout_s):
                entry.actor = create_agent_actor(agent, self.workdir_root, archive, journal, sha256=sha256,
                                                 accelerator_type=accel, limits=self._limits,
                                                 importing=importing)
                try:
                    started = await self._table.ask(entry, AgentGateway.start, self._ready_timeout_s)
                except DeadlineExceeded:
                    raise ResourceExhausted(
                        f"agent {agent.id} was not placed within {self._ready_timeout_s:g} s on cluster "
                        f"{self.name}: the resources it needs ({wants(agent.config, accel)}) exist but are busy",
                        cluster_id=self.name, agent_id=agent.id) from None
        except BaseException:
            if entry.actor is not None:
                entry.actor.kill()
            self._table.restore(agent.id, previous)
            raise
        return self._started(entry, started)

    def _started(self, entry: AgentEntry, started: Agent) -> Agent:
        self._capacity_resources.invalidate()
        entry.agent = started.model_copy(update={"cluster_id": self.name})
        assert entry.actor is not None
        entry.watcher = asyncio.create_task(self._watch(entry, entry.actor))
        if self._direct_calls:
            entry.follower = asyncio.create_task(direct_calls.follow(self._log, self.name, entry, entry.actor))
        return entry.agent

    async def _watch(self, entry: AgentEntry, actor: AgentGateway) -> None:
        """Follow the agent: a limit a command hit (its ``status_reason``, with an ``agent.status``
        event), its end by itself (lifetime) or its death; release its actor once it ended."""
        seen = 0
        while True:
            try:
                seen, done = await actor.wait_change(seen)
            except GodelError as exc:  # any failure of the actor ends the watch
                current = entry.actor is actor and not entry.agent.status.is_final
                if current and isinstance(exc, (rayapi.ActorDied, rayapi.ActorUnreachable)):
                    exc = await self._node_loss(entry.agent, exc)  # the reason names a lost node
                if entry.actor is actor and not entry.agent.status.is_final:
                    self._table.failure(entry, exc)
                return
            if entry.actor is not actor or done.status.is_final:
                break
            self._table.set_agent(entry, done)
        if entry.actor is not actor or entry.agent.status.is_final:
            return  # killed through the runtime: kill() did the bookkeeping
        self._table.set_agent(entry, done)
        await self._release(entry, done.status_reason)

    async def _node_loss(self, agent: Agent, exc: GodelError) -> GodelError:
        """``exc``, or an ``ActorDied`` naming the lost node when the agent's Ray node is gone (a
        worker node of a multi-node site lost with its raylet: every agent on it died with it)."""
        try:
            with rayapi.mapped("ray cluster"):
                why = await asyncio.to_thread(rayapi.node_lost, agent.node_id)
        except GodelError:
            return exc
        if why is None:
            return exc
        return rayapi.ActorDied(f"its node {agent.node_id[:12]} was lost: {why}", agent_id=agent.id,
                                cluster_id=self.name)

    async def _release(self, entry: AgentEntry, reason: str) -> None:
        """Terminate and kill the actor (idempotent); keep the journal and final status."""
        actor, entry.actor = entry.actor, None
        if actor is None:
            return
        follower, entry.follower = entry.follower, None
        try:
            entry.journal = await actor.journal().result(TERMINATE_TIMEOUT_S)
            final = await actor.terminate(reason).result(TERMINATE_TIMEOUT_S)
            self._table.set_agent(entry, final)
        except GodelError as exc:  # already dead, or not answering: kill it regardless
            log.warning("agent %s: terminate failed (%s); killing its actor", entry.agent.id, exc)
        finally:
            await direct_calls.settle(self._log, self.name, entry, actor, follower)
            actor.kill()
            self._capacity_resources.invalidate()

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
            if key in self._idempotency and self._idempotency[key] in self._table:
                return await self.status(self._idempotency[key]), False
            agent = await self._create(Agent(id=agent_id, config=config, epoch=max(epoch, 1)))
            self._idempotency[key] = agent.id
            self._emit(EventType.AGENT_SPAWNED, agent.id, model=config.model, node_id=agent.node_id)
            return agent, True

    async def kill(self, agent_id: str, *, epoch: int = 0, reason: str = "") -> Agent:
        entry = self._table.entry(agent_id, epoch)
        if reason == KILL_REASON_MIGRATED:
            entry.moved = True
        if entry.actor is None:
            return entry.agent  # already ended: idempotent
        if entry.watcher is not None:
            entry.watcher.cancel()
        await self._release(entry, reason or "killed")
        if entry.actor is None and not entry.agent.status.is_final:
            # terminate did not answer: record the end ourselves
            self._table.set_agent(entry, entry.agent.model_copy(update={
                "status": AgentStatus.TERMINATED, "status_reason": reason or "killed",
                "finished_at": now_s()}))
        self._emit(EventType.AGENT_KILLED, agent_id, reason=reason or "killed")
        return entry.agent

    def _exec_start(self, agent_id: str, command: str, timeout_s: float | None, epoch: int
                    ) -> tuple[AgentEntry, AgentGateway, float]:
        """Check an exec (streamed or collected) and record ``command.started``."""
        validate_command(command, self._limits)
        timeout = validate_exec_timeout(timeout_s, self._limits)
        entry, actor = self._table.live(agent_id, epoch)
        # Both events are deferred (off the command's path), and ``command.finished`` is recorded
        # only once the result was handed on: a reader of the events never sees a command finish
        # before its caller got the result (on a site: before the result message was sent).
        direct_calls.started(self._log, self.name, agent_id, command, later=True)
        return entry, actor, timeout

    def _exec_interrupted(self, agent_id: str, exc: CommandInterrupted) -> None:
        fields = exc.fields
        self._emit(EventType.COMMAND_FINISHED, agent_id, EventKind.COMMAND, exit_code=fields.get("exit_code"),
                   duration_s=f"{float(fields.get('duration_s') or 0.0):.3f}", timed_out=False, interrupted=True,
                   interrupt_reason=str(fields.get("reason", ""))[:300])

    def _exec_finished(self, agent_id: str, result: ExecResult) -> None:
        direct_calls.finished(self._log, self.name, agent_id, result.exit_code, result.duration_s,
                              result.timed_out, later=True)

    async def exec_stream(self, agent_id: str, command: str, *, timeout_s: float | None = None,
                          epoch: int = 0) -> AsyncIterator[ExecChunk]:
        entry, actor, timeout = self._exec_start(agent_id, command, timeout_s, epoch)
        finished = False
        stream = None
        try:
            stream = actor.exec(command, timeout)
            async for chunk in stream:
                if chunk.result is None:
                    yield chunk
                    continue
                finished = True
                try:
                    yield chunk
                finally:  # also when the caller closes the stream on the result
                    self._exec_finished(agent_id, chunk.result)
        except (rayapi.ActorUnreachable, rayapi.ActorDied) as exc:
            finished = True
            raise self._table.failure(entry, exc) from None
        except CommandInterrupted as exc:
            finished = True
            self._exec_interrupted(agent_id, exc)
            raise
        except GodelError:
            finished = True
            raise
        finally:
            if not finished and stream is not None:  # the caller went away mid-command: stop it
                stream.cancel()  # (its process group dies)

    async def exec(self, agent_id: str, command: str, *, timeout_s: float | None = None,
                   epoch: int = 0) -> ExecResult:
        """``exec_stream`` collected on the agent's actor: one reply, the same events and limits."""
        entry, actor, timeout = self._exec_start(agent_id, command, timeout_s, epoch)
        call = actor.run(command, timeout)
        try:
            result = await call
        except (rayapi.ActorUnreachable, rayapi.ActorDied) as exc:
            raise self._table.failure(entry, exc) from None
        except CommandInterrupted as exc:
            self._exec_interrupted(agent_id, exc)
            raise
        except asyncio.CancelledError:  # the caller went away mid-command: stop it
            rayapi.cancel(call.ref)
            raise
        self._exec_finished(agent_id, result)
        return result

    async def agent_actor(self, agent_id: str, epoch: int) -> object:
        """The actor handle of running ``agent_id`` at ``epoch`` (else the error saying why not), for
        a caller that execs on it directly; the actor checks the epoch on each such call."""
        _, actor = self._table.live(agent_id, epoch)
        return actor.handle

    async def fence(self, agent_id: str, epoch: int) -> None:
        """``agent_id`` lives at ``epoch`` elsewhere now: this copy, if older, refuses every command
        (through here, and directly on its actor). Idempotent; best effort on the actor."""
        entry = self._table.get(agent_id)
        if entry is None or entry.agent.epoch >= epoch:
            return
        entry.moved = True
        if entry.actor is not None:
            with contextlib.suppress(GodelError):
                await entry.actor.fence(epoch)

    async def status(self, agent_id: str) -> Agent:
        entry = self._table.entry(agent_id)
        if entry.actor is not None and not entry.agent.status.is_final:
            with contextlib.suppress(GodelError):
                self._table.set_agent(entry, await self._table.ask(entry, AgentGateway.info))
        return entry.agent

    async def list_agents(self, status: AgentStatus | None = None,
                          labels: dict[str, str] | None = None) -> list[Agent]:
        out = [e.agent for e in self._table if agent_matches(e.agent, status=status, labels=labels)]
        return sorted(out, key=lambda a: (a.created_at, a.id))

    async def heartbeat(self) -> SiteCapacity:
        """Capacity, also per node; resources held by idle warm-pool members count as free (a spawn claims or
        evicts them), and idle members never reduce ``available_agents``. Answered from cached Ray
        resources (``agents.resource_cache``: a refresh runs in the background and is waited for
        ``FRESH_WAIT_S`` at most), so a heartbeat never waits on Ray's GCS longer than that once the
        first read is done. Agent counts are this runtime's own, always current."""
        self.pool.start()
        total, free, nodes = await self._capacity_resources.get()
        pool_cpus, pool_gpus = self.pool.held()
        return site_capacity(name=self.name, region=self.region, cost_per_hour=self.cost_per_hour,
                             max_agents=self.max_agents, active_agents=self._table.active_count(), total=total,
                             free=free, pool_cpus=pool_cpus, pool_gpus=pool_gpus,
                             warm_pool=self.pool.idle_count, isolation=self._limits.sandbox.isolation,
                             nodes=nodes)

    async def probe(self) -> SiteCapacity:
        return await self.heartbeat()

    async def events(self, since_seq: int = 0) -> AsyncIterator[FederationEvent]:
        async for event in self._log.follow(since_seq):
            yield event

    async def close(self) -> None:
        self._closed = True
        await self._capacity_resources.close()
        await self.pool.close()
        live = [e for e in self._table if e.actor is not None]
        for entry in live:
            if entry.watcher is not None:
                entry.watcher.cancel()
        await asyncio.gather(*(self.kill(e.agent.id, reason="runtime closed") for e in live),
                             return_exceptions=True)

    # --- extras --------------------------------------------------------------------------------

    async def journal(self, agent_id: str) -> list[JournalEntry]:
        """The agent's command journal (kept after the agent ended)."""
        entry = self._table.entry(agent_id)
        if entry.actor is not None:
            with contextlib.suppress(GodelError):
                entry.journal = await self._table.ask(entry, AgentGateway.journal)
        return list(entry.journal)

    @property
    def last_event_seq(self) -> int:
        return self._log.last_seq

    def recent_events(self, since_seq: int = 0) -> list[FederationEvent]:
        """The kept events newer than ``since_seq``, without waiting."""
        return self._log.since(since_seq)


__all__ = ["AgentRuntime", "default_warm_pool_size", "normalise_gpu_type", "placement_problem",
           "resolve_gpu_type"]
