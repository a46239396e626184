"""Fakes for the control plane's owners (no Ray): clusters that keep agents in a dict, behind
the same typed surface as ``ClusterGateway`` (``gateway.kill(...).result(timeout_s)``), and a
``Control`` that wires the real owners (real state store, real ledger) to them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from godel_ray.control.agent_table import AgentTable
from godel_ray.control.clusters import ClusterSet
from godel_ray.control.eventlog import Emitter, EventCursors
from godel_ray.control.ledger import CapacityLedger
from godel_ray.control.store import StateStore
from godel_ray.errors import AgentNotFound, AlreadyExists, StaleEpoch
from godel_ray.models import (
    Agent,
    AgentSnapshot,
    AgentStatus,
    Cluster,
    ClusterChanges,
    ClusterHealthState,
    FederationEvent,
    FreezeReport,
    SiteCapacity,
    SpawnConfig,
    TransferHeader,
    TransferMode,
    TransferReport,
    TransferTrailer,
)

PAYLOAD = b"x" * 100  # every fake workdir stream carries these bytes


class FakeCall:
    """What ``ClusterGateway`` methods return: ``await call.result(timeout_s)``."""

    def __init__(self, run: Callable[[], Awaitable[Any]]) -> None:
        self._run = run

    async def result(self, timeout_s: float | None = None) -> Any:
        return await self._run()


class FakeCluster:
    """One cluster: agents in a dict, scripted failures (``fail[method]``), an optional gate per
    method (``gates[method]``: the call waits until the event is set), and a log of calls."""

    def __init__(self, cluster_id: str) -> None:
        self.id = cluster_id
        self.agents: dict[str, Agent] = {}
        self.fail: dict[str, Exception] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.health = ClusterHealthState(cluster_id=cluster_id)
        self.incarnation = f"fake-{cluster_id}"  # what ``wait_changes`` answers (a restart changes it)
        self.events: list[FederationEvent] = []  # its actor's buffer (seq 1, 2, ...)
        self.reconnects = 0
        self.news = asyncio.Event()  # set: a waiting ``wait_changes`` answers
        self._arrivals: asyncio.Condition | None = None
        self.inbound: dict[str, int] = {}  # receive_open'ed streams: bytes pushed so far
        self.frozen_at: float | None = None  # what a freeze reports as the moment it froze

    def gate(self, method: str) -> asyncio.Event:
        """Hold every ``method`` call until the returned event is set."""
        event = self.gates[method] = asyncio.Event()
        return event

    async def reached(self, method: str, count: int = 1) -> None:
        """Return once ``count`` calls of ``method`` have arrived (gated ones wait there)."""
        if self._arrivals is None:
            self._arrivals = asyncio.Condition()
        async with self._arrivals:
            await self._arrivals.wait_for(lambda: sum(1 for m, _ in self.calls if m == method) >= count)

    def _live(self, agent_id: str, epoch: int = 0) -> Agent:
        agent = self.agents.get(agent_id)
        if agent is None:
            raise AgentNotFound(f"agent {agent_id} is not on {self.id}", agent_id=agent_id)
        if epoch and agent.epoch != epoch:
            raise StaleEpoch(f"agent {agent_id} is at epoch {agent.epoch} on {self.id}", agent_id=agent_id)
        return agent

    async def handle(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((method, kwargs))
        if self._arrivals is None:
            self._arrivals = asyncio.Condition()
        async with self._arrivals:
            self._arrivals.notify_all()
        gate = self.gates.get(method)
        if gate is not None:
            await gate.wait()
        if method in self.fail:
            raise self.fail[method]
        if method in ("start", "close", "update"):
            return True
        if method in ("health", "set_maintenance"):
            return self.health
        if method == "wait_changes":  # (incarnation, since_local_seq, health_version, timeout_s)
            since = args[1] if args[0] == self.incarnation else 0
            if since >= max((e.seq for e in self.events), default=0) and args[2] == 0 and args[3] > 0:
                await self.news.wait()  # nothing new for this caller: a long poll (``tell`` ends it)
                self.news.clear()
            return ClusterChanges(incarnation=self.incarnation, health=self.health, health_version=0,
                                  events=[e for e in self.events if e.seq > since], reconnects=self.reconnects)
        if method == "list_agents":
            return list(self.agents.values())
        if method == "spawn":
            config: SpawnConfig = args[0]
            agent_id = kwargs["agent_id"]
            if agent_id in self.agents and not self.agents[agent_id].status.is_final:
                raise AlreadyExists(f"agent {agent_id} exists on {self.id}")
            agent = Agent(id=agent_id, config=config, cluster_id=self.id, status=AgentStatus.RUNNING,
                          epoch=kwargs.get("epoch", 1))
            self.agents[agent_id] = agent
            return agent, True
        if method == "prepare":
            agent = args[0]
            there = self.agents.get(agent.id)
            if there is not None and not there.status.is_final:
                raise AlreadyExists(f"agent {agent.id} exists on {self.id}")
            self.agents[agent.id] = agent.model_copy(update={"status": AgentStatus.PENDING, "cluster_id": self.id})
            return self.agents[agent.id]
        if method == "receive_open":
            self._live(args[0], kwargs.get("epoch", 0))
            self.inbound[args[0]] = 0
            return args[0]
        if method == "push":
            if isinstance(args[1], bytes):
                self.inbound[args[0]] += len(args[1])
            return None
        if method == "receive_close":
            moved = self.inbound.pop(args[0], 0)
            return TransferReport(bytes_moved=0 if args[1:] and args[1] else moved)
        if method == "import_":
            snapshot: AgentSnapshot = args[0]
            agent = snapshot.agent.model_copy(update={"status": AgentStatus.RUNNING, "cluster_id": self.id})
            self.agents[agent.id] = agent
            return agent
        agent = self._live(args[0], kwargs.get("epoch", 0))
        if method == "export":
            if kwargs.get("freeze"):
                self.agents[agent.id] = agent.model_copy(update={"status": AgentStatus.MIGRATING})
            return AgentSnapshot(agent=agent, archive=b"x" * 100, sha256="0" * 64)
        if method == "status":
            return agent
        if method == "freeze":
            self.agents[agent.id] = agent.model_copy(update={"status": AgentStatus.MIGRATING})
            return FreezeReport(agent=self.agents[agent.id], frozen_at=self.frozen_at)
        if method == "send":
            return agent
        if method == "activate":
            self.agents[agent.id] = agent.model_copy(update={"status": AgentStatus.RUNNING})
            return self.agents[agent.id]
        if method == "resume":
            self.agents[agent.id] = agent.model_copy(update={"status": AgentStatus.RUNNING})
            return self.agents[agent.id]
        if method == "kill":
            del self.agents[agent.id]
            return agent.model_copy(update={"status": AgentStatus.TERMINATED,
                                            "status_reason": kwargs.get("reason", "")})
        if method == "journal":
            return []
        raise AssertionError(f"FakeCluster: unexpected {method}")


class FakeStream:
    """What ``ClusterGateway.send`` returns: ``refs()`` yields the pieces themselves (no object store)."""

    def __init__(self, cluster: FakeCluster, agent_id: str, mode: TransferMode, epoch: int) -> None:
        self.cluster, self.agent_id, self.mode, self.epoch = cluster, agent_id, mode, epoch
        self.cancelled = False

    async def refs(self) -> Any:
        agent = await self.cluster.handle("send", self.agent_id, mode=self.mode, epoch=self.epoch)
        final = self.mode is TransferMode.FINAL
        yield TransferHeader(mode=self.mode, agent=agent if final else None)
        yield PAYLOAD
        yield TransferTrailer(sha256="0" * 64, size_bytes=len(PAYLOAD))

    def cancel(self) -> None:
        self.cancelled = True


class FakeGateway:
    """``ClusterGateway``'s surface over a ``FakeCluster``."""

    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster_id = cluster.id
        self.cluster = cluster
        self.handle = cluster

    def send(self, agent_id: str, mode: TransferMode, *, epoch: int = 0) -> FakeStream:
        return FakeStream(self.cluster, agent_id, mode, epoch)

    def __getattr__(self, method: str) -> Callable[..., FakeCall]:
        def call(*args: Any, **kwargs: Any) -> FakeCall:
            return FakeCall(lambda: self.cluster.handle(method, *args, **kwargs))
        return call


