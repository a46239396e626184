"""``ClusterSet``: the registry, in memory. Cluster rows, one ``ClusterGateway`` per cluster, each
cluster's last health, the capacity ledger fed by it, and the placement views built from them.

Registration probes a site with its credentials before anything is written; removal marks the
agents still there failed (with ``--force``) and retires the cluster's actor. Reads never touch the
store: it is read once, at ``load``, and written through before any call answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from godel_ray.control.agent_table import AgentTable
from godel_ray.control.cluster_actor import make_client
from godel_ray.control.eventlog import Emit, EventCursors
from godel_ray.control.ledger import CapacityLedger
from godel_ray.control.store import Store
from godel_ray.core import views as cluster_views
from godel_ray.core.endpoint import parse_endpoint
from godel_ray.core.placement import ClusterView
from godel_ray.core.validation import validate_cluster_id
from godel_ray.errors import (
    AlreadyExists,
    ClusterNotFound,
    DeadlineExceeded,
    FailedPrecondition,
    GodelError,
    InvalidArgument,
)
from godel_ray.models import (
    LOCAL_CLUSTER_ID,
    Cluster,
    ClusterCapabilities,
    ClusterHealthState,
    ClusterInfo,
    ClusterStats,
    ClusterStatus,
    EventKind,
    EventType,
    SiteCapacity,
)

if TYPE_CHECKING:
    from godel_ray.raykit.gateway import ClusterGateway


log = logging.getLogger(__name__)

DEFAULT_LOCAL_MAX_AGENTS = 100
PROBE_TIMEOUT_S = 10.0  # registration's reachability check
START_TIMEOUT_S = 30.0  # a ClusterActor starting its loops
CONTROL_CALL_TIMEOUT_S = 5.0  # one health/maintenance/update call to a ClusterActor
CLEANUP_TIMEOUT_S = 10.0  # closing a removed cluster's actor
LEDGER_MIN_SETTLE_S = 2.0  # Ray's view of free resources may lag an actor's start or end by this much

MakeGateway = Callable[[Cluster], "ClusterGateway"]  # start (or find) the cluster's actor
Retire = Callable[["ClusterGateway"], None]  # end the actor of a removed cluster for good
Probe = Callable[[Cluster], Awaitable[SiteCapacity]]  # one heartbeat with the cluster's credentials


async def probe_site(cluster: Cluster, state_dir: str) -> SiteCapacity:
    """One heartbeat to ``cluster`` from this process (raises the client's error, or DeadlineExceeded)."""
    client = make_client(cluster, state_dir)
    try:
        return await asyncio.wait_for(client.heartbeat(), PROBE_TIMEOUT_S)
    except TimeoutError as exc:
        raise DeadlineExceeded(f"cluster {cluster.id} at {cluster.endpoint} did not answer within "
                               f"{PROBE_TIMEOUT_S:g} s") from exc
    finally:
        await client.close()


def _older(health: ClusterHealthState, current: ClusterHealthState | None) -> bool:
    """``health`` was measured before ``current`` (a new ClusterActor that has not beaten yet, say,
    answering a poll right after registration's own probe): it must not replace it."""
    if current is None or current.last_heartbeat_at is None:
        return False
    return health.last_heartbeat_at is None or health.last_heartbeat_at < current.last_heartbeat_at


class ClusterSet:
    """The registered clusters.

    Invariants: ``local`` is always registered; a cluster has a gateway iff it is registered; the
    memory rows equal the store's (written first); health is what each ClusterActor last reported,
    and every new report is handed to the ledger; a placement view is rebuilt for a cluster only
    when its row, its health or its ledger changed, and shows the ledger's capacity (what the site
    reported, moved by the holds since) with the ledger's count of held slots.
    """

    def __init__(self, store: Store, table: AgentTable, ledger: CapacityLedger, cursors: EventCursors,
                 emit: Emit, *, make_gateway: MakeGateway, retire: Retire, probe: Probe,
                 local_max_agents: int = DEFAULT_LOCAL_MAX_AGENTS, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._table = table
        self.ledger = ledger
        self._cursors = cursors
        self._emit = emit
        self._make_gateway = make_gateway
        self._retire = retire
        self._probe = probe
        self._local_max_agents = local_max_agents
        self._clock = clock
        self._clusters: dict[str, Cluster] = {}
        self._order: list[str] = []  # cluster ids, sorted
        self._health: dict[str, ClusterHealthState] = {}
        self._gateways: dict[str, ClusterGateway] = {}
        self._views: dict[str, tuple[Cluster, ClusterHealthState, int, ClusterView]] = {}

    # --- loading and starting -----------------------------------------------------------------------

    def load(self) -> None:
        """Read the registry from the store (once), and find or start each cluster's actor."""
        if self._store.cluster(LOCAL_CLUSTER_ID) is None:
            self._store.put_cluster(Cluster(id=LOCAL_CLUSTER_ID, endpoint=None, region="local",
                                            max_agents=self._local_max_agents))
        for cluster in self._store.clusters():
            self._set_cluster(cluster)
        for health in self._store.all_health():
            if health.cluster_id in self._clusters:
                self._health[health.cluster_id] = health
        self._cursors.load(self._order)
        for cluster_id in self._order:
            self._gateways[cluster_id] = self._make_gateway(self._clusters[cluster_id])

    async def start_all(self) -> None:
        """Start every cluster's control loops; one that does not start is logged, not fatal."""
        await asyncio.gather(*(self._start(cid) for cid in list(self._gateways)))

    async def _start(self, cluster_id: str) -> None:
        try:
            await self.gateway(cluster_id).start().result(START_TIMEOUT_S)
        except GodelError as exc:
            log.warning("cluster %s: actor did not start: %s", cluster_id, exc)

    # --- reads --------------------------------------------------------------------------------------

    def ids(self) -> list[str]:
        return list(self._order)

    def clusters(self) -> list[Cluster]:
        return [self._clusters[cid] for cid in self._order]

    def get(self, cluster_id: str) -> Cluster | None:
        return self._clusters.get(cluster_id)

    def require(self, cluster_id: str) -> Cluster:
        cluster = self._clusters.get(cluster_id)
        if cluster is None:
            raise ClusterNotFound(f"cluster {cluster_id!r} is not registered (known: {', '.join(self._order)}); "
                                  "see `swarmctl cluster list`", cluster_id=cluster_id)
        return cluster

    def gateway(self, cluster_id: str) -> ClusterGateway:
        gateway = self._gateways.get(cluster_id)
        if gateway is None:
            raise ClusterNotFound(f"cluster {cluster_id!r} is not registered", cluster_id=cluster_id)
        return gateway

    def health_of(self, cluster_id: str) -> ClusterHealthState:
        return cluster_views.health_of(self._health, cluster_id)

    def health(self) -> list[ClusterHealthState]:
        return [self.health_of(cid) for cid in self._order]

    def info(self, cluster: Cluster) -> ClusterInfo:
        return cluster_views.cluster_infos([cluster], self._health, self._table.active_counts())[0]

    def infos(self) -> list[ClusterInfo]:
        return cluster_views.cluster_infos(self.clusters(), self._health, self._table.active_counts())

    def stats(self) -> list[ClusterStats]:
        return cluster_views.cluster_stats(self.clusters(), self._health, self._table.all())

    def regions(self) -> dict[str, list[str]]:
        return cluster_views.regions(self.clusters())

    def views(self) -> list[ClusterView]:
        """One placement view per cluster, from memory (ledger-adjusted capacity and held slots)."""
        return [self._view(cid) for cid in self._order]

    def view(self, cluster_id: str) -> ClusterView | None:
        return self._view(cluster_id) if cluster_id in self._clusters else None

    def _view(self, cluster_id: str) -> ClusterView:
        cluster, health = self._clusters[cluster_id], self.health_of(cluster_id)
        version = self.ledger.version(cluster_id)
        cached = self._views.get(cluster_id)
        if cached is not None and cached[0] is cluster and cached[1] is health and cached[2] == version:
            return cached[3]
        capacity = self.ledger.capacity(cluster_id)
        shown = health if capacity is None else health.model_copy(update={"capacity": capacity})
        view = ClusterView(cluster=cluster, health=shown, active_agents=self.ledger.holds(cluster_id))
        if cluster_id in self._health:  # a default health is a new object each time: nothing to cache on
            self._views[cluster_id] = (cluster, health, version, view)
        return view

    # --- health -------------------------------------------------------------------------------------

    def set_health(self, cluster_id: str, health: ClusterHealthState) -> None:
        """A cluster's latest health (written through when it changed; a new report goes to the ledger)."""
        cluster = self._clusters.get(cluster_id)
        current = self._health.get(cluster_id)
        if cluster is None or current == health or _older(health, current):
            return
        self._store.put_health(health)
        self._health[cluster_id] = health
        if health.last_success_at is not None:
            measured_at = health.last_success_at - (health.rtt_ms or 0.0) / 1000.0
            settle_s = max(cluster.health.heartbeat_interval_s, LEDGER_MIN_SETTLE_S)
            self.ledger.report(cluster_id, health.capacity, measured_at, settle_s)

    # --- registry changes ---------------------------------------------------------------------------

    def _set_cluster(self, cluster: Cluster) -> None:
        if cluster.id not in self._clusters:
            self._order = sorted([*self._order, cluster.id])
        self._clusters[cluster.id] = cluster

    async def register(self, cluster: Cluster) -> ClusterInfo:
        """Probe ``cluster`` with a heartbeat using its credentials, then register it.

        Unreachable, wrong token, bad TLS files, a duplicate id: an error, and nothing registered.
        """
        validate_cluster_id(cluster.id)
        if cluster.is_local or cluster.id == LOCAL_CLUSTER_ID:
            raise InvalidArgument(f"cluster {cluster.id!r}: a remote cluster needs an endpoint, and the id "
                                  f"{LOCAL_CLUSTER_ID!r} is reserved for the control plane's own cluster")
        assert cluster.endpoint is not None
        parse_endpoint(cluster.endpoint)
        if cluster.id in self._clusters:
            raise AlreadyExists(f"cluster {cluster.id!r} is already registered; remove it first "
                                f"(`swarmctl cluster remove {cluster.id}`) or pick another name",
                                cluster_id=cluster.id)
        started = time.monotonic()
        capacity = await self._probe(cluster)
        rtt_ms = (time.monotonic() - started) * 1000.0
        if cluster.id in self._clusters:  # registered by a concurrent call while we probed
            raise AlreadyExists(f"cluster {cluster.id!r} is already registered", cluster_id=cluster.id)
        if capacity.gpu_types and not cluster.capabilities.gpu_types:
            cluster = cluster.model_copy(update={"capabilities": ClusterCapabilities(
                gpu=True, gpu_types=list(capacity.gpu_types), flags=list(cluster.capabilities.flags))})
        now = self._clock()
        health = ClusterHealthState(cluster_id=cluster.id, rtt_ms=rtt_ms, last_heartbeat_at=now,
                                    last_success_at=now, capacity=capacity,
                                    status=ClusterStatus.MAINTENANCE if cluster.maintenance else ClusterStatus.ACTIVE)
        self._store.put_cluster(cluster)
        self._store.put_health(health)
        self._set_cluster(cluster)
        self._health[cluster.id] = health
        self._cursors.reset(cluster.id)  # before the actor starts: it resumes its site's stream from here
        try:
            gateway = self._gateways[cluster.id] = self._make_gateway(cluster)
            await gateway.start().result(START_TIMEOUT_S)
        except GodelError:
            await self._drop(cluster.id)
            raise
        self._emit(EventKind.CLUSTER, EventType.CLUSTER_REGISTERED, cluster.id, endpoint=cluster.endpoint or "",
                   region=cluster.region)
        return self.info(cluster)

    async def unregister(self, cluster_id: str, force: bool = False) -> None:
        self.require(cluster_id)
        if cluster_id == LOCAL_CLUSTER_ID:
            raise FailedPrecondition(f"cluster {LOCAL_CLUSTER_ID!r} is the control plane's own and cannot be removed")
        active = self._table.live(cluster_id)
        if active and not force:
            raise FailedPrecondition(
                f"cluster {cluster_id!r} still hosts {len(active)} agent(s) ({', '.join(a.id for a in active[:5])}"
                f"{'...' if len(active) > 5 else ''}): kill or migrate them, or remove with --force",
                cluster_id=cluster_id)
        for agent in active:
            self._table.mark_failed(agent, f"cluster {cluster_id} was removed from the federation")
        await self._drop(cluster_id)
        self._emit(EventKind.CLUSTER, EventType.CLUSTER_UNREGISTERED, cluster_id)

    async def _drop(self, cluster_id: str) -> None:
        gateway = self._gateways.pop(cluster_id, None)
        self._health.pop(cluster_id, None)
        self._views.pop(cluster_id, None)
        if self._clusters.pop(cluster_id, None) is not None:
            self._order.remove(cluster_id)
        self._cursors.forget(cluster_id)
        self.ledger.forget(cluster_id)
        self._store.delete_cluster(cluster_id)
        if gateway is not None:
            try:
                await gateway.close().result(CLEANUP_TIMEOUT_S)
            except GodelError as exc:
                log.warning("cluster %s: close failed: %s", cluster_id, exc)
            self._retire(gateway)

    async def update(self, cluster_id: str, changes: dict[str, Any]) -> ClusterInfo:
        """Change registry fields of a cluster (``max_agents``, ``cost_per_hour``, ``load_threshold`` ...)."""
        cluster = self.require(cluster_id)
        forbidden = {"id", "endpoint", "created_at"} & set(changes)
        if forbidden:
            raise InvalidArgument(f"cannot change {', '.join(sorted(forbidden))} of a registered cluster: "
                                  "remove it and add it again")
        try:
            updated = Cluster.model_validate({**cluster.model_dump(), **changes})
        except ValueError as exc:
            raise InvalidArgument(f"invalid change to cluster {cluster_id!r}: {exc}") from exc
        self._store.put_cluster(updated)
        self._set_cluster(updated)
        gateway = self.gateway(cluster_id)
        await gateway.update(updated).result(CONTROL_CALL_TIMEOUT_S)
        self.set_health(cluster_id, await gateway.health().result(CONTROL_CALL_TIMEOUT_S))
        return self.info(updated)

    async def set_maintenance(self, cluster_id: str, on: bool) -> ClusterInfo:
        cluster = self.require(cluster_id).model_copy(update={"maintenance": on})
        self._store.put_cluster(cluster)
        self._set_cluster(cluster)
        self.set_health(cluster_id, await self.gateway(cluster_id).set_maintenance(on).result(CONTROL_CALL_TIMEOUT_S))
        return self.info(cluster)


__all__ = ["CONTROL_CALL_TIMEOUT_S", "DEFAULT_LOCAL_MAX_AGENTS", "ClusterSet", "MakeGateway", "Probe", "Retire",
           "probe_site"]
