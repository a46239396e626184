"""``cluster drain``: every live agent moved off a cluster, live, then the cluster left in maintenance.

The drained cluster goes into maintenance first, so no new agent lands on it while its agents
leave and placement never picks it as a target. Each agent is then placed by the normal rules
(``core.placement.place`` over every other cluster, GPU count and type honoured; a pin to the
drained cluster is dropped, nothing else of the agent's config is) and moved with the
``MigrationExecutor`` (reason ``drain``: recorded, recovered after a restart like a manual move).
An agent that cannot be placed, or whose move is refused (cooldown, already migrating), stays
where it is and is listed with the reason. Capacity is held by each move from its start, so the
next agent's placement already sees it.

A busy agent (a command running) is moved as ``busy`` says: WAIT (the default) freezes it at its
first idle moment, serving its commands until then, and rolls the move back after
``busy_timeout_s``; INTERRUPT stops the command. ``progress`` reports which moves still wait for
their agent to freeze, and for how long (``DrainReport.waiting_for_idle``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from godel_ray.control.agent_table import AgentTable
from godel_ray.control.clusters import ClusterSet
from godel_ray.control.eventlog import Emit
from godel_ray.control.migrator import MigrationExecutor
from godel_ray.core.migration import freeze_wait_s
from godel_ray.core.placement import ClusterView, no_placement_message, place
from godel_ray.errors import GodelError
from godel_ray.models import LOCAL_CLUSTER_ID, BusyPolicy, DrainReport, EventKind, EventType, Migration

log = logging.getLogger(__name__)

DRAIN_REASON = "drain"


class Drainer:
    """Drains clusters. Invariants: the cluster is in maintenance before the first move starts and
    stays so; every live agent found on it is either moving (a migration record) or listed in
    ``unmovable`` with a reason, never silently left; a move is placed by the normal rules only."""

    def __init__(self, clusters: ClusterSet, table: AgentTable, migrator: MigrationExecutor, emit: Emit, *,
                 views: Callable[[], list[ClusterView]] | None = None, local_id: str = LOCAL_CLUSTER_ID,
                 clock: Callable[[], float] = time.time) -> None:
        self._clusters = clusters
        self._table = table
        self._migrator = migrator
        self._emit = emit
        self._views = views or clusters.views
        self._local_id = local_id
        self._clock = clock

    async def drain(self, cluster_id: str, *, wait: bool = False, busy: BusyPolicy = BusyPolicy.WAIT,
                    busy_timeout_s: float | None = None) -> DrainReport:
        """Maintenance on, then a live move for each agent; ``wait``: until every move ended.
        ``busy``/``busy_timeout_s``: what each move does with a running command (``migrate``)."""
        self._clusters.require(cluster_id)
        await self._clusters.set_maintenance(cluster_id, True)
        agents = sorted((a for a in self._table.select(cluster_id=cluster_id) if not a.status.is_final),
                        key=lambda a: a.id)
        self._emit(EventKind.CLUSTER, EventType.CLUSTER_DRAINING.value, cluster_id, agents=str(len(agents)))
        report = DrainReport(cluster_id=cluster_id, busy=busy)
        tasks: list[asyncio.Task[Migration]] = []
        for agent in agents:
            if agent.id in self._migrator.in_progress:
                report.unmovable[agent.id] = "already migrating: wait for that move to end"
                continue
            config = agent.config.model_copy(update={"cluster": None}) if agent.config.cluster == cluster_id \
                else agent.config
            views = [v for v in self._views() if v.cluster.id != cluster_id]
            decision = place(config, views, local_id=self._local_id)
            if decision.chosen is None:
                report.unmovable[agent.id] = no_placement_message(decision, config)
                continue
            try:
                started = await self._migrator.migrate(agent.id, decision.chosen, wait=False, reason=DRAIN_REASON,
                                                       busy=busy, busy_timeout_s=busy_timeout_s)
            except GodelError as exc:
                report.unmovable[agent.id] = str(exc)
                continue
            report.migrations.append(started)
            if wait:
                task = self._migrator.task_of(started.id)
                if task is not None:
                    tasks.append(task)
        if tasks:
            await asyncio.gather(*(asyncio.shield(t) for t in tasks), return_exceptions=True)
        report = self.progress(report)
        for agent_id, why in report.unmovable.items():
            log.warning("drain %s: agent %s stays: %s", cluster_id, agent_id, why)
        self._emit(EventKind.CLUSTER, EventType.CLUSTER_DRAINED.value, cluster_id,
                   moving=str(len(report.migrations)), unmovable=",".join(sorted(report.unmovable)))
        return report

    def progress(self, report: DrainReport) -> DrainReport:
        """``report`` with each move's latest record and the moves still waiting for their agent to
        freeze (busy: a command runs), with the seconds waited so far."""
        now = self._clock()
        migrations = [self._latest(m) for m in report.migrations]
        waiting = {m.agent_id: round(s, 3) for m in migrations if (s := freeze_wait_s(m, now)) is not None}
        return report.model_copy(update={"migrations": migrations, "waiting_for_idle": waiting})

    def _latest(self, started: Migration) -> Migration:
        return next((m for m in self._migrator.records(started.agent_id) if m.id == started.id), started)


__all__ = ["DRAIN_REASON", "Drainer"]
