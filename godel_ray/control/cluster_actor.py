"""ClusterActor: the control plane's handle on one registered cluster (a plain async class).

For ``local`` it hosts agents on the control plane's own Ray cluster through an ``AgentRuntime``
(no gRPC); for a remote cluster it speaks to the site through a ``GrpcClusterClient``. Either way
it exposes the ``ClusterClient`` operations (with ``exec_stream`` an async generator, for Ray's
streaming generators), and it owns two control loops, started on the first call:

- the heartbeat loop: one probe (a heartbeat, one attempt, with its deadline) every
  ``cluster.health.heartbeat_interval_s`` -- sooner after a failure that says nothing answers, as the
  failure detector asks (``core.detector``) -- fed to a ``HealthTracker``; a ``cluster.status`` event
  (with the detector's evidence) on each transition only;
- the channel loop (remote clusters): every change of the gRPC channel's connectivity state goes to
  the tracker too; losing the connection triggers a probe at once (a killed site is known in about
  a second);
- the event loop: follows the cluster's event stream, resuming after the last sequence number it
  saw (across reconnects, and across restarts of this actor through the state store's cursor),
  and buffers the events (``cluster_id`` filled in) until the balancer drains them. Each event is
  also a sign of life for the tracker.

The balancer is told, not asked: it keeps one ``wait_changes`` call outstanding per cluster (a long
poll), answered as soon as an event is buffered or the health changed in what it says (status,
evidence, capacity, channel, error), else after the caller's timeout. A heartbeat that changed only
its times, round-trip time and streaks is routine: told with the next answer, and at the latest
``ROUTINE_HEALTH_EVERY_S`` after the previous answer. The suspicion level alone is never news (it
grows with every second of silence; a verdict it leads to is). So a quiet cluster costs one answer
every ``ROUTINE_HEALTH_EVERY_S``, and a busy one at most one per round trip, whatever it buffered.

Inbound workdir streams (protocol v2) are relayed piece by piece by the ``InboundRelay`` base
(``godel_ray.control.inbound_relay``: ``receive_open``/``push``/``receive_close``).

Fences: after the balancer restored an agent elsewhere, ``fence(agent_id, epoch)`` makes this actor
refuse commands for that agent below the new epoch (``AgentMoved``: the caller re-resolves), so a
stale copy on a site that comes back never serves a command, even before it is removed.

``ray.remote`` is applied in ``godel_ray.control.factory`` only.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from godel_ray import settings
from godel_ray.control.inbound_relay import InboundRelay
from godel_ray.core.cluster_client import ChannelObserver, ClusterClient
from godel_ray.core.detector import ChannelState, probe_failure
from godel_ray.core.events import EventLog
from godel_ray.core.health import HealthTracker
from godel_ray.errors import AgentMoved, FailedPrecondition
from godel_ray.models import (
    Agent,
    AgentSnapshot,
    AgentStatus,
    Cluster,
    ClusterChanges,
    ClusterHealthState,
    ClusterStatus,
    EventKind,
    EventType,
    ExecChunk,
    ExecResult,
    FederationEvent,
    FreezeOptions,
    FreezeReport,
    JournalEntry,
    SiteCapacity,
    SpawnConfig,
    TransferMode,
    TransferPiece,
    TransferReport,
)
from godel_ray.raykit import metrics

log = logging.getLogger(__name__)

LOCAL_HEARTBEAT_TIMEOUT_S = 10.0  # local's "heartbeat" reads Ray's resources in-process: not a network probe
EVENT_RETRY_DELAY_S = 1.0  # after the event stream failed in a way the client did not retry
CHANNEL_RETRY_DELAY_S = 1.0  # after watching the channel's state failed
LOCAL_WORKDIR_NAME = "local"  # under ``settings.work_dir``: the ``local`` cluster's agents' workdirs
WORKDIR_MODE = 0o700
WAIT_CHANGES_MAX_S = 60.0  # the longest one ``wait_changes`` call is held
ROUTINE_HEALTH_EVERY_S = 5.0  # a routine heartbeat (nothing but times changed) is told this often at most


def local_workdir_root(state_dir: str | Path) -> Path:
    """The ``local`` runtime's workdir root, ``<work dir>/local``, outside the state dir (mode 0700)."""
    work = settings.work_dir(state_dir)
    root = work / LOCAL_WORKDIR_NAME
    for path in (work, root):
        path.mkdir(mode=WORKDIR_MODE, parents=True, exist_ok=True)
        path.chmod(WORKDIR_MODE)
    return root


