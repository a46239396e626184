"""Hollow sites' agent runtime: ``HollowRuntime``, a ``ClusterClient`` that keeps agents as records.

LOAD-TESTING TOOL, NEVER A PRODUCT PATH. Like Kubernetes' kubemark "hollow nodes": the real site
server (``rpc.server.build_server`` + ``rpc.servicer``) and real gRPC, in front of a runtime that
runs no processes and needs no Ray. It lets one machine stand in for hundreds or thousands of
sites, so the control plane's own costs (placement, heartbeats, the merged event stream, one
ClusterActor per cluster) can be measured at federation scale. Nothing in ``swarmctl`` reaches it;
``bench`` (``python -m bench --only federation-scale``) and the scale tests use it through
``godel_ray.site.hollow_fleet``.

What is real: request validation (``core.validation``, the same checks as ``AgentRuntime``), the
``max_agents`` and resource checks, idempotency keys, epochs (fencing), the event log and its
sequence numbers, the capacity report (``agents.capacity.site_capacity`` over configured numbers).
What is hollow: an agent is a record (RUNNING as soon as it is spawned; no process, no working
directory); ``exec_stream`` answers every command with one canned result; a snapshot's archive is
empty; ``node_id`` is a made-up name.

Also records, for the bench, when each heartbeat arrived (``heartbeat_times``, monotonic seconds,
the last ``HEARTBEAT_HISTORY`` of them).

Invariants: as ``AgentRuntime``'s: statuses only move forward to a final one; ``epoch != 0`` that is
not the agent's raises ``StaleEpoch``; a refused spawn leaves nothing behind; single event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from godel_ray.agents.capacity import placement_problem, site_capacity
from godel_ray.core.cluster_client import KILL_REASON_MIGRATED, check_epoch, collect
from godel_ray.core.events import EventLog
from godel_ray.core.gpu import GPU_TYPE_RESOURCE_UNITS, gpu_type_resource
from godel_ray.core.validation import (
    validate_agent_id,
    validate_command,
    validate_exec_timeout,
    validate_spawn_config,
)
from godel_ray.core.views import agent_matches
from godel_ray.errors import (
    AgentMoved,
    AgentNotFound,
    AgentNotRunning,
    AlreadyExists,
    ResourceExhausted,
    StaleEpoch,
)
from godel_ray.models import (
    Agent,
    AgentSnapshot,
    AgentStatus,
    EventKind,
    EventType,
    ExecChunk,
    ExecResult,
    FederationEvent,
    FreezeOptions,
    FreezeReport,
    Isolation,
    OutputStream,
    SiteCapacity,
    SpawnConfig,
    TransferHeader,
    TransferMode,
    TransferPiece,
    TransferReport,
    TransferTrailer,
    new_agent_id,
    now_s,
)

HEARTBEAT_HISTORY = 10_000
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class HollowShape:
    """What one hollow site pretends to have."""

    cpus: float = 64.0
    gpus: int = 0
    gpu_type: str | None = None
    max_agents: int = 1000
    region: str = "hollow"
    cost_per_hour: float = 0.0
    exec_stdout: str = ""  # the canned output of every command

    def resources(self) -> dict[str, float]:
        """The one node's total resources, as Ray would report them."""
        out = {"CPU": self.cpus, "GPU": float(self.gpus)}
        if self.gpu_type and self.gpus:
            out[gpu_type_resource(self.gpu_type)] = float(self.gpus)
        return out


@dataclass
class _Record:
    agent: Agent
    accel: str | None = None  # the GPU type resource it holds, as advertised
    frozen: bool = False
    moved: bool = False


