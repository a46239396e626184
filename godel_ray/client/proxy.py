"""What users hold: ``connect()`` -> ``TransparentClusterProxy`` (sync) and its ``ClusterRegistry``.

The hot path stays off the balancer: ``exec``/``exec_stream`` go in one hop to a ``local`` agent's
own actor (looked up once through the local ClusterActor for the cached (cluster, epoch), then
cached; the actor checks the epoch itself), and to the owning ClusterActor for a remote agent. The
balancer is asked only on a cache miss, or when the call is refused (``AgentMoved``/``StaleEpoch``/
``AgentNotFound``, or the actor is gone: the command did not start), after which the call is sent
again to the new location (through its cluster, after a refused direct call). What to do after each outcome
is decided in ``client.policy``; this module (and its asyncio twin ``client.aio``) only carries
it out. Every actor call is a typed ``raykit.gateway`` call.

Importing this module does not import Ray: ``connect`` does.
"""

from __future__ import annotations

import builtins
import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from godel_ray import settings
from godel_ray.client import policy
from godel_ray.client.aio import AsyncTransparentClusterProxy
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


def connect(state_dir: str | os.PathLike[str] | None = None, *, address: str | None = None
            ) -> TransparentClusterProxy:
    """Attach to the active control plane (``client.attach``; see also ``controlplane``).

    Ray already initialised: use it. ``RAY_ADDRESS`` set (inside ``ray job submit``): attach to it.
    Else ``<state_dir>/control.json`` from ``swarmctl up``. No control plane: ``ControlPlaneNotRunning``.
    A standby there (another control plane holds the lease): attached to the active one instead.
    """
    from godel_ray.client.attach import attach

    root = settings.state_dir(state_dir)
    return TransparentClusterProxy(attach(root, address), root)


class _Balanced:
    """Calls to the balancer, with the policy's retry for read-only ones."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def _write(self, call: Callable[[BalancerGateway], Call[T]]) -> T:
        return self._balancer(call, read_only=False)

    def _read(self, call: Callable[[BalancerGateway], Call[T]]) -> T:
        return self._balancer(call, read_only=True)

    def _balancer(self, call: Callable[[BalancerGateway], Call[T]], *, read_only: bool) -> T:
        balancer = self._session.balancer
        attempt = 0
        while True:
            try:
                return call(balancer).get()
            except GodelError as exc:
                step = policy.after_balancer_error(exc, attempt, read_only=read_only)
                if isinstance(step, policy.Raise):
                    raise
                time.sleep(step.delay_s)
            attempt += 1


class ClusterRegistry(_Balanced):
    """The federation's clusters (every call goes to the balancer)."""

    def register(self, cluster: Cluster) -> ClusterInfo:
        """Probe the endpoint with a heartbeat using the token file, then register.

        Unreachable, wrong token, duplicate id: an error, and nothing registered."""
        return self._write(lambda b: b.register_cluster(cluster))

    def unregister(self, cluster_id: str, *, force: bool = False) -> None:
        self._write(lambda b: b.unregister_cluster(cluster_id, force))
        self._session.drop_cluster(cluster_id)

    def update(self, cluster_id: str, **changes: Any) -> ClusterInfo:
        """Change registry fields (``max_agents``, ``cost_per_hour``, ``load_threshold``, ``health`` ...)."""
        return self._write(lambda b: b.update_cluster(cluster_id, changes))

    def list(self) -> builtins.list[ClusterInfo]:
        return self._read(lambda b: b.list_clusters())

    def get(self, cluster_id: str) -> ClusterInfo:
        return self._read(lambda b: b.get_cluster(cluster_id))

    def health(self) -> builtins.list[ClusterHealthState]:
        return self._read(lambda b: b.health())

    def stats(self) -> builtins.list[ClusterStats]:
        return self._read(lambda b: b.stats())

    def plan(self, config: SpawnConfig) -> PlacementDecision:
        return self._read(lambda b: b.plan(config))

    def maintenance(self, cluster_id: str, on: bool) -> ClusterInfo:
        return self._write(lambda b: b.set_maintenance(cluster_id, on))

    def regions(self) -> dict[str, builtins.list[str]]:
        return self._read(lambda b: b.regions())

    def drain(self, cluster_id: str, *, wait: bool = False, busy: BusyPolicy | str = BusyPolicy.WAIT,
              busy_timeout_s: float | None = None) -> DrainReport:
        """Move every live agent off ``cluster_id`` live, each placed by the normal rules, and leave
        the cluster in maintenance. ``wait``: until every move ended. Agents that cannot be placed
        stay, listed in ``unmovable`` with the reason."""
        policy, timeout_s = busy_policy(busy), busy_timeout(busy_timeout_s)
        return self._write(lambda b: b.drain(cluster_id, wait, policy, timeout_s))