def make_client(cluster: Cluster, state_dir: str | Path) -> ClusterClient:
    """The ClusterClient for ``cluster``: the in-process runtime for local, gRPC for a site.

    Raises ``InvalidArgument`` for an unreadable token file or bad TLS files.
    """
    if cluster.is_local:
        from godel_ray.agents.runtime import AgentRuntime

        return AgentRuntime(cluster.id, str(local_workdir_root(state_dir)), region=cluster.region,
                            cost_per_hour=cluster.cost_per_hour, max_agents=cluster.max_agents,
                            warm_pool_size=cluster.warm_pool_size or None,  # None: GODEL_LOCAL_WARM_POOL
                            direct_calls=True)  # proxies exec on local agents' actors directly
    from godel_ray.rpc.auth import read_token_file
    from godel_ray.rpc.client import GrpcClusterClient

    token = read_token_file(cluster.auth_token_file) if cluster.auth_token_file else ""
    assert cluster.endpoint is not None  # not local
    return GrpcClusterClient(cluster.endpoint, token=token, tls_ca_file=cluster.tls_ca_file,
                             tls_cert_file=cluster.tls_cert_file, tls_key_file=cluster.tls_key_file,
                             heartbeat_timeout_s=cluster.health.heartbeat_timeout_s, cluster_id=cluster.id)