class HollowRuntime:
    """A ``ClusterClient`` that keeps agents as records (see the module docstring)."""

    def __init__(self, name: str, shape: HollowShape | None = None) -> None:
        self.name = name
        self.shape = shape or HollowShape()
        self._total = self.shape.resources()
        self._records: dict[str, _Record] = {}
        self._idempotency: dict[str, str] = {}
        self._log = EventLog()
        self.heartbeat_times: deque[float] = deque(maxlen=HEARTBEAT_HISTORY)
        self._closed = False

    # --- helpers -----------------------------------------------------------------------------

    def _emit(self, type_: str, agent_id: str = "", kind: EventKind = EventKind.AGENT, **data: object) -> None:
        self._log.append(FederationEvent(kind=kind, type=type_, cluster_id=self.name, agent_id=agent_id,
                                         data={k: str(v) for k, v in data.items()}))

    def _active(self) -> list[_Record]:
        return [r for r in self._records.values() if not r.agent.status.is_final]

    def _free(self) -> dict[str, float]:
        free = dict(self._total)
        for record in self._active():
            config = record.agent.config
            free["CPU"] -= config.cpus
            free["GPU"] -= config.num_gpus
            if record.accel:
                key = gpu_type_resource(record.accel)
                free[key] = free.get(key, 0.0) - GPU_TYPE_RESOURCE_UNITS
        return free

    def _record(self, agent_id: str, epoch: int = 0) -> _Record:
        record = self._records.get(agent_id)
        if record is None:
            raise AgentNotFound(f"agent {agent_id} is not on cluster {self.name}", agent_id=agent_id,
                                cluster_id=self.name)
        check_epoch(agent_id, record.agent.epoch, epoch)
        return record

    def _live(self, agent_id: str, epoch: int = 0) -> _Record:
        record = self._record(agent_id, epoch)
        if record.moved:
            raise AgentMoved(f"agent {agent_id} was migrated away from cluster {self.name}",
                             agent_id=agent_id, cluster_id=self.name)
        if record.agent.status.is_final:
            raise AgentNotRunning(f"agent {agent_id} is {record.agent.status.value}", agent_id=agent_id,
                                  status=record.agent.status.value)
        return record

    def _set_status(self, record: _Record, status: AgentStatus, reason: str = "") -> None:
        before = record.agent.status
        update: dict[str, object] = {"status": status, "status_reason": reason}
        if status == AgentStatus.RUNNING and record.agent.started_at is None:
            update["started_at"] = now_s()
        if status.is_final:
            update["finished_at"] = now_s()
        record.agent = record.agent.model_copy(update=update)
        if status != before:
            self._emit(EventType.AGENT_STATUS, record.agent.id, status=status.value, reason=reason)

    def _create(self, agent: Agent) -> Agent:
        """Admit ``agent`` as a running record; refuse (leaving nothing) when it does not fit."""
        if self._closed:
            raise AgentNotRunning(f"the hollow runtime of cluster {self.name} is closed")
        previous = self._records.get(agent.id)
        if previous is not None and not previous.agent.status.is_final:
            raise AlreadyExists(f"agent {agent.id} already exists on cluster {self.name}", agent_id=agent.id)
        if previous is not None and agent.epoch < previous.agent.epoch:
            raise StaleEpoch(f"agent {agent.id} was at epoch {previous.agent.epoch} here; refusing "
                             f"epoch {agent.epoch}", agent_id=agent.id, epoch=previous.agent.epoch)
        if len(self._active()) >= self.shape.max_agents:
            raise ResourceExhausted(f"cluster {self.name} already runs its maximum of {self.shape.max_agents} "
                                    "agents", cluster_id=self.name)
        problem, accel = placement_problem(agent.config, [self._total])
        if problem is None:
            free = self._free()
            if free["CPU"] < agent.config.cpus or free["GPU"] < agent.config.num_gpus:
                problem = f"{free['CPU']:g} CPUs and {free['GPU']:g} GPUs free"
        if problem is not None:
            raise ResourceExhausted(f"cannot place agent {agent.id} on cluster {self.name}: {problem}",
                                    cluster_id=self.name, agent_id=agent.id)
        record = _Record(agent=agent.model_copy(update={
            "cluster_id": self.name, "status": AgentStatus.PENDING, "status_reason": "", "finished_at": None,
            "started_at": None, "node_id": f"hollow-{self.name}"}), accel=accel if agent.config.needs_gpu else None)
        self._records[agent.id] = record
        self._set_status(record, AgentStatus.RUNNING)
        return record.agent

    # --- ClusterClient -------------------------------------------------------------------------

    async def spawn(self, config: SpawnConfig, *, agent_id: str | None = None,
                    idempotency_key: str | None = None, epoch: int = 1) -> tuple[Agent, bool]:
        validate_spawn_config(config)
        agent_id = validate_agent_id(agent_id) if agent_id else new_agent_id()
        key = idempotency_key or config.idempotency_key
        if key and self._idempotency.get(key) in self._records:
            return self._records[self._idempotency[key]].agent, False
        agent = self._create(Agent(id=agent_id, config=config, epoch=max(epoch, 1)))
        if key:
            self._idempotency[key] = agent.id
        self._emit(EventType.AGENT_SPAWNED, agent.id, model=config.model, node_id=agent.node_id)
        return agent, True

    async def kill(self, agent_id: str, *, epoch: int = 0, reason: str = "") -> Agent:
        record = self._record(agent_id, epoch)
        if reason == KILL_REASON_MIGRATED:
            record.moved = True
        if record.agent.status.is_final:
            return record.agent  # idempotent
        self._set_status(record, AgentStatus.TERMINATED, reason or "killed")
        self._emit(EventType.AGENT_KILLED, agent_id, reason=reason or "killed")
        return record.agent

    async def exec_stream(self, agent_id: str, command: str, *, timeout_s: float | None = None,
                          epoch: int = 0) -> AsyncIterator[ExecChunk]:
        validate_command(command)
        validate_exec_timeout(timeout_s)
        self._live(agent_id, epoch)
        self._emit(EventType.COMMAND_STARTED, agent_id, EventKind.COMMAND, command=command[:200])
        if self.shape.exec_stdout:
            yield ExecChunk(stream=OutputStream.STDOUT, data=self.shape.exec_stdout)
        self._emit(EventType.COMMAND_FINISHED, agent_id, EventKind.COMMAND, exit_code=0, duration_s="0.000",
                   timed_out=False)
        yield ExecChunk(result=ExecResult(exit_code=0))

    async def exec(self, agent_id: str, command: str, *, timeout_s: float | None = None,
                   epoch: int = 0) -> ExecResult:
        return collect([c async for c in self.exec_stream(agent_id, command, timeout_s=timeout_s, epoch=epoch)])

    async def status(self, agent_id: str) -> Agent:
        return self._record(agent_id).agent

    async def list_agents(self, status: AgentStatus | None = None,
                          labels: dict[str, str] | None = None) -> list[Agent]:
        out = [r.agent for r in self._records.values() if agent_matches(r.agent, status=status, labels=labels)]
        return sorted(out, key=lambda a: (a.created_at, a.id))

    async def heartbeat(self) -> SiteCapacity:
        self.heartbeat_times.append(time.monotonic())
        return site_capacity(name=self.name, region=self.shape.region, cost_per_hour=self.shape.cost_per_hour,
                             max_agents=self.shape.max_agents, active_agents=len(self._active()),
                             total=self._total, free=self._free(), pool_cpus=0.0, pool_gpus={}, warm_pool=0,
                             isolation=Isolation.NONE,  # no command ever runs on a hollow site
                             nodes=[(f"hollow-{self.name}", True, self._total, self._free())])

    async def probe(self) -> SiteCapacity:
        return await self.heartbeat()

    async def events(self, since_seq: int = 0) -> AsyncIterator[FederationEvent]:
        async for event in self._log.follow(since_seq):
            yield event

    async def export(self, agent_id: str, *, epoch: int = 0, freeze: bool = False) -> AgentSnapshot:
        """No command ever runs here, so a freeze is idle at once."""
        record = self._live(agent_id, epoch)
        record.frozen = record.frozen or freeze
        self._emit(EventType.AGENT_EXPORTED, agent_id, bytes=0, frozen=freeze)
        return AgentSnapshot(agent=record.agent, archive=b"", sha256=EMPTY_SHA256,
                             frozen_at=time.time() if record.frozen else None)

    async def import_(self, snapshot: AgentSnapshot) -> Agent:
        agent = snapshot.agent
        validate_agent_id(agent.id)
        validate_spawn_config(agent.config)
        created = self._create(agent)
        if agent.config.idempotency_key:
            self._idempotency.setdefault(agent.config.idempotency_key, agent.id)
        self._emit(EventType.AGENT_IMPORTED, agent.id, epoch=agent.epoch, bytes=snapshot.size_bytes)
        return created

    async def resume(self, agent_id: str, *, epoch: int = 0) -> Agent:
        record = self._live(agent_id, epoch)
        record.frozen = False
        return record.agent

    # --- protocol v2: no files, so every workdir stream is empty ------------------------------------

    async def prepare(self, agent: Agent) -> Agent:
        validate_agent_id(agent.id)
        validate_spawn_config(agent.config)
        self._create(agent)
        record = self._records[agent.id]
        self._set_status(record, AgentStatus.PENDING, "importing")
        return record.agent

    async def freeze(self, agent_id: str, *, epoch: int = 0, options: FreezeOptions | None = None) -> FreezeReport:
        """No command ever runs here, so a freeze is idle at once whatever ``options`` say."""
        record = self._live(agent_id, epoch)
        record.frozen = True
        return FreezeReport(agent=record.agent, frozen_at=time.time())

    async def send(self, agent_id: str, mode: TransferMode, *, epoch: int = 0) -> AsyncIterator[TransferPiece]:
        record = self._live(agent_id, epoch)
        final = mode is TransferMode.FINAL
        yield TransferHeader(mode=mode, agent=record.agent if final else None)
        yield TransferTrailer(sha256=EMPTY_SHA256)

    async def receive(self, agent_id: str, pieces: AsyncIterator[TransferPiece], *, epoch: int = 0
                      ) -> TransferReport:
        self._record(agent_id, epoch)
        moved = 0
        async for piece in pieces:
            if isinstance(piece, bytes):
                moved += len(piece)
        return TransferReport(bytes_moved=moved)

    async def activate(self, agent_id: str, *, epoch: int = 0) -> Agent:
        record = self._live(agent_id, epoch)
        self._set_status(record, AgentStatus.RUNNING)
        self._emit(EventType.AGENT_IMPORTED, agent_id, epoch=record.agent.epoch, bytes=0)
        return record.agent

    async def close(self) -> None:
        self._closed = True
        for record in self._active():
            self._set_status(record, AgentStatus.TERMINATED, "runtime closed")
        await asyncio.sleep(0)

    # --- for the bench -------------------------------------------------------------------------

    def active_count(self) -> int:
        return len(self._active())

    @property
    def last_event_seq(self) -> int:
        return self._log.last_seq


__all__ = ["HollowRuntime", "HollowShape"]
