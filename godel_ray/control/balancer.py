"""MultiClusterLoadBalancer (the BalancerActor): a thin facade over the owners of federation state.

A plain async class; ``godel_ray.control.factory`` makes it a named, detached, restartable Ray
actor. Each public method routes to the one owner of what it asks about; no owner calls back here:

    ClusterSet         registry, ClusterActor gateways, health, capacity ledger, placement views
    AgentTable         the agent rows (in memory, written through), idempotency keys
    Spawner            validate, place, reserve, spawn, record
    AgentOps           kill (the kill wins), status, journal, explain
    Reconciler         start-up reconciliation, orphan sweep, event ingestion
    Checkpoints        one checkpoint format, write path and restore path
    MigrationExecutor  live migration (``godel_ray.core.live_migration`` decides)
    Failover           periodic checkpoints, restore after a cluster's death, stale copies

The store is read once, when the balancer takes the control-plane lease (``control/lease.py``);
every change is written through, fenced by the lease's token, before the call that made it answers.
Until it holds the lease the balancer is a standby: ``ping`` answers, every other call raises
``Standby`` naming the active control plane.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from godel_ray.control.agent_ops import AgentOps, journal_from_events
from godel_ray.control.agent_table import AgentTable
from godel_ray.control.checkpoints import Checkpoints
from godel_ray.control.cluster_actor import LOCAL_WORKDIR_NAME
from godel_ray.control.clusters import DEFAULT_LOCAL_MAX_AGENTS, ClusterSet, probe_site
from godel_ray.control.drainer import Drainer
from godel_ray.control.eventlog import Emitter, EventCursors
from godel_ray.control.failback import FailBack
from godel_ray.control.failback import rules_from_env as failback_rules_from_env
from godel_ray.control.failover import Failover
from godel_ray.control.lease import LEASE_RETRY_S, LeaseKeeper, Role, describe, holder_name, lease_ttl_from_env
from godel_ray.control.ledger import CapacityLedger
from godel_ray.control.migrator import MigrationExecutor, cooldown_from_env
from godel_ray.control.reconciler import Reconciler
from godel_ray.control.spawner import Spawner
from godel_ray.control.store import open_store
from godel_ray.errors import FailedPrecondition, Standby
from godel_ray.models import (
    LOCAL_CLUSTER_ID,
    Agent,
    AgentStatus,
    BusyPolicy,
    Cluster,
    ClusterHealthState,
    ClusterInfo,
    ClusterStats,
    DrainReport,
    FederationEvent,
    JournalEntry,
    Migration,
    PlacementDecision,
    SpawnConfig,
)
from godel_ray.raykit import rayapi
from godel_ray.settings import work_dir

if TYPE_CHECKING:
    from godel_ray.raykit.gateway import ClusterGateway


log = logging.getLogger(__name__)

LOCAL_ID = LOCAL_CLUSTER_ID
CONTROL_LOOP_INTERVAL_S = 1.0

# cluster_actor(cluster, state_dir): start or find the cluster's actor (``factory.cluster_actor``)
ClusterActorFactory = Callable[[Cluster, str], "ClusterGateway"]


def _local_max_agents() -> int:
    """``local`` admits as many agents as its Ray cluster has CPUs (the default outside Ray)."""
    cpus = int(rayapi.cluster_resources().get("CPU", 0))
    return cpus if cpus > 0 else DEFAULT_LOCAL_MAX_AGENTS


def _no_cluster_actors(cluster: Cluster, state_dir: str) -> ClusterGateway:
    raise FailedPrecondition("this balancer was built without a way to start cluster actors: create it with "
                             "godel_ray.control.factory.balancer()")


class MultiClusterLoadBalancer:
    """The BalancerActor.

    Invariants (each kept by the owner named):
    - single writer: only this actor writes the state store, and it writes before it answers;
    - an agent row exists iff its cluster accepted the spawn (Spawner);
    - an idempotency key maps to at most one agent, forever (Spawner, AgentTable);
    - ``local`` is always registered (ClusterSet);
    - agents are never dropped silently: one a cluster no longer has is marked ``failed`` with why
      (Reconciler, AgentOps, Failover);
    - a kill that races a migration or a restore wins (AgentOps, MigrationExecutor, Checkpoints);
    - freed capacity is usable by the very next spawn (the ledger, fed by AgentTable);
    - the control loop never blocks on one cluster and never dies.
    - it serves only while it holds the lease; a standby loads nothing, a deposed one serves nothing
      and its writes are refused by the store (LeaseKeeper, the store's fencing).
    After a restart (Ray's ``max_restarts``, or ``swarmctl down``/``up``) or a takeover everything is
    reloaded from the store and reconciled with each cluster's ``list_agents`` before the first answer.
    """

    def __init__(self, state_dir: str, cluster_actor: ClusterActorFactory = _no_cluster_actors) -> None:
        self.state_dir = state_dir
        store = self.store = open_store(state_dir)
        emitter = self.emitter = Emitter(store)
        ledger, cursors = CapacityLedger(), EventCursors(store)
        self.table = AgentTable(store, ledger, emitter)
        self.clusters = ClusterSet(store, self.table, ledger, cursors, emitter,
                                   make_gateway=lambda cluster: cluster_actor(cluster, state_dir),
                                   retire=lambda gateway: rayapi.kill_actor(gateway.handle),
                                   probe=lambda cluster: probe_site(cluster, state_dir),
                                   local_max_agents=_local_max_agents())
        gateway = self.clusters.gateway
        self.checkpoints = Checkpoints(store, state_dir, self.table, ledger, gateway, emitter)
        self.spawner = Spawner(self.clusters, self.table, emitter, local_id=LOCAL_ID,
                               unsettled=lambda cluster_id: self.reconciler.sweep_soon(cluster_id))
        self.agents = AgentOps(gateway, self.table, store, local_id=LOCAL_ID)
        self.migrator = MigrationExecutor(store, self.table, gateway, emitter, ledger=ledger, views=self.clusters.view,
                                          cooldown_s=cooldown_from_env(), local_id=LOCAL_ID)
        self.drainer = Drainer(self.clusters, self.table, self.migrator, emitter, local_id=LOCAL_ID)
        self.failback = FailBack(self.clusters, self.table, self.migrator, emitter, rules=failback_rules_from_env(),
                                 local_id=LOCAL_ID)
        self.failover = Failover(self.clusters, self.table, self.checkpoints, store, emitter,
                                 busy=lambda: set(self.migrator.in_progress), local_id=LOCAL_ID)
        self.reconciler = Reconciler(self.clusters, self.table, self.checkpoints, cursors, emitter,
                                     spawning=lambda: self.spawner.spawning,
                                     local_workdir_root=work_dir(state_dir) / LOCAL_WORKDIR_NAME, local_id=LOCAL_ID)
        self.lease = LeaseKeeper(store, holder_name(state_dir), ttl_s=lease_ttl_from_env(),
                                 address=rayapi.gcs_address())
        self._ready: asyncio.Task[None] | None = None
        self._tried_lease = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._lease_task: asyncio.Task[None] | None = None

    # --- the lease, readiness and the control loop ----------------------------------------------------

    async def _ensure_ready(self) -> None:
        self._start()
        await self._tried_lease.wait()
        if self.lease.role is not Role.ACTIVE:
            raise self.lease.refusal()
        assert self._ready is not None
        await asyncio.shield(self._ready)

    def _start(self) -> None:
        if self._ready is None:
            self._ready = asyncio.create_task(self._startup())

    async def _take_lease(self) -> None:
        """Wait as a standby until the lease is ours."""
        while True:
            try:
                if self.lease.try_acquire():
                    return
            except Exception:
                log.exception("taking the control-plane lease failed; trying again")
            finally:
                self._tried_lease.set()
            await asyncio.sleep(LEASE_RETRY_S)

    def _load(self) -> None:
        self.table.load()
        self.clusters.load()
        live = [a.id for a in self.table.live()]
        self.checkpoints.load(live)
        self.migrator.load(live)

    async def _startup(self) -> None:
        await self._take_lease()
        self._lease_task = asyncio.create_task(self._lease_loop())
        self._load()
        await self.clusters.start_all()
        await self.reconciler.reconcile_all()
        try:
            await self.migrator.recover_unfinished()
        except Exception:
            log.exception("recovering unfinished migrations failed; carrying on")
        self._loop_task = asyncio.create_task(self._control_loop())

    async def _lease_loop(self) -> None:
        """Renew the lease every third of its TTL; once deposed, stop the control loop for good."""
        while self.lease.role is Role.ACTIVE:
            await asyncio.sleep(self.lease.renew_every_s)
            try:
                self.lease.renew()
            except Exception:
                log.exception("renewing the control-plane lease failed; trying again")
        if self._loop_task is not None:
            self._loop_task.cancel()

    async def _control_loop(self) -> None:
        """Every ``CONTROL_LOOP_INTERVAL_S``: a watcher per cluster (the reconciler's long polls bring
        health and events as they change), failover and fail-back decisions from memory."""
        try:
            while self.lease.role is Role.ACTIVE:
                started = time.monotonic()
                try:
                    await self.reconciler.tick()
                    await self.failover.tick()
                    await self.failback.tick()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("control loop iteration failed; carrying on")
                await asyncio.sleep(max(0.0, CONTROL_LOOP_INTERVAL_S - (time.monotonic() - started)))
        finally:
            self.reconciler.stop()

    async def ping(self) -> str:
        """``ok`` once active and ready; ``standby`` (or ``deposed``) while another control plane serves."""
        try:
            await self._ensure_ready()
        except Standby:
            return self.lease.role.value
        return "ok"

    async def role(self) -> dict[str, str]:
        """This control plane's role and the lease as stored (answers in every role); while the lease
        is held, ``active_holder`` and ``active_address`` (its Ray address: clients attach there)."""
        self._start()
        await self._tried_lease.wait()
        lease = self.store.lease()
        out = {"role": self.lease.role.value, "holder": self.lease.holder, "lease": describe(lease)}
        if lease is not None and lease.active:
            out.update(active_holder=lease.holder, active_address=lease.address)
        return out

    async def prepare_shutdown(self) -> int:
        """Checkpoint every non-final local agent (frozen) so ``up`` can restore it, then hand the lease
        back (a standby takes over at once, and restores them). Returns how many."""
        await self._ensure_ready()
        frozen = await self.checkpoints.prepare_shutdown(LOCAL_ID)
        self.lease.release()
        return frozen

    # --- registry -----------------------------------------------------------------------------------

    async def register_cluster(self, cluster: Cluster) -> ClusterInfo:
        await self._ensure_ready()
        return await self.clusters.register(cluster)

    async def unregister_cluster(self, cluster_id: str, force: bool = False) -> None:
        await self._ensure_ready()
        await self.clusters.unregister(cluster_id, force)

    async def update_cluster(self, cluster_id: str, changes: dict[str, Any]) -> ClusterInfo:
        """Change registry fields of a cluster (``max_agents``, ``cost_per_hour``, ``load_threshold`` ...)."""
        await self._ensure_ready()
        return await self.clusters.update(cluster_id, changes)

    async def list_clusters(self) -> list[ClusterInfo]:
        await self._ensure_ready()
        return self.clusters.infos()

    async def get_cluster(self, cluster_id: str) -> ClusterInfo:
        await self._ensure_ready()
        return self.clusters.info(self.clusters.require(cluster_id))

    async def health(self) -> list[ClusterHealthState]:
        await self._ensure_ready()
        return self.clusters.health()

    async def stats(self) -> list[ClusterStats]:
        await self._ensure_ready()
        return self.clusters.stats()

    async def set_maintenance(self, cluster_id: str, on: bool) -> ClusterInfo:
        await self._ensure_ready()
        return await self.clusters.set_maintenance(cluster_id, on)

    async def drain(self, cluster_id: str, wait: bool = False, busy: BusyPolicy = BusyPolicy.WAIT,
                    busy_timeout_s: float | None = None) -> DrainReport:
        """Move every live agent off ``cluster_id`` live (``godel_ray.control.drainer``) and leave it in
        maintenance; agents that cannot be placed stay and are listed with the reason. ``busy``: what
        each move's freeze does with a running command (see ``migrate``)."""
        await self._ensure_ready()
        return await self.drainer.drain(cluster_id, wait=wait, busy=BusyPolicy(busy), busy_timeout_s=busy_timeout_s)

    async def regions(self) -> dict[str, list[str]]:
        await self._ensure_ready()
        return self.clusters.regions()

    async def plan(self, config: SpawnConfig) -> PlacementDecision:
        """Where ``config`` would go now; nothing is spawned or recorded."""
        await self._ensure_ready()
        return self.spawner.plan(config)

    # --- agents -------------------------------------------------------------------------------------

    async def spawn(self, config: SpawnConfig) -> Agent:
        """Validate, place, spawn on the chosen cluster, record; the same key returns the same agent."""
        await self._ensure_ready()
        return await self.spawner.spawn(config)

    async def kill(self, agent_id: str) -> Agent:
        await self._ensure_ready()
        return await self.agents.kill(agent_id)

    async def status(self, agent_id: str) -> Agent:
        """The agent as its cluster reports it now (the table's row if the cluster cannot answer)."""
        await self._ensure_ready()
        return await self.agents.status(agent_id)

    async def list_agents(self, status: AgentStatus | str | None = None, labels: dict[str, str] | None = None,
                          cluster: str | None = None, model: str | None = None) -> list[Agent]:
        await self._ensure_ready()
        return self.table.select(cluster_id=cluster, status=status, labels=labels, model=model)

    async def locate(self, agent_id: str) -> tuple[str, int]:
        """Where the agent lives now: (cluster id, epoch)."""
        await self._ensure_ready()
        agent = self.table.require(agent_id)
        return agent.cluster_id, agent.epoch

    async def explain(self, agent_id: str) -> PlacementDecision:
        await self._ensure_ready()
        return self.agents.explain(agent_id)

    async def journal(self, agent_id: str) -> list[JournalEntry]:
        """Local: from the agent itself. Remote: mirrored from the site's ``command.finished`` events."""
        await self._ensure_ready()
        return await self.agents.journal(agent_id)

    async def events_since(self, since_seq: int = 0, limit: int = 1000) -> list[FederationEvent]:
        await self._ensure_ready()
        return self.store.events(since_seq, limit)

    async def migrate(self, agent_id: str, target: str, wait: bool = True, busy: BusyPolicy = BusyPolicy.WAIT,
                      busy_timeout_s: float | None = None) -> Migration:
        """Move a live agent to ``target`` (``godel_ray.control.migrator``): exactly once, rolled back
        on any failure before the commit. ``wait=False`` returns the record as started; poll
        ``migrations``. Refusals (unknown agent or cluster, same cluster, no capacity, cooldown,
        already migrating) raise before anything happens. A running command: WAIT freezes at the
        first idle moment (commands are served meanwhile; rolled back after ``busy_timeout_s``),
        INTERRUPT stops it (its caller gets ``CommandInterrupted``)."""
        await self._ensure_ready()
        return await self.migrator.migrate(agent_id, target, wait, busy=BusyPolicy(busy),
                                           busy_timeout_s=busy_timeout_s)

    async def migrations(self, agent_id: str | None = None) -> list[Migration]:
        await self._ensure_ready()
        return self.migrator.records(agent_id)


__all__ = ["CONTROL_LOOP_INTERVAL_S", "LOCAL_ID", "ClusterActorFactory", "MultiClusterLoadBalancer",
           "journal_from_events"]