def capacity(free_cpus: float, total_cpus: float, *, max_agents: int = 10, active: int = 0,
             free_gpus: dict[str, float] | None = None, total_gpus: float = 0.0) -> SiteCapacity:
    return SiteCapacity(max_agents=max_agents, active_agents=active, available_agents=max(0, max_agents - active),
                        total_cpus=total_cpus, free_cpus=free_cpus, free_gpus=free_gpus or {},
                        gpu_types=sorted(free_gpus or {}), total_gpus=total_gpus)


class Control:
    """The real owners' state (store, ledger, table, cluster set) over fake clusters, fake clock."""

    def __init__(self, tmp_path: Path, cluster_ids: tuple[str, ...] = ("local", "src", "dst")) -> None:
        self.now = 1000.0
        self.probe_capacity = SiteCapacity()  # what a registration's probe heartbeat reports
        self.store = StateStore.for_state_dir(tmp_path)
        self.events: list[FederationEvent] = []
        self.emitter = Emitter(self.store)
        self.ledger = CapacityLedger()
        self.cursors = EventCursors(self.store)
        self.table = AgentTable(self.store, self.ledger, self.emitter, clock=self.clock)
        self.fakes = {cid: FakeCluster(cid) for cid in cluster_ids}
        for cid in cluster_ids:
            if cid != "local":
                self.store.put_cluster(Cluster(id=cid, endpoint=f"127.0.0.1:{len(cid) + 40000}", region=cid))
        self.clusters = ClusterSet(self.store, self.table, self.ledger, self.cursors, self.emitter,
                                   make_gateway=lambda c: FakeGateway(self.fakes[c.id]),  # type: ignore[arg-type, return-value]
                                   retire=lambda g: None, probe=self._probe, clock=self.clock)
        self.table.load()
        self.clusters.load()

    def clock(self) -> float:
        return self.now

    async def _probe(self, cluster: Cluster) -> SiteCapacity:
        self.fakes.setdefault(cluster.id, FakeCluster(cluster.id))
        return self.probe_capacity

    def gateway(self, cluster_id: str) -> Any:
        return self.clusters.gateway(cluster_id)

    def report(self, cluster_id: str, cap: SiteCapacity, *, at: float | None = None) -> None:
        """A heartbeat from ``cluster_id`` measured at ``at`` (now by default)."""
        when = self.now if at is None else at
        self.clusters.set_health(cluster_id, ClusterHealthState(cluster_id=cluster_id, capacity=cap,
                                                                last_success_at=when, last_heartbeat_at=when))

    def put_agent(self, agent: Agent) -> Agent:
        self.table.put(agent)
        self.fakes[agent.cluster_id].agents[agent.id] = agent
        return agent