class TransparentClusterProxy(_Balanced):
    """The user's handle on the federation. Methods raise GodelErrors, never Ray's exceptions.

    ``aio()`` gives the asyncio twin, sharing this proxy's caches.
    """

    def __init__(self, balancer: BalancerGateway, state_dir: str | os.PathLike[str] | None = None) -> None:
        super().__init__(Session(balancer, state_dir))
        self.registry = ClusterRegistry(self._session)

    # --- routing: the one sync shell around policy.AgentRoute ---------------------------------------

    def _locate(self, agent_id: str) -> policy.Location:
        cluster_id, epoch = self._read(lambda b: b.locate(agent_id))
        return self._session.remember(agent_id, cluster_id, epoch)

    def _hop(self, agent_id: str, send: policy.Send) -> Hop:
        if not send.direct:
            return self._session.hop(agent_id, send.location)
        hop = self._session.cached_hop(agent_id, send.location)
        if hop is not None:
            return hop
        local = self._session.cluster(send.location.cluster_id)
        return self._session.hop(agent_id, send.location, local.agent_actor(agent_id, send.location.epoch).get())

    def _routed(self, agent_id: str, attempt: Callable[[Hop], Iterator[T]]) -> Iterator[T]:
        """Yield what ``attempt(hop)`` yields, at wherever the agent lives now."""
        route = policy.AgentRoute(self._session.locations.get(agent_id))
        step: policy.Send | policy.Reroute | policy.Raise = route.start()
        while True:
            if isinstance(step, policy.Raise):
                raise step.error
            if isinstance(step, policy.Reroute):
                self._session.reroute(agent_id, step)
                step = route.located(self._locate(agent_id))
                continue
            started = False
            try:
                for item in attempt(self._hop(agent_id, step)):
                    started = True
                    yield item
                return
            except GodelError as exc:
                step = route.failed(exc, started=started, direct=step.direct)

    # --- agents -----------------------------------------------------------------------------------

    def spawn(self, config: SpawnConfig) -> Agent:
        agent = self._write(lambda b: b.spawn(config))
        self._session.remember(agent.id, agent.cluster_id, agent.epoch)
        return agent

    def exec(self, agent_id: str, command: str, *, timeout_s: float | None = None) -> ExecResult:
        """Run ``command`` and return its whole result, in one reply (collect mode)."""
        def once(hop: Hop) -> Iterator[ExecResult]:
            yield hop.exec(command, timeout_s).get()

        (result,) = self._routed(agent_id, once)
        return result

    def exec_stream(self, agent_id: str, command: str, *, timeout_s: float | None = None
                    ) -> Iterator[ExecChunk]:
        """Output chunks as produced; the last carries ``result``."""
        return self._routed(agent_id, lambda hop: iter(hop.exec_stream(command, timeout_s)))

    def status(self, agent_id: str) -> Agent:
        return self._read(lambda b: b.status(agent_id))

    def list(self, *, status: AgentStatus | str | None = None, labels: dict[str, str] | None = None,
             cluster: str | None = None, model: str | None = None) -> builtins.list[Agent]:
        return self._read(lambda b: b.list_agents(status_value(status), labels, cluster, model))

    def kill(self, agent_id: str) -> Agent:
        agent = self._write(lambda b: b.kill(agent_id))
        self._session.forget(agent_id)
        return agent

    def explain(self, agent_id: str) -> PlacementDecision:
        return self._read(lambda b: b.explain(agent_id))

    def journal(self, agent_id: str) -> builtins.list[JournalEntry]:
        return self._read(lambda b: b.journal(agent_id))

    def migrate(self, agent_id: str, target: str, *, wait: bool = True, interrupt: bool = False,
                busy_timeout_s: float | None = None, live_process: bool = False) -> Migration:
        """Move the agent to ``target``. A running command: by default the move freezes the agent at
        its first idle moment (it keeps serving commands until then; rolled back, nothing frozen,
        after ``busy_timeout_s``); ``interrupt`` stops the command instead (its caller gets
        ``CommandInterrupted``, its journal entry says so). ``live_process`` (opt-in, CRIU) would move
        the running command along; it is refused with the reason (``LiveProcessUnavailable``) where it
        cannot be done, which today is everywhere."""
        policy, timeout_s = move_policy(interrupt=interrupt, live_process=live_process), busy_timeout(busy_timeout_s)
        migration = self._write(lambda b: b.migrate(agent_id, target, wait, policy, timeout_s))
        self._session.forget(agent_id)
        return migration

    def migrations(self, agent_id: str | None = None) -> builtins.list[Migration]:
        return self._read(lambda b: b.migrations(agent_id))

    def _events_page(self, cursor: policy.EventCursor) -> builtins.list[FederationEvent]:
        return self._read(lambda b: b.events_since(cursor.seq, cursor.page_size))

    def events(self, since_seq: int = 0, *, follow: bool = False, poll_s: float = policy.EVENTS_POLL_S
               ) -> Iterator[FederationEvent]:
        """The event log after ``since_seq``; with ``follow``, keep waiting for new events."""
        cursor = policy.EventCursor(since_seq, follow=follow)
        while True:
            batch = self._events_page(cursor)
            yield from batch
            page = cursor.advance(batch)
            if page is policy.Page.DONE:
                return
            if page is policy.Page.POLL:
                time.sleep(poll_s)

    def aio(self) -> AsyncTransparentClusterProxy:
        return AsyncTransparentClusterProxy(self._session)


__all__ = ["ClusterRegistry", "TransparentClusterProxy", "connect"]
