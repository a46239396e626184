"""MultiClusterLoadBalancer (the BalancerActor): registry, placement, the agent table, reconciliation.

A plain async class; ``godel_ray.control.factory`` makes it a named, detached, restartable Ray
actor. It is the single writer of federation state (``StateStore``); decisions are the pure
functions of ``godel_ray.core`` (placement, health); this class carries them out.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections import deque
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

from godel_ray.control import factory
from godel_ray.control.cluster_actor import LOCAL_WORKDIR, make_client, site_cursor_key
from godel_ray.control.failover import Failover
from godel_ray.control.migrator import MigrationExecutor, cooldown_from_env
from godel_ray.control.store import CheckpointRecord, StateStore
from godel_ray.core.cluster_client import KILL_REASON_MIGRATED
from godel_ray.core.endpoint import parse_endpoint
from godel_ray.core.placement import ClusterView, no_placement_message, place
from godel_ray.core.validation import validate_cluster_id, validate_spawn_config
from godel_ray.errors import (
    AgentNotFound,
    AlreadyExists,
    ClusterNotFound,
    DeadlineExceeded,
    FailedPrecondition,
    GodelError,
    InvalidArgument,
    NoPlacement,
)
from godel_ray.models import (
    LOCAL_CLUSTER_ID,
    Agent,
    AgentSnapshot,
    AgentStatus,
    Cluster,
    ClusterCapabilities,
    ClusterHealthState,
    ClusterInfo,
    ClusterStats,
    ClusterStatus,
    EventKind,
    EventType,
    FederationEvent,
    JournalEntry,
    Migration,
    PlacementDecision,
    SpawnConfig,
    new_agent_id,
)
from godel_ray.raykit import metrics, rayapi

log = logging.getLogger(__name__)
T = TypeVar("T")

LOCAL_ID = LOCAL_CLUSTER_ID
DEFAULT_LOCAL_MAX_AGENTS = 100
CONTROL_LOOP_INTERVAL_S = 1.0
CONTROL_CALL_TIMEOUT_S = 5.0  # one health/drain call to a ClusterActor
PROBE_TIMEOUT_S = 10.0  # registration's reachability check
RECONCILE_TIMEOUT_S = 30.0  # one cluster's ListAgents at startup
ORPHAN_SWEEP_INTERVAL_S = 5.0  # how often every cluster's agents are checked against the table
ORPHAN_REASON = "orphan: its spawn was never acknowledged (the balancer restarted mid-spawn)"
SPAWN_TIMEOUT_S = 180.0  # a new agent actor may need a fresh worker process
CLEANUP_TIMEOUT_S = 10.0  # best-effort kill of a half-spawned agent
CHECKPOINT_DIR = "checkpoints"


def _final_status(event: FederationEvent) -> AgentStatus | None:
    """The final status an agent event reports (``agent.status`` with a final ``status``), if any."""
    if event.type != EventType.AGENT_STATUS:
        return None
    try:
        status = AgentStatus(event.data.get("status", ""))
    except ValueError:
        return None
    return status if status.is_final else None


async def _bounded(awaitable: Awaitable[T], timeout_s: float | None, what: str) -> T:
    if timeout_s is None:
        return await awaitable
    try:
        return await asyncio.wait_for(_as_coro(awaitable), timeout_s)
    except TimeoutError as exc:
        raise DeadlineExceeded(f"{what} did not answer within {timeout_s:g} s") from exc


async def _as_coro(awaitable: Awaitable[T]) -> T:
    return await awaitable


class MultiClusterLoadBalancer:
    """The BalancerActor.

    Invariants:
    - single writer: only this actor writes the state store, and it writes before it answers;
    - an agent row exists iff its cluster accepted the spawn (a failed spawn leaves nothing);
    - an idempotency key maps to at most one agent, forever;
    - ``local`` is always registered;
    - agents are never dropped silently: one a cluster no longer has is marked ``failed`` with why;
    - the control loop never blocks on one cluster and never dies.
    After a restart (Ray's ``max_restarts``, or ``swarmctl down``/``up``) everything is reloaded from
    the store and reconciled with each cluster's ``list_agents`` before the first answer.
    """

    def __init__(self, state_dir: str) -> None:
        self.state_dir = Path(state_dir)
        self.store = StateStore.for_state_dir(self.state_dir)
        self._actors: dict[str, Any] = {}
        self._health: dict[str, ClusterHealthState] = {h.cluster_id: h for h in self.store.all_health()}
        self._cursors: dict[str, int] = {}  # per cluster: last ClusterActor buffer seq drained
        self._reserved: dict[str, int] = {}  # spawns in flight, per cluster (counted by placement)
        self._inflight_keys: dict[str, asyncio.Future[Agent]] = {}
        self._spawning: set[str] = set()  # agent ids this balancer is creating now: not orphans
        self._last_sweep = time.monotonic()
        self._ready: asyncio.Task[None] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        if self.store.cluster(LOCAL_ID) is None:
            self.store.put_cluster(Cluster(id=LOCAL_ID, endpoint=None, region="local",
                                           max_agents=self._local_max_agents()))
        for cluster in self.store.clusters():
            self._actors[cluster.id] = factory.cluster_actor(cluster, str(self.state_dir))
            self._cursors[cluster.id] = self.store.meta_int(f"buffer_seq:{cluster.id}")
        self.migrator = MigrationExecutor(self.store, self._call, self._emit, cooldown_s=cooldown_from_env(),
                                          local_id=LOCAL_ID)
        self.failover = Failover(self.store, self.state_dir, self._call, self._emit, views=self._views,
                                 health=self._health.get, busy=lambda: set(self.migrator.in_progress),
                                 local_id=LOCAL_ID)

    @staticmethod
    def _local_max_agents() -> int:
        try:
            import ray

            cpus = int(ray.cluster_resources().get("CPU", 0))  # type: ignore[no-untyped-call]
        except Exception:  # noqa: BLE001 - not inside Ray (plain-class tests): use the default
            cpus = 0
        return cpus if cpus > 0 else DEFAULT_LOCAL_MAX_AGENTS

    # --- readiness ------------------------------------------------------------------------------

    async def _ensure_ready(self) -> None:
        if self._ready is None:
            self._ready = asyncio.create_task(self._startup())
        await asyncio.shield(self._ready)

    async def _startup(self) -> None:
        await asyncio.gather(*(self._start_actor(cid) for cid in list(self._actors)))
        await asyncio.gather(*(self._reconcile(c) for c in self.store.clusters()))
        try:
            await self.migrator.recover_unfinished()
        except Exception:
            log.exception("recovering unfinished migrations failed; carrying on")
        self._loop_task = asyncio.create_task(self._control_loop())

    async def _start_actor(self, cluster_id: str) -> None:
        try:
            await self._call(cluster_id, "start", timeout_s=RECONCILE_TIMEOUT_S)
        except GodelError as exc:
            log.warning("cluster %s: actor did not start: %s", cluster_id, exc)

    async def ping(self) -> str:
        await self._ensure_ready()
        return "ok"

    async def _call(self, cluster_id: str, method: str, *args: Any, timeout_s: float | None = None,
                    **kwargs: Any) -> Any:
        """Call a ClusterActor method; Ray errors come back as GodelErrors."""
        actor = self._actors.get(cluster_id)
        if actor is None:
            raise ClusterNotFound(f"cluster {cluster_id!r} is not registered", cluster_id=cluster_id)
        with rayapi.mapped(f"cluster {cluster_id}"):
            ref = getattr(actor, method).remote(*args, **kwargs)
            return await _bounded(ref, timeout_s, f"cluster {cluster_id}")

    # --- reconciliation and restore -------------------------------------------------------------

    async def _reconcile(self, cluster: Cluster) -> None:
        """Compare the table with what ``cluster`` really hosts; mark or restore what it lost."""
        try:
            present = {a.id: a for a in await self._call(cluster.id, "list_agents", timeout_s=RECONCILE_TIMEOUT_S)}
        except GodelError as exc:
            log.warning("cluster %s: cannot reconcile now (%s); its agents keep their last known state",
                        cluster.id, exc)
            return
        for agent in self.store.agents(cluster_id=cluster.id):
            if agent.status.is_final:
                continue
            there = present.get(agent.id)
            if there is not None:
                self._update_from_site(agent, there)
            elif cluster.is_local and self.store.checkpoint(agent.id) is not None:
                await self._restore(agent)
            else:
                self._mark_failed(agent, f"not found on cluster {cluster.id} after restart")
        await self._remove_orphans(cluster.id, list(present.values()))

    async def _remove_orphans(self, cluster_id: str, present: list[Agent]) -> None:
        """Kill live agents ``cluster_id`` hosts that the table does not know.

        Only a spawn the balancer died in the middle of leaves such an agent: its row was never
        written, so its spawn was never acknowledged, and nobody holds its id. Adopting it would
        hand out an agent nobody asked for; killing it is the safe rule. Spawns in flight in this
        balancer (``_spawning``) are not orphans.
        """
        for there in present:
            if there.status.is_final or there.id in self._spawning or self.store.agent(there.id) is not None:
                continue
            try:
                await self._call(cluster_id, "kill", there.id, reason=ORPHAN_REASON, timeout_s=CLEANUP_TIMEOUT_S)
            except AgentNotFound:
                pass
            except GodelError as exc:
                log.warning("cluster %s: orphan agent %s not removed yet: %s", cluster_id, there.id, exc)
                continue
            self._emit(EventKind.AGENT, EventType.AGENT_ORPHAN_REMOVED, cluster_id, there.id, reason=ORPHAN_REASON)
            log.warning("cluster %s: killed orphan agent %s (%s)", cluster_id, there.id, ORPHAN_REASON)

    async def _sweep_orphans(self, cluster_id: str) -> None:
        try:
            present: list[Agent] = await self._call(cluster_id, "list_agents", timeout_s=CONTROL_CALL_TIMEOUT_S)
        except GodelError as exc:
            log.info("cluster %s: orphan sweep skipped: %s", cluster_id, exc)
            return
        if cluster_id in self._actors:
            await self._remove_orphans(cluster_id, present)

    def _update_from_site(self, agent: Agent, there: Agent) -> Agent:
        if there.epoch < agent.epoch:
            return agent  # a stale copy: the table's location is newer
        current = self.store.agent(agent.id)
        if current is not None and (current.cluster_id, current.epoch) != (agent.cluster_id, agent.epoch):
            return current  # moved (migration commit, failover) while we asked the old location
        updated = agent.model_copy(update={
            # a reason recorded here (a failover's loss note) stays until the site reports its own
            "status": there.status, "status_reason": there.status_reason or agent.status_reason,
            "epoch": there.epoch, "started_at": there.started_at, "finished_at": there.finished_at,
            "node_id": there.node_id, "gpu_ids": there.gpu_ids})
        if updated != agent:
            self.store.put_agent(updated)
        return updated

    def _mark_failed(self, agent: Agent, reason: str) -> Agent:
        failed = agent.model_copy(update={"status": AgentStatus.FAILED, "status_reason": reason,
                                          "finished_at": time.time()})
        self.store.put_agent(failed)
        self._emit(EventKind.AGENT, EventType.AGENT_FAILED, agent.cluster_id, agent.id, reason=reason)
        log.warning("agent %s: %s", agent.id, reason)
        return failed

    def _checkpoint_paths(self, agent_id: str) -> tuple[Path, Path]:
        root = self.state_dir / CHECKPOINT_DIR
        return root / f"{agent_id}.tar.gz", root / f"{agent_id}.json"

    async def _restore(self, agent: Agent) -> None:
        """Recreate a local agent from the checkpoint ``prepare_shutdown`` took, with epoch+1."""
        record = self.store.checkpoint(agent.id)
        assert record is not None
        try:
            meta = AgentSnapshot.model_validate_json(Path(record.meta_path).read_text())
            archive = Path(record.archive_path).read_bytes()
            restored = meta.agent.model_copy(update={"epoch": agent.epoch + 1, "cluster_id": LOCAL_ID})
            # The old working directory outlived Ray; the checkpoint is the truth now.
            shutil.rmtree(self.state_dir / LOCAL_WORKDIR / agent.id, ignore_errors=True)
            snapshot = AgentSnapshot(agent=restored, journal=meta.journal, archive=archive, sha256=record.sha256)
            there = await self._call(LOCAL_ID, "import_", snapshot, timeout_s=SPAWN_TIMEOUT_S)
        except (GodelError, OSError, ValueError) as exc:
            self._mark_failed(agent, f"not found on cluster {LOCAL_ID} after restart, and its checkpoint "
                                     f"could not be restored: {exc}")
            return
        self.store.put_agent(agent.model_copy(update={
            "status": there.status, "status_reason": there.status_reason, "epoch": there.epoch,
            "cluster_id": LOCAL_ID, "node_id": there.node_id}))
        self.store.delete_checkpoint(agent.id)
        for path in self._checkpoint_paths(agent.id):
            path.unlink(missing_ok=True)
        self._emit(EventKind.AGENT, EventType.AGENT_RESTORED, LOCAL_ID, agent.id, epoch=str(there.epoch))

    async def prepare_shutdown(self) -> int:
        """Checkpoint every non-final local agent (frozen) so ``up`` can restore it. Returns how many."""
        await self._ensure_ready()
        root = self.state_dir / CHECKPOINT_DIR
        root.mkdir(parents=True, exist_ok=True)
        saved = 0
        for agent in self.store.agents(cluster_id=LOCAL_ID):
            if agent.status.is_final:
                continue
            try:
                snapshot: AgentSnapshot = await self._call(LOCAL_ID, "export", agent.id, epoch=agent.epoch,
                                                           freeze=True, timeout_s=SPAWN_TIMEOUT_S)
            except GodelError as exc:
                log.warning("agent %s: not checkpointed before shutdown: %s", agent.id, exc)
                continue
            archive_path, meta_path = self._checkpoint_paths(agent.id)
            archive_path.write_bytes(snapshot.archive)
            meta_path.write_text(snapshot.model_copy(update={"archive": b""}).model_dump_json())
            self.store.put_checkpoint(CheckpointRecord(
                agent.id, agent.epoch, snapshot.taken_at, str(archive_path), str(meta_path), snapshot.sha256,
                snapshot.size_bytes))
            saved += 1
        return saved

    # --- control loop ---------------------------------------------------------------------------

    async def _control_loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                polls = [self._poll_cluster(cid) for cid in list(self._actors)]
                if started - self._last_sweep >= ORPHAN_SWEEP_INTERVAL_S:
                    self._last_sweep = started
                    polls += [self._sweep_orphans(cid) for cid in list(self._actors)]
                await asyncio.gather(*polls)
                await self.failover.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("control loop iteration failed; carrying on")
            await asyncio.sleep(max(0.0, CONTROL_LOOP_INTERVAL_S - (time.monotonic() - started)))

    async def _poll_cluster(self, cluster_id: str) -> None:
        try:
            health: ClusterHealthState = await self._call(cluster_id, "health", timeout_s=CONTROL_CALL_TIMEOUT_S)
            events, site_seq = await self._call(cluster_id, "drain_events", self._cursors.get(cluster_id, 0),
                                                timeout_s=CONTROL_CALL_TIMEOUT_S)
        except GodelError as exc:
            log.warning("cluster %s: poll failed: %s", cluster_id, exc)
            return
        if cluster_id not in self._actors:
            return  # unregistered meanwhile
        if self._health.get(cluster_id) != health:
            self._health[cluster_id] = health
            self.store.put_health(health)
        if events:
            self.store.append_events(e.model_copy(update={"cluster_id": cluster_id}) for e in events)
            self._cursors[cluster_id] = events[-1].seq
            self.store.put_meta(f"buffer_seq:{cluster_id}", events[-1].seq)
            for event in events:
                self._apply_event(cluster_id, event)
        if self.store.meta(site_cursor_key(cluster_id), 0) != site_seq:
            self.store.put_meta(site_cursor_key(cluster_id), site_seq)

    def _apply_event(self, cluster_id: str, event: FederationEvent) -> None:
        """Follow an agent's end (lifetime, crash, kill) reported by its cluster into the table."""
        final = _final_status(event)
        if final is None or not event.agent_id:
            return
        agent = self.store.agent(event.agent_id)
        if agent is None or agent.cluster_id != cluster_id or agent.status.is_final:
            return  # unknown, or an event from a copy that moved away
        if event.data.get("reason") == KILL_REASON_MIGRATED:
            return  # the end of a copy that moved away (it may have moved back here since)
        epoch = event.data.get("epoch")
        if epoch and epoch.isdigit() and int(epoch) < agent.epoch:
            return
        self.store.put_agent(agent.model_copy(update={
            "status": final, "status_reason": event.data.get("reason", agent.status_reason),
            "finished_at": event.ts}))

    def _emit(self, kind: EventKind, type_: str, cluster_id: str, agent_id: str = "", **data: str) -> None:
        self.store.append_events([FederationEvent(kind=kind, type=type_, cluster_id=cluster_id, agent_id=agent_id,
                                                  data=data)])

    # --- registry -------------------------------------------------------------------------------

    def _cluster(self, cluster_id: str) -> Cluster:
        cluster = self.store.cluster(cluster_id)
        if cluster is None:
            known = ", ".join(c.id for c in self.store.clusters())
            raise ClusterNotFound(f"cluster {cluster_id!r} is not registered (known: {known}); see "
                                  "`swarmctl cluster list`", cluster_id=cluster_id)
        return cluster

    def _health_of(self, cluster_id: str) -> ClusterHealthState:
        return self._health.get(cluster_id) or ClusterHealthState(cluster_id=cluster_id)

    def _info(self, cluster: Cluster, counts: dict[str, int] | None = None) -> ClusterInfo:
        counts = self.store.active_counts() if counts is None else counts
        return ClusterInfo(cluster=cluster, health=self._health_of(cluster.id), agents=counts.get(cluster.id, 0))

    async def register_cluster(self, cluster: Cluster) -> ClusterInfo:
        """Probe ``cluster`` with a heartbeat using its credentials, then register it.

        Unreachable, wrong token, bad TLS files, a duplicate id: an error, and nothing registered.
        """
        await self._ensure_ready()
        validate_cluster_id(cluster.id)
        if cluster.is_local or cluster.id == LOCAL_ID:
            raise InvalidArgument(f"cluster {cluster.id!r}: a remote cluster needs an endpoint, and the id "
                                  f"{LOCAL_ID!r} is reserved for the control plane's own cluster")
        assert cluster.endpoint is not None
        parse_endpoint(cluster.endpoint)
        if self.store.cluster(cluster.id) is not None or cluster.id in self._actors:
            raise AlreadyExists(f"cluster {cluster.id!r} is already registered; remove it first "
                                f"(`swarmctl cluster remove {cluster.id}`) or pick another name",
                                cluster_id=cluster.id)
        client = make_client(cluster, self.state_dir)
        started = time.monotonic()
        try:
            capacity = await _bounded(client.heartbeat(), PROBE_TIMEOUT_S, f"cluster {cluster.id} at "
                                                                            f"{cluster.endpoint}")
        finally:
            await client.close()
        rtt_ms = (time.monotonic() - started) * 1000.0
        if capacity.gpu_types and not cluster.capabilities.gpu_types:
            cluster = cluster.model_copy(update={"capabilities": ClusterCapabilities(
                gpu=True, gpu_types=list(capacity.gpu_types), flags=list(cluster.capabilities.flags))})
        now = time.time()
        health = ClusterHealthState(cluster_id=cluster.id, rtt_ms=rtt_ms, last_heartbeat_at=now,
                                    last_success_at=now, capacity=capacity,
                                    status=ClusterStatus.MAINTENANCE if cluster.maintenance else ClusterStatus.ACTIVE)
        self.store.put_cluster(cluster)
        self.store.put_health(health)
        self._health[cluster.id] = health
        self._cursors[cluster.id] = 0
        self.store.put_meta(f"buffer_seq:{cluster.id}", 0)
        self.store.put_meta(site_cursor_key(cluster.id), 0)
        try:
            self._actors[cluster.id] = factory.cluster_actor(cluster, str(self.state_dir))
            await self._call(cluster.id, "start", timeout_s=RECONCILE_TIMEOUT_S)
        except GodelError:
            await self._drop_cluster(cluster.id)
            raise
        self._emit(EventKind.CLUSTER, EventType.CLUSTER_REGISTERED, cluster.id, endpoint=cluster.endpoint or "",
                   region=cluster.region)
        return self._info(cluster)

    async def _drop_cluster(self, cluster_id: str) -> None:
        actor = self._actors.pop(cluster_id, None)
        self._health.pop(cluster_id, None)
        self._cursors.pop(cluster_id, None)
        self.store.delete_cluster(cluster_id)
        if actor is not None:
            try:
                with rayapi.mapped(f"cluster {cluster_id}"):
                    await _bounded(actor.close.remote(), CLEANUP_TIMEOUT_S, f"cluster {cluster_id}")
            except GodelError as exc:
                log.warning("cluster %s: close failed: %s", cluster_id, exc)
            import ray

            ray.kill(actor, no_restart=True)

    async def unregister_cluster(self, cluster_id: str, force: bool = False) -> None:
        await self._ensure_ready()
        self._cluster(cluster_id)
        if cluster_id == LOCAL_ID:
            raise FailedPrecondition(f"cluster {LOCAL_ID!r} is the control plane's own and cannot be removed")
        active = [a for a in self.store.agents(cluster_id=cluster_id) if not a.status.is_final]
        if active and not force:
            raise FailedPrecondition(
                f"cluster {cluster_id!r} still hosts {len(active)} agent(s) ({', '.join(a.id for a in active[:5])}"
                f"{'...' if len(active) > 5 else ''}): kill or migrate them, or remove with --force",
                cluster_id=cluster_id)
        for agent in active:
            self._mark_failed(agent, f"cluster {cluster_id} was removed from the federation")
        await self._drop_cluster(cluster_id)
        self._emit(EventKind.CLUSTER, EventType.CLUSTER_UNREGISTERED, cluster_id)

    async def update_cluster(self, cluster_id: str, changes: dict[str, Any]) -> ClusterInfo:
        """Change registry fields of a cluster (``max_agents``, ``cost_per_hour``, ``load_threshold`` ...)."""
        await self._ensure_ready()
        cluster = self._cluster(cluster_id)
        forbidden = {"id", "endpoint", "created_at"} & set(changes)
        if forbidden:
            raise InvalidArgument(f"cannot change {', '.join(sorted(forbidden))} of a registered cluster: "
                                  "remove it and add it again")
        try:
            updated = Cluster.model_validate({**cluster.model_dump(), **changes})
        except ValueError as exc:
            raise InvalidArgument(f"invalid change to cluster {cluster_id!r}: {exc}") from exc
        self.store.put_cluster(updated)
        await self._call(cluster_id, "update", updated, timeout_s=CONTROL_CALL_TIMEOUT_S)
        self._health[cluster_id] = await self._call(cluster_id, "health", timeout_s=CONTROL_CALL_TIMEOUT_S)
        self.store.put_health(self._health[cluster_id])
        return self._info(updated)

    async def list_clusters(self) -> list[ClusterInfo]:
        await self._ensure_ready()
        counts = self.store.active_counts()
        return [self._info(c, counts) for c in self.store.clusters()]

    async def get_cluster(self, cluster_id: str) -> ClusterInfo:
        await self._ensure_ready()
        return self._info(self._cluster(cluster_id))

    async def health(self) -> list[ClusterHealthState]:
        await self._ensure_ready()
        return [self._health_of(c.id) for c in self.store.clusters()]

    async def stats(self) -> list[ClusterStats]:
        await self._ensure_ready()
        counts = self.store.active_counts()
        out = []
        for cluster in self.store.clusters():
            health = self._health_of(cluster.id)
            active = counts.get(cluster.id, 0)
            out.append(ClusterStats(cluster_id=cluster.id, status=health.status,
                                    agents_by_status=self.store.counts_by_status(cluster.id),
                                    capacity=health.capacity, rtt_ms=health.rtt_ms,
                                    load=active / cluster.max_agents if cluster.max_agents > 0 else 1.0))
        return out

    async def set_maintenance(self, cluster_id: str, on: bool) -> ClusterInfo:
        await self._ensure_ready()
        cluster = self._cluster(cluster_id).model_copy(update={"maintenance": on})
        self.store.put_cluster(cluster)
        health: ClusterHealthState = await self._call(cluster_id, "set_maintenance", on,
                                                      timeout_s=CONTROL_CALL_TIMEOUT_S)
        self._health[cluster_id] = health
        self.store.put_health(health)
        return self._info(cluster)

    async def regions(self) -> dict[str, list[str]]:
        await self._ensure_ready()
        out: dict[str, list[str]] = {}
        for cluster in self.store.clusters():
            out.setdefault(cluster.region, []).append(cluster.id)
        return out

    # --- placement ------------------------------------------------------------------------------

    def _views(self) -> list[ClusterView]:
        counts = self.store.active_counts()
        return [ClusterView(cluster=c, health=self._health_of(c.id),
                            active_agents=counts.get(c.id, 0) + self._reserved.get(c.id, 0))
                for c in self.store.clusters()]

    async def plan(self, config: SpawnConfig) -> PlacementDecision:
        """Where ``config`` would go now; nothing is spawned or recorded."""
        await self._ensure_ready()
        return place(validate_spawn_config(config), self._views(), local_id=LOCAL_ID)

    # --- agents ---------------------------------------------------------------------------------

    async def spawn(self, config: SpawnConfig) -> Agent:
        """Validate, place, spawn on the chosen cluster, record; the same key returns the same agent."""
        await self._ensure_ready()
        validate_spawn_config(config)
        key = config.idempotency_key
        if key is not None:
            known = self.store.idempotent_agent(key)
            if known is not None:
                return self._agent(known)
            pending = self._inflight_keys.get(key)
            if pending is not None:
                return await asyncio.shield(pending)
            future: asyncio.Future[Agent] = asyncio.get_running_loop().create_future()
            self._inflight_keys[key] = future
            try:
                agent = await self._spawn(config, key)
            except BaseException as exc:
                future.set_exception(exc)
                future.exception()  # retrieved: no "never retrieved" warning when nobody else waits
                raise
            else:
                future.set_result(agent)
                return agent
            finally:
                self._inflight_keys.pop(key, None)
        return await self._spawn(config, None)

    async def _spawn(self, config: SpawnConfig, key: str | None) -> Agent:
        decision = place(config, self._views(), local_id=LOCAL_ID)
        if decision.chosen is None:
            raise NoPlacement(no_placement_message(decision, config), reasons=dict(decision.rejections),
                              cluster_id=config.cluster or "")
        chosen = decision.chosen
        agent_id = new_agent_id()
        decision = decision.model_copy(update={"agent_id": agent_id})
        self._reserved[chosen] = self._reserved.get(chosen, 0) + 1
        self._spawning.add(agent_id)
        try:
            try:
                spawned: tuple[Agent, bool] = await self._call(
                    chosen, "spawn", config, agent_id=agent_id, idempotency_key=key, epoch=1,
                    timeout_s=SPAWN_TIMEOUT_S)
            except GodelError:
                await self._cleanup_half_spawn(chosen, agent_id)
                raise
            agent = spawned[0].model_copy(update={"cluster_id": chosen})
            self.store.put_spawn(agent, decision, key)
        finally:
            self._reserved[chosen] -= 1
            self._spawning.discard(agent_id)
        self._emit(EventKind.AGENT, EventType.AGENT_PLACED, chosen, agent.id, rule=decision.rule)
        metrics.record_placement(chosen, decision.rule)
        return agent

    async def _cleanup_half_spawn(self, cluster_id: str, agent_id: str) -> None:
        # The cluster may have created the agent before the failure reached us (a lost reply).
        try:
            await self._call(cluster_id, "kill", agent_id, reason="spawn failed", timeout_s=CLEANUP_TIMEOUT_S)
        except GodelError:
            pass

    def _agent(self, agent_id: str) -> Agent:
        return self.store.require_agent(agent_id)

    async def kill(self, agent_id: str) -> Agent:
        await self._ensure_ready()
        agent = self._agent(agent_id)
        if agent.status.is_final:
            return agent
        try:
            there: Agent = await self._call(agent.cluster_id, "kill", agent_id, epoch=agent.epoch,
                                            reason="killed by user", timeout_s=SPAWN_TIMEOUT_S)
        except AgentNotFound:
            there = agent.model_copy(update={"status": AgentStatus.TERMINATED, "status_reason": "killed by user",
                                             "finished_at": time.time()})
        killed = agent.model_copy(update={"status": there.status, "status_reason": there.status_reason,
                                          "finished_at": there.finished_at or time.time()})
        self.store.put_agent(killed)
        return killed

    async def status(self, agent_id: str) -> Agent:
        """The agent as its cluster reports it now (the table's row if the cluster cannot answer)."""
        await self._ensure_ready()
        agent = self._agent(agent_id)
        if agent.status.is_final:
            return agent
        try:
            there = await self._call(agent.cluster_id, "status", agent_id, timeout_s=CONTROL_CALL_TIMEOUT_S)
        except AgentNotFound:
            return self._mark_failed(agent, f"not found on cluster {agent.cluster_id}")
        except GodelError as exc:
            log.info("agent %s: status from the table, cluster unavailable: %s", agent_id, exc)
            return agent
        return self._update_from_site(agent, there)

    async def list_agents(self, status: AgentStatus | str | None = None, labels: dict[str, str] | None = None,
                          cluster: str | None = None, model: str | None = None) -> list[Agent]:
        await self._ensure_ready()
        return self.store.agents(cluster_id=cluster, status=status, labels=labels, model=model)

    async def locate(self, agent_id: str) -> tuple[str, int]:
        """Where the agent lives now: (cluster id, epoch)."""
        await self._ensure_ready()
        agent = self._agent(agent_id)
        return agent.cluster_id, agent.epoch

    async def explain(self, agent_id: str) -> PlacementDecision:
        await self._ensure_ready()
        self._agent(agent_id)
        decision = self.store.decision(agent_id)
        if decision is None:
            raise AgentNotFound(f"no placement decision is recorded for agent {agent_id!r}", agent_id=agent_id)
        return decision

    async def journal(self, agent_id: str) -> list[JournalEntry]:
        """Local: from the agent itself. Remote: mirrored from the site's ``command.finished`` events."""
        await self._ensure_ready()
        agent = self._agent(agent_id)
        if agent.cluster_id == LOCAL_ID and not agent.status.is_final:
            try:
                entries: list[JournalEntry] = await self._call(LOCAL_ID, "journal", agent_id,
                                                               timeout_s=CONTROL_CALL_TIMEOUT_S)
                return entries
            except (AgentNotFound, FailedPrecondition):
                pass
        return journal_from_events(self.store.events(agent_id=agent_id, types=(EventType.COMMAND_STARTED, EventType.COMMAND_FINISHED),
                                                     limit=1_000_000))

    async def events_since(self, since_seq: int = 0, limit: int = 1000) -> list[FederationEvent]:
        await self._ensure_ready()
        return self.store.events(since_seq, limit)

    async def migrate(self, agent_id: str, target: str, wait: bool = True) -> Migration:
        """Move a live agent to ``target`` (``godel_ray.control.migrator``): exactly once, rolled back
        on any failure before the commit. ``wait=False`` returns the record as started; poll
        ``migrations``. Refusals (unknown agent or cluster, same cluster, no capacity, cooldown,
        already migrating) raise before anything happens."""
        await self._ensure_ready()
        agent = self.store.agent(agent_id)
        views = {v.cluster.id: v for v in self._views()}
        self.migrator.validate(agent, views.get(agent.cluster_id) if agent else None, views.get(target), target)
        assert agent is not None  # validate refused an unknown agent
        migration = self.migrator.begin(agent, target)
        task = self.migrator.start(migration, agent)
        if not wait:
            return migration.model_copy(deep=True)
        return await asyncio.shield(task)

    async def migrations(self, agent_id: str | None = None) -> list[Migration]:
        await self._ensure_ready()
        return self.store.migrations(agent_id)


def journal_from_events(events: list[FederationEvent]) -> list[JournalEntry]:
    """Rebuild a journal from ``command.started``/``command.finished`` events (the remote mirror).

    Commands on one agent run one at a time in arrival order, so finishes pair with starts FIFO.
    """
    started: deque[FederationEvent] = deque()
    out: list[JournalEntry] = []
    for event in events:
        if event.type == EventType.COMMAND_STARTED:
            started.append(event)
            continue
        if event.type != EventType.COMMAND_FINISHED:
            continue
        start = started.popleft() if started else None
        data = event.data
        exit_code = data.get("exit_code", "")
        duration_s = _float(data.get("duration_s", ""))
        out.append(JournalEntry(
            seq=len(out) + 1, command=start.data.get("command", "") if start else "",
            exit_code=int(exit_code) if exit_code.lstrip("-").isdigit() else None,
            started_at=start.ts if start else event.ts - duration_s, duration_s=duration_s,
            timed_out=data.get("timed_out", "").lower() in ("true", "1")))
    return out


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


__all__ = ["CONTROL_LOOP_INTERVAL_S", "LOCAL_ID", "MultiClusterLoadBalancer", "journal_from_events"]