class ClusterActor(InboundRelay):
    """One cluster's client, health and event buffer.

    Invariants: the control loops never die (each iteration catches, logs with the cluster id and
    carries on); a ``cluster.status`` event is buffered on a health transition only; buffered
    events carry this cluster's id and a local, rising ``seq``; ``health_version`` rises whenever
    the health changed in more than its suspicion level; every buffered event and every telling
    health change (``_news``) wakes the ``wait_changes`` calls waiting at once, a routine one within
    ``ROUTINE_HEALTH_EVERY_S`` of the previous answer.
    """

    def __init__(self, cluster: Cluster, state_dir: str) -> None:
        self.cluster = cluster
        self.state_dir = state_dir
        self.client: ClusterClient = make_client(cluster, state_dir)
        self.tracker = HealthTracker(cluster.id, cluster.health, maintenance=cluster.maintenance)
        self.buffer = EventLog()
        self.site_seq = 0 if cluster.is_local else self._stored_site_seq()
        self._tasks: list[asyncio.Task[None]] = []
        self._beat_now: asyncio.Event | None = None  # created on the actor's loop in start()
        self._fences: dict[str, int] = {}  # agent id -> the epoch it lives at elsewhere (or later here)
        self.incarnation = uuid.uuid4().hex  # this life of the actor: its buffer's seqs start at 1
        self.health_version = 0
        self._news_version = 0  # the health version of the last telling change
        self._answered_at = time.monotonic()
        self.reconnects = 0  # returns from offline
        self._told = self._telling(self.tracker.state)
        self._changed = asyncio.Event()  # set (and replaced) at every buffered event or health change
        self._inbound: dict[str, tuple[asyncio.Queue[TransferPiece | None], asyncio.Task[TransferReport]]] = {}

    def _stored_site_seq(self) -> int:
        # The runtime of ``local`` lives in this process and starts from 0 after a restart; a site
        # keeps its own log, so resume from what the balancer already stored.
        try:
            from godel_ray.control.store import open_store

            reader = open_store(self.state_dir, readonly=True)
            try:
                return reader.site_cursor(self.cluster.id)
            finally:
                reader.close()
        except Exception:  # noqa: BLE001 - no store yet: start from the beginning
            return 0

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> bool:
        """Start the control loops (idempotent). Returns True once they run."""
        if not self._tasks:
            self._beat_now = asyncio.Event()
            self._tasks = [asyncio.create_task(self._heartbeat_loop(), name=f"heartbeat-{self.cluster.id}"),
                           asyncio.create_task(self._event_loop(), name=f"events-{self.cluster.id}")]
            if isinstance(self.client, ChannelObserver):
                self._tasks.append(asyncio.create_task(self._channel_loop(self.client),
                                                       name=f"channel-{self.cluster.id}"))
        return True

    async def ping(self) -> str:
        await self.start()
        return self.cluster.id

    async def update(self, cluster: Cluster) -> None:
        """A new registry entry for this cluster (maintenance, limits, health settings)."""
        await self.start()
        self.cluster = cluster
        self.tracker.reconfigure(cluster.health)
        if cluster.is_local and hasattr(self.client, "max_agents"):
            self.client.max_agents = cluster.max_agents  # the in-process runtime enforces its own limit
        self.set_maintenance_now(cluster.maintenance)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        await self.client.close()

    # --- health ---------------------------------------------------------------------------------

    async def probe(self) -> SiteCapacity:
        """One heartbeat now (raises the client's error): registration checks reachability with it."""
        return await self.client.heartbeat()

    async def health(self) -> ClusterHealthState:
        await self.start()
        return self.tracker.state

    async def set_maintenance(self, on: bool) -> ClusterHealthState:
        await self.start()
        self.cluster = self.cluster.model_copy(update={"maintenance": on})
        self.set_maintenance_now(on)
        return self.tracker.state

    def set_maintenance_now(self, on: bool) -> None:
        self._observe(lambda now: self.tracker.set_maintenance(on, now))

    def _observe(self, update: Callable[[float], ClusterStatus | None]) -> None:
        """Feed one signal to the tracker; buffer a ``cluster.status`` event if the status changed;
        wake the waiting ``wait_changes`` if the health changed."""
        before = self.tracker.status
        after = update(time.time())
        if after is not None and after != before:
            self._emit_status(before, after)
        metrics.set_cluster_status(self.cluster.id, self.tracker.status)
        told = self._telling(self.tracker.state)
        if told != self._told:
            if self._told.offline_since is not None and told.offline_since is None:
                self.reconnects += 1  # reachable again (in maintenance or not)
            news = _news(told) != _news(self._told)
            self._told = told
            self.health_version += 1
            if news:
                self._news_version = self.health_version
                self._wake()

    @staticmethod
    def _telling(state: ClusterHealthState) -> ClusterHealthState:
        """What of ``state`` is worth waking the balancer for: all but the suspicion level."""
        return state.model_copy(update={"suspicion": 0.0})

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _heartbeat_once(self) -> None:
        settings = self.cluster.health
        started = time.monotonic()
        try:
            timeout_s = settings.heartbeat_timeout_s
            if self.cluster.is_local:
                timeout_s = max(timeout_s, LOCAL_HEARTBEAT_TIMEOUT_S)
            capacity = await asyncio.wait_for(self.client.probe(), timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure counts against health
            kind = probe_failure(exc)
            error = f"{type(exc).__name__}: {exc}"[:500]
            self._observe(lambda now: self.tracker.on_failure(error, now, kind))
        else:
            rtt_ms = (time.monotonic() - started) * 1000.0
            metrics.set_heartbeat_rtt(self.cluster.id, rtt_ms)
            self._observe(lambda now: self.tracker.on_success(rtt_ms, capacity, now))

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                await self._heartbeat_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("cluster %s: heartbeat iteration failed; carrying on", self.cluster.id)
            assert self._beat_now is not None
            try:
                await asyncio.wait_for(self._beat_now.wait(), self.tracker.next_probe_in_s())
            except TimeoutError:
                pass
            self._beat_now.clear()
            self._observe(self.tracker.tick)  # suspicion grows with silence, between probes too

    def _on_channel(self, state: ChannelState, now: float) -> ClusterStatus | None:
        return self.tracker.on_channel(state, now)

    async def _channel_loop(self, client: ChannelObserver) -> None:
        """Follow the channel's connectivity; a lost connection gets a probe at once."""
        while True:
            try:
                async for state in client.channel_changes():
                    was_ready = self.tracker.detector.channel is ChannelState.READY
                    self._observe(functools.partial(self._on_channel, state))
                    if was_ready and state is not ChannelState.READY:
                        self._refresh_soon()
            except asyncio.CancelledError:
                raise
            except Exception:  # a control loop never dies
                log.exception("cluster %s: watching the channel failed; carrying on", self.cluster.id)
            await asyncio.sleep(CHANNEL_RETRY_DELAY_S)

    def _refresh_soon(self) -> None:
        """Heartbeat now rather than at the next interval (capacity changed: spawn, kill)."""
        if self._beat_now is not None:
            self._beat_now.set()

    def _emit_status(self, before: ClusterStatus, after: ClusterStatus) -> None:
        state = self.tracker.state
        self._buffer(FederationEvent(
            kind=EventKind.CLUSTER, type=EventType.CLUSTER_STATUS, cluster_id=self.cluster.id,
            data={"from": before.value, "to": after.value, "error": state.last_error[:200],
                  "evidence": state.evidence}))

    def _buffer(self, event: FederationEvent) -> None:
        self.buffer.append(event)
        self._wake()

    # --- events ---------------------------------------------------------------------------------

    async def _event_loop(self) -> None:
        while True:
            try:
                async for event in self.client.events(self.site_seq):
                    self.site_seq = event.seq  # in order; may drop after a site restart
                    self._buffer(event.model_copy(update={"cluster_id": self.cluster.id}))
                    self._observe(self.tracker.on_stream_event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a control loop never dies
                log.warning("cluster %s: event stream failed (%s); resuming after seq %d",
                            self.cluster.id, exc, self.site_seq)
            await asyncio.sleep(EVENT_RETRY_DELAY_S)

    async def drain_events(self, since_local_seq: int) -> tuple[list[FederationEvent], int]:
        """Buffered events after ``since_local_seq`` (all of them if this actor restarted since), and
        the last site seq they cover (the balancer stores it as the resume cursor)."""
        changes = await self.wait_changes("", since_local_seq, self.health_version, 0.0)
        return changes.events, changes.site_seq

    async def wait_changes(self, incarnation: str, since_local_seq: int, health_version: int,
                           timeout_s: float) -> ClusterChanges:
        """The health and the events buffered after ``since_local_seq``, as soon as there is an event
        the caller has not seen or telling health news since ``health_version`` (routine news: within
        ``ROUTINE_HEALTH_EVERY_S`` of the previous answer); else after ``timeout_s`` (at most
        ``WAIT_CHANGES_MAX_S``), with the health as it is. ``timeout_s`` 0 answers at once.

        ``incarnation``: the actor's life the caller's cursor counts in (``""`` when the caller does
        not know it, as after a balancer restart: then the cursor is trusted unless it is ahead of the
        buffer). Another life's cursor means nothing here: every buffered event is answered.
        """
        await self.start()
        if (incarnation and incarnation != self.incarnation) or since_local_seq > self.buffer.last_seq:
            since_local_seq, health_version = 0, -1
        wait_s = min(timeout_s, WAIT_CHANGES_MAX_S)
        if health_version != self.health_version:  # routine news (at least): not later than its due time
            wait_s = min(wait_s, self._answered_at + ROUTINE_HEALTH_EVERY_S - time.monotonic())
        if since_local_seq >= self.buffer.last_seq and health_version >= self._news_version and wait_s > 0:
            try:
                await asyncio.wait_for(self._changed.wait(), wait_s)
            except TimeoutError:
                pass
        self._answered_at = time.monotonic()
        return ClusterChanges(incarnation=self.incarnation, health=self.tracker.state,
                              health_version=self.health_version, events=self.buffer.since(since_local_seq),
                              site_seq=self.site_seq, reconnects=self.reconnects)

    # --- fences ---------------------------------------------------------------------------------

    async def fence(self, agent_id: str, epoch: int) -> None:
        """``agent_id`` lives at ``epoch`` now (restored elsewhere): refuse commands for its older
        copies here. Idempotent; a later fence with a higher epoch wins."""
        self._fences[agent_id] = max(epoch, self._fences.get(agent_id, 0))
        fence_copy = getattr(self.client, "fence", None)  # local: the agent's actor refuses direct calls too
        if fence_copy is not None:
            await fence_copy(agent_id, self._fences[agent_id])

    def _check_fence(self, agent_id: str, epoch: int) -> None:
        fenced = self._fences.get(agent_id)
        if fenced is not None and epoch < fenced:  # epoch 0 ("do not check") is below any fence
            raise AgentMoved(f"agent {agent_id} was restored elsewhere at epoch {fenced}; its copy on cluster "
                             f"{self.cluster.id} is stale and serves nothing: ask the balancer where it lives",
                             agent_id=agent_id, cluster_id=self.cluster.id, epoch=fenced)

    # --- ClusterClient operations ---------------------------------------------------------------

    def _mine(self, agent: Agent) -> Agent:
        return agent if agent.cluster_id == self.cluster.id else agent.model_copy(
            update={"cluster_id": self.cluster.id})

    async def spawn(self, config: SpawnConfig, *, agent_id: str | None = None,
                    idempotency_key: str | None = None, epoch: int = 1) -> tuple[Agent, bool]:
        await self.start()
        agent, created = await self.client.spawn(config, agent_id=agent_id, idempotency_key=idempotency_key,
                                                 epoch=epoch)
        self._refresh_soon()
        return self._mine(agent), created

    async def kill(self, agent_id: str, *, epoch: int = 0, reason: str = "") -> Agent:
        await self.start()
        agent = await self.client.kill(agent_id, epoch=epoch, reason=reason)
        self._refresh_soon()
        return self._mine(agent)

    async def exec_stream(self, agent_id: str, command: str, *, timeout_s: float | None = None,
                          epoch: int = 0) -> AsyncIterator[ExecChunk]:
        self._check_fence(agent_id, epoch)
        async for chunk in self.client.exec_stream(agent_id, command, timeout_s=timeout_s, epoch=epoch):
            yield chunk

    async def exec(self, agent_id: str, command: str, *, timeout_s: float | None = None,
                   epoch: int = 0) -> ExecResult:
        """The whole command in one actor call, collected where it runs (one reply: the actor's on
        ``local``, the site's unary ``Exec`` on a remote cluster), never a message per chunk."""
        self._check_fence(agent_id, epoch)
        started = time.monotonic()
        result = await self.client.exec(agent_id, command, timeout_s=timeout_s, epoch=epoch)
        metrics.observe_exec_latency(self.cluster.id, time.monotonic() - started)
        return result

    async def agent_actor(self, agent_id: str, epoch: int) -> object:
        """The AgentActor handle of a ``local`` agent at ``epoch``, for a proxy's direct exec (the
        actor checks the epoch on every such call). A remote cluster has none to give."""
        self._check_fence(agent_id, epoch)
        lookup = getattr(self.client, "agent_actor", None)
        if lookup is None:
            raise FailedPrecondition(f"cluster {self.cluster.id} is remote: its agents are reached through it",
                                     cluster_id=self.cluster.id)
        handle: object = await lookup(agent_id, epoch)
        return handle

    async def status(self, agent_id: str) -> Agent:
        return self._mine(await self.client.status(agent_id))

    async def list_agents(self, status: AgentStatus | None = None,
                          labels: dict[str, str] | None = None) -> list[Agent]:
        return [self._mine(a) for a in await self.client.list_agents(status, labels)]

    async def export(self, agent_id: str, *, epoch: int = 0, freeze: bool = False) -> AgentSnapshot:
        self._check_fence(agent_id, epoch)
        return await self.client.export(agent_id, epoch=epoch, freeze=freeze)

    async def import_(self, snapshot: AgentSnapshot) -> Agent:
        agent = self._mine(await self.client.import_(snapshot))
        self._refresh_soon()
        return agent

    async def resume(self, agent_id: str, *, epoch: int = 0) -> Agent:
        self._check_fence(agent_id, epoch)
        return self._mine(await self.client.resume(agent_id, epoch=epoch))

    # --- protocol v2: workdir streams piece by piece --------------------------------------------

    async def prepare(self, agent: Agent) -> Agent:
        agent = self._mine(await self.client.prepare(agent))
        self._refresh_soon()
        return agent

    async def freeze(self, agent_id: str, *, epoch: int = 0, options: FreezeOptions | None = None) -> FreezeReport:
        self._check_fence(agent_id, epoch)
        report = await self.client.freeze(agent_id, epoch=epoch, options=options)
        return report.model_copy(update={"agent": self._mine(report.agent)})

    async def send(self, agent_id: str, mode: TransferMode, *, epoch: int = 0) -> AsyncIterator[TransferPiece]:
        """The agent's workdir stream; called as a Ray streaming generator, each piece one object."""
        self._check_fence(agent_id, epoch)
        async for piece in self.client.send(agent_id, mode, epoch=epoch):
            yield piece

    async def activate(self, agent_id: str, *, epoch: int = 0) -> Agent:
        agent = self._mine(await self.client.activate(agent_id, epoch=epoch))
        self._refresh_soon()
        return agent

    async def journal(self, agent_id: str) -> list[JournalEntry]:
        """The agent's command journal (local only: remote journals are mirrored from events)."""
        journal = getattr(self.client, "journal", None)
        if journal is None:
            raise FailedPrecondition(f"cluster {self.cluster.id} has no direct journal access; the balancer "
                                     "mirrors remote journals from command events")
        entries: list[JournalEntry] = await journal(agent_id)
        return entries


def _news(state: ClusterHealthState) -> tuple[object, ...]:
    """What of a health state is worth telling the balancer at once (the rest is routine)."""
    return (state.status, state.evidence, state.channel, state.offline_since, state.last_error, state.capacity)


__all__ = ["ROUTINE_HEALTH_EVERY_S", "ClusterActor", "local_workdir_root", "make_client"]
