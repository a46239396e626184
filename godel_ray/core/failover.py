"""Checkpoints and failover decisions: which agents to checkpoint now, what to do about a dead
cluster's agents, which copies on a returning cluster are stale, and which agents a returning
cluster lost (it restarted within its grace period).

Pure: no ray, no grpc, no clock (``now`` is passed in). ``godel_ray.control.failover.Failover`` is
the shell: the balancer's control loop calls it every tick, it gathers the inputs from the state
store and the health table, calls these functions, and carries out what they return.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from godel_ray.core.detector import Verdict
from godel_ray.models import Agent, AgentStatus, ClusterHealthState, ClusterStatus, HealthSettings, RestartPolicy


def grace_s(health: ClusterHealthState | None, settings: HealthSettings) -> float | None:
    """How long ``health``'s cluster must stay OFFLINE before its agents fail over; None: not now.

    The grace scales with the evidence (``health.evidence``, the detector's verdict):

    * ``dead`` (connections refused or reset: nothing listens, the agents died with the process):
      ``dead_grace_period_s``, capped by ``grace_period_s``;
    * ``silent`` (no sign of life: frozen, partitioned, or its machine gone; its agents may still
      run): ``grace_period_s``. A state written before the detector existed (no evidence) counts
      as silent: it went offline on missed heartbeats alone;
    * anything else -- not offline, in maintenance, or offline but showing life again (an answer,
      a READY channel: it is coming back) -- None: nothing is restored while a cluster is merely
      degraded or recovering.
    """
    if health is None or health.status is not ClusterStatus.OFFLINE:
        return None
    if health.evidence == Verdict.DEAD.value:
        return min(settings.dead_grace_period_s, settings.grace_period_s)
    if health.evidence in (Verdict.SILENT.value, ""):
        return settings.grace_period_s
    return None


def offline_for(health: ClusterHealthState | None, now: float) -> float:
    """Seconds ``health``'s cluster has been OFFLINE; 0 when it is not (mirrors
    ``HealthTracker.offline_for``: maintenance never counts, the operator took it down on purpose)."""
    if health is None or health.status is not ClusterStatus.OFFLINE or health.offline_since is None:
        return 0.0
    return max(0.0, now - health.offline_since)


def _checkpointable(agent: Agent) -> bool:
    return agent.config.restart_policy is RestartPolicy.CHECKPOINT and agent.status is AgentStatus.RUNNING


def due_checkpoints(agents: Iterable[Agent], last_checkpoint_at: Mapping[str, float], now: float, *,
                    busy: frozenset[str] = frozenset(),
                    unreachable: frozenset[str] = frozenset()) -> list[str]:
    """Ids of the agents whose checkpoint is due: ``restart_policy=checkpoint``, RUNNING, not
    ``busy`` (migrating, being checkpointed or restored), on a cluster not in ``unreachable``, and
    never checkpointed or checkpointed ``checkpoint_interval_s`` ago or more. Oldest first."""
    due: list[tuple[float, str]] = []
    for agent in agents:
        if not _checkpointable(agent) or agent.id in busy or agent.cluster_id in unreachable:
            continue
        last = last_checkpoint_at.get(agent.id)
        if last is None or now - last >= agent.config.checkpoint_interval_s:
            due.append((last if last is not None else float("-inf"), agent.id))
    return [agent_id for _, agent_id in sorted(due)]


# --- failover actions --------------------------------------------------------------------------


@dataclass(frozen=True)
class Restore:
    """Place ``agent_id`` again from its latest checkpoint: anywhere but ``dead_cluster``; or, when
    the cluster ``returned`` without the agent (it restarted), by the normal rules, itself included."""

    agent_id: str
    dead_cluster: str
    offline_s: float
    returned: bool = False


@dataclass(frozen=True)
class MarkFailed:
    """No way to bring the agent back: mark it FAILED with ``reason``."""

    agent_id: str
    dead_cluster: str
    reason: str


FailoverAction = Restore | MarkFailed


def failover_plan(agents: Iterable[Agent], clusters_offline_for: Mapping[str, float],
                  graces: Mapping[str, float], has_checkpoint: frozenset[str], *,
                  busy: frozenset[str] = frozenset()) -> list[FailoverAction]:
    """What to do about the live agents of clusters offline longer than their grace period.

    ``graces`` holds a grace only for the clusters failover may act on (see ``grace_s()``): a
    cluster without one -- degraded, recovering, or offline on evidence too weak -- keeps its agents.
    An agent with ``restart_policy=checkpoint`` and a checkpoint is restored; one with the policy
    but no checkpoint yet, or without the policy, is marked failed with the reason. ``busy`` agents
    (a migration or a restore running) are left for a later tick; final agents are ignored.
    """
    actions: list[FailoverAction] = []
    for agent in agents:
        if agent.status.is_final or agent.id in busy:
            continue
        cluster_id = agent.cluster_id
        offline_s = clusters_offline_for.get(cluster_id, 0.0)
        grace = graces.get(cluster_id)
        if grace is None or offline_s <= 0.0 or offline_s < grace:
            continue
        if agent.config.restart_policy is RestartPolicy.CHECKPOINT and agent.id in has_checkpoint:
            actions.append(Restore(agent.id, cluster_id, offline_s))
        elif agent.config.restart_policy is RestartPolicy.CHECKPOINT:
            actions.append(MarkFailed(agent.id, cluster_id, (
                f"cluster {cluster_id} offline for {offline_s:.1f}s (grace {grace:g}s) before the agent's "
                "first checkpoint: nothing to restore from")))
        else:
            actions.append(MarkFailed(agent.id, cluster_id, (
                f"cluster {cluster_id} offline for {offline_s:.1f}s (grace {grace:g}s); restart_policy is "
                f"{agent.config.restart_policy.value}, so the agent was not restored")))
    return actions


@dataclass(frozen=True)
class KillStale:
    """Remove the copy of ``agent_id`` at ``epoch`` on ``cluster_id``: the table says it is not the agent."""

    agent_id: str
    cluster_id: str
    epoch: int
    reason: str


def stale_copies(cluster_id: str, present: Iterable[Agent], table: Mapping[str, Agent], *,
                 busy: frozenset[str] = frozenset()) -> list[KillStale]:
    """The live copies on ``cluster_id`` that the agent table does not recognise as the agent.

    A copy is stale when the table places the agent on another cluster, holds a newer epoch, or
    records the agent as ended (failed over, killed while the cluster was away). Copies of agents
    the table does not know are left alone (not ours to judge), and so are ``busy`` agents: a
    migration's target copy exists before its commit point by design.
    """
    out: list[KillStale] = []
    for copy in present:
        row = table.get(copy.id)
        if copy.status.is_final or row is None or copy.id in busy:
            continue
        if row.cluster_id != cluster_id:
            why = f"the agent lives on {row.cluster_id} (epoch {row.epoch}) now"
        elif row.epoch > copy.epoch:
            why = f"superseded by epoch {row.epoch}"
        elif row.status.is_final:
            why = f"the agent is {row.status.value} ({row.status_reason})"
        else:
            continue
        out.append(KillStale(copy.id, cluster_id, copy.epoch, f"stale copy at epoch {copy.epoch}: {why}"))
    return out


def lost_agents(cluster_id: str, before: Iterable[Agent], present: Iterable[Agent], table: Mapping[str, Agent],
                has_checkpoint: frozenset[str], *, busy: frozenset[str] = frozenset()) -> list[FailoverAction]:
    """What to do about the agents ``cluster_id`` no longer hosts although it answers (it restarted).

    ``before``: the table's live rows on ``cluster_id``, read BEFORE the cluster was asked for
    ``present`` (its ``ListAgents``): a row written after the question (a spawn or a move that
    landed meanwhile) is never judged on an answer older than it. A row that changed since
    (``table`` is the table now) or is ``busy`` (a migration or a restore may hold a copy before its
    commit) is left for a later sweep. An agent missing from ``present`` (in any status) is lost:
    with ``restart_policy=checkpoint`` and a checkpoint it is restored (``Restore(returned=True)``),
    else it is marked failed with why.
    """
    there = {a.id for a in present}
    actions: list[FailoverAction] = []
    for row in before:
        now = table.get(row.id)
        if (row.id in there or row.id in busy or row.cluster_id != cluster_id or row.status.is_final
                or now is None or (now.cluster_id, now.epoch, now.status) != (row.cluster_id, row.epoch, row.status)):
            continue
        lost = f"cluster {cluster_id} answers again but no longer hosts the agent (it restarted)"
        if row.config.restart_policy is RestartPolicy.CHECKPOINT and row.id in has_checkpoint:
            actions.append(Restore(row.id, cluster_id, 0.0, returned=True))
        elif row.config.restart_policy is RestartPolicy.CHECKPOINT:
            actions.append(MarkFailed(row.id, cluster_id, f"{lost}, before the agent's first checkpoint: "
                                                          "nothing to restore from"))
        else:
            actions.append(MarkFailed(row.id, cluster_id, f"{lost}; restart_policy is "
                                                          f"{row.config.restart_policy.value}, so it was not restored"))
    return actions


def loss_note(taken_at: float, lost_commands: int, dead_cluster: str, *, returned: bool = False) -> str:
    """The ``status_reason`` of a restored agent: what the checkpoint could not bring back."""
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(taken_at))
    lost = (f"{lost_commands} command(s) run after it were lost" if lost_commands
            else "no command was recorded after it, so nothing was lost")
    how = "restarted without it" if returned else "went offline"
    return f"restored from the checkpoint taken at {when} after cluster {dead_cluster} {how}; {lost}"


__all__ = ["FailoverAction", "KillStale", "MarkFailed", "Restore", "due_checkpoints", "failover_plan",
           "grace_s", "loss_note", "lost_agents", "offline_for", "stale_copies"]
