"""``Spawner``: a new agent, from request to recorded row: validate, place, reserve, spawn, record.

The placement decision is made from memory (``ClusterSet.views``) and its capacity is reserved in
the ledger in the same step, with no ``await`` in between, so concurrent spawns never take one
last slot twice. The spawn's commit point is the row written to the store (with its decision and
idempotency key, atomically); a spawn that fails before it leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from godel_ray.control.agent_table import AgentTable
from godel_ray.control.clusters import ClusterSet
from godel_ray.control.eventlog import Emit
from godel_ray.control.ledger import Demand
from godel_ray.core.placement import place, require_chosen
from godel_ray.core.validation import validate_spawn_config
from godel_ray.errors import AgentNotFound, GodelError
from godel_ray.models import (
    LOCAL_CLUSTER_ID,
    Agent,
    EventKind,
    EventType,
    PlacementDecision,
    SpawnConfig,
    new_agent_id,
)
from godel_ray.raykit import metrics

log = logging.getLogger(__name__)

SPAWN_TIMEOUT_S = 180.0  # a new agent actor may need a fresh worker process
CLEANUP_TIMEOUT_S = 10.0  # best-effort kill of a half-spawned agent


# What only the control plane reads (placement, fail-back): a site neither keeps nor returns these
# (``AgentSpec`` has no field for them), so the row takes them from the request, as for ``local``.
CONTROL_PLANE_FIELDS = ("cluster", "idempotency_key", "priority", "preferred_region", "excluded_regions",
                        "max_latency_ms", "max_cost_per_hour", "required_capabilities", "fail_back")


class Spawner:
    """Spawns agents.

    Invariants: an agent row exists iff its cluster accepted the spawn (a failed spawn is killed on
    its cluster, best effort, and its reservation released); an idempotency key maps to at most one
    agent, forever, and concurrent spawns with one key share one attempt; a placement and its
    reservation happen in one step of the event loop; ``spawning`` names the agents being created
    now (the orphan sweep must leave them alone); a clean-up that could not reach its cluster is
    reported to ``unsettled(cluster_id)`` (the orphan sweep's cue).
    """

    def __init__(self, clusters: ClusterSet, table: AgentTable, emit: Emit, *,
                 clock: Callable[[], float] = time.time, local_id: str = LOCAL_CLUSTER_ID,
                 unsettled: Callable[[str], None] = lambda cluster_id: None) -> None:
        self._clusters = clusters
        self._table = table
        self._emit = emit
        self._clock = clock
        self._local_id = local_id
        self._unsettled = unsettled
        self._inflight_keys: dict[str, asyncio.Future[Agent]] = {}
        self.spawning: set[str] = set()

    def plan(self, config: SpawnConfig) -> PlacementDecision:
        """Where ``config`` would go now; nothing is spawned, reserved or recorded."""
        return place(validate_spawn_config(config), self._clusters.views(), local_id=self._local_id)

    async def spawn(self, config: SpawnConfig) -> Agent:
        """Validate, place, spawn on the chosen cluster, record; the same key returns the same agent."""
        validate_spawn_config(config)
        key = config.idempotency_key
        if key is None:
            return await self._spawn(config, None)
        known = self._table.idempotent_agent(key)
        if known is not None:
            return self._table.require(known)
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

    async def _spawn(self, config: SpawnConfig, key: str | None) -> Agent:
        decision = place(config, self._clusters.views(), local_id=self._local_id)
        chosen = require_chosen(decision, config)
        agent_id = new_agent_id()
        decision = decision.model_copy(update={"agent_id": agent_id})
        ledger = self._clusters.ledger
        ledger.hold(chosen, agent_id, Demand.of(config), self._clock(), in_flight=True)
        self.spawning.add(agent_id)
        try:
            try:
                spawned, _created = await self._clusters.gateway(chosen).spawn(
                    config, agent_id=agent_id, idempotency_key=key, epoch=1).result(SPAWN_TIMEOUT_S)
            except GodelError:
                await self._cleanup_half_spawn(chosen, agent_id)
                raise
            agent = spawned.model_copy(update={"cluster_id": chosen, "config": spawned.config.model_copy(
                update={name: getattr(config, name) for name in CONTROL_PLANE_FIELDS})})
            self._table.put_spawn(agent, decision, key)  # the commit point; the ledger's hold settles
        except BaseException:
            ledger.release(chosen, agent_id, self._clock())
            raise
        finally:
            self.spawning.discard(agent_id)
        self._emit(EventKind.AGENT, EventType.AGENT_PLACED, chosen, agent.id, rule=decision.rule)
        metrics.record_placement(chosen, decision.rule)
        return agent

    async def _cleanup_half_spawn(self, cluster_id: str, agent_id: str) -> None:
        # The cluster may have created the agent before the failure reached us (a lost reply).
        try:
            await self._clusters.gateway(cluster_id).kill(agent_id, reason="spawn failed").result(CLEANUP_TIMEOUT_S)
        except AgentNotFound:
            pass  # never created: nothing to clean up
        except GodelError as exc:
            log.info("cluster %s: half-spawned agent %s not removed yet (%s); an orphan sweep will", cluster_id,
                     agent_id, exc)
            self._unsettled(cluster_id)


__all__ = ["CONTROL_PLANE_FIELDS", "SPAWN_TIMEOUT_S", "Spawner"]
