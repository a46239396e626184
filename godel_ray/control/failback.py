"""The fail-back shell: each control-loop tick, agents whose home is back go home live.

Decisions are ``core.failback.fail_back_moves``; this owner keeps what they need that the store
does not hold: since when each cluster has been ACTIVE without a break (in memory: after a
balancer restart the hysteresis starts again, which only delays), and which fail-back moves it
started. Each move goes through the ``MigrationExecutor`` with reason ``fail_back`` and is an
``agent.fail_back`` event carrying its reason. A fail-back never interrupts a command: its freeze
waits for the agent to be idle (``BusyPolicy.WAIT``, the executor's busy timeout), and a move that
times out rolls back and is tried again at a later tick.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable

from godel_ray.control.agent_table import AgentTable
from godel_ray.control.clusters import ClusterSet
from godel_ray.control.eventlog import Emit
from godel_ray.control.migrator import MigrationExecutor
from godel_ray.core.failback import DEFAULT_RULES, FailBackRules, fail_back_moves
from godel_ray.errors import GodelError
from godel_ray.models import LOCAL_CLUSTER_ID, BusyPolicy, ClusterStatus, EventKind, EventType

log = logging.getLogger(__name__)
FAIL_BACK_REASON = "fail_back"
HYSTERESIS_ENV = "GODEL_FAIL_BACK_HYSTERESIS_S"
COOLDOWN_ENV = "GODEL_FAIL_BACK_COOLDOWN_S"


def rules_from_env(default: FailBackRules = DEFAULT_RULES) -> FailBackRules:
    """The fail-back rules, with ``$GODEL_FAIL_BACK_HYSTERESIS_S`` and ``$GODEL_FAIL_BACK_COOLDOWN_S``
    (seconds, >= 0) over the defaults; a value that is not such a number is ignored with a warning."""
    values = {"hysteresis_s": default.hysteresis_s, "cooldown_s": default.cooldown_s}
    for field, env in (("hysteresis_s", HYSTERESIS_ENV), ("cooldown_s", COOLDOWN_ENV)):
        raw = os.environ.get(env, "")
        if not raw:
            continue
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not 0 <= value < float("inf"):
            log.warning("%s=%r is not a number of seconds >= 0; using %g", env, raw, values[field])
            continue
        values[field] = value
    return dataclasses.replace(default, hysteresis_s=values["hysteresis_s"], cooldown_s=values["cooldown_s"])


class FailBack:
    """Invariants: at most ``rules.max_in_flight`` fail-back moves at once; a cluster's
    ``active_since`` is reset by any tick that sees it not ACTIVE; a refused move is only logged
    (it is retried at a later tick, after the cooldown the attempt started)."""

    def __init__(self, clusters: ClusterSet, table: AgentTable, migrator: MigrationExecutor, emit: Emit, *,
                 rules: FailBackRules = DEFAULT_RULES, clock: Callable[[], float] = time.time,
                 local_id: str = LOCAL_CLUSTER_ID) -> None:
        self._clusters = clusters
        self._table = table
        self._migrator = migrator
        self._emit = emit
        self.rules = rules
        self._clock = clock
        self._local_id = local_id
        self.active_since: dict[str, float] = {}
        self._started: set[str] = set()

    def observe(self, now: float) -> None:
        for health in self._clusters.health():
            if health.status is ClusterStatus.ACTIVE:
                self.active_since.setdefault(health.cluster_id, now)
            else:
                self.active_since.pop(health.cluster_id, None)

    async def tick(self) -> list[str]:
        """Start the fail-back moves due now; return the agent ids moved."""
        now = self._clock()
        self.observe(now)
        self._started &= self._migrator.in_progress
        agents = [a for a in self._table.live() if a.home_cluster_id]
        if not agents:
            return []
        views = {v.cluster.id: v for v in self._clusters.views()}
        last = {a.id: t for a in agents if (t := self._migrator.last_attempt_at(a.id)) is not None}
        moves = fail_back_moves(agents, views, self.active_since, last, set(self._migrator.in_progress),
                                len(self._started), now, self.rules, self._local_id)
        done: list[str] = []
        for move in moves:
            agent = self._table.get(move.agent_id)
            source = agent.cluster_id if agent else ""
            try:
                await self._migrator.migrate(move.agent_id, move.home, wait=False, reason=FAIL_BACK_REASON,
                                             busy=BusyPolicy.WAIT)
            except GodelError as exc:
                log.info("fail-back of %s to %s refused: %s", move.agent_id, move.home, exc)
                continue
            self._started.add(move.agent_id)
            self._emit(EventKind.AGENT, EventType.AGENT_FAIL_BACK.value, source, move.agent_id,
                       target=move.home, reason=move.reason)
            done.append(move.agent_id)
        return done


__all__ = ["COOLDOWN_ENV", "FAIL_BACK_REASON", "HYSTERESIS_ENV", "FailBack", "rules_from_env"]
