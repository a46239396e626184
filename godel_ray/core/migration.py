"""Live migration of an agent between clusters: what comes before the protocol, and its vocabulary.

Pure: no ray, no grpc, no clock. ``validate_migration`` refuses a move before anything happens. The
actions a migration protocol asks of its shell that do not depend on the protocol's version
(freeze, commit, kill the source, and the rollback's resume and delete), and the events the shell
reports back, live here; the protocol itself is ``core.live_migration.LiveMigrationMachine``
(version 2: prepare, pre-copy, freeze, delta, activate). Version 1 (freeze first, then one whole
snapshot) is gone; its phases stay in ``MigrationPhase`` so old records still read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from godel_ray.core.placement import ClusterView, no_placement_message, place
from godel_ray.errors import (
    AgentNotFound,
    AgentNotRunning,
    ClusterNotFound,
    CooldownActive,
    InvalidArgument,
    MigrationInProgress,
    NoPlacement,
)
from godel_ray.models import LOCAL_CLUSTER_ID, Agent, AgentStatus, Migration, MigrationPhase


def validate_migration(agent: Agent | None, source: ClusterView, target: ClusterView | None, *, target_id: str,
                       last_attempt_at: float | None, cooldown_s: float, now: float, in_progress: bool,
                       local_id: str = LOCAL_CLUSTER_ID) -> None:
    """Refuse a migration that cannot or must not start; return None when it may.

    Checks, in order: the agent exists and is not finished; the target is registered and is not
    the source; no other migration of this agent is running; the cooldown since the last attempt
    has elapsed; the target passes placement's hard filters for this agent (active, capacity,
    GPU type, ...), by calling ``place`` with the target pinned.
    """
    if agent is None:
        raise AgentNotFound("agent not found: nothing to migrate (swarmctl agent list shows known agents)")
    if agent.status.is_final:
        raise AgentNotRunning(f"agent {agent.id} is {agent.status.value}: only a live agent can migrate",
                              agent_id=agent.id)
    if target is None:
        raise ClusterNotFound(f"target cluster {target_id!r} is not registered (swarmctl cluster list)",
                              cluster_id=target_id, agent_id=agent.id)
    source_id = source.cluster.id
    if target_id == source_id or target_id == agent.cluster_id:
        raise InvalidArgument(f"agent {agent.id} already runs on {target_id}: pick another target cluster",
                              agent_id=agent.id, cluster_id=target_id)
    if in_progress or agent.status is AgentStatus.MIGRATING:
        raise MigrationInProgress(f"agent {agent.id} is already migrating: wait for it to finish",
                                  agent_id=agent.id)
    if last_attempt_at is not None and now - last_attempt_at < cooldown_s:
        retry_after_s = cooldown_s - (now - last_attempt_at)
        raise CooldownActive(f"agent {agent.id} was migrated {now - last_attempt_at:.1f}s ago; "
                             f"retry in {retry_after_s:.1f}s", agent_id=agent.id, retry_after_s=retry_after_s)
    pinned = agent.config.model_copy(update={"cluster": target_id})
    decision = place(pinned, [target], local_id=local_id)
    if decision.chosen is None:
        raise NoPlacement(f"cannot migrate agent {agent.id} to {target_id}: "
                          + no_placement_message(decision, pinned),
                          agent_id=agent.id, cluster_id=target_id, reasons=dict(decision.rejections))


def freeze_wait_s(m: Migration, now: float) -> float | None:
    """How long ``m`` has waited so far for its source to freeze (a busy agent: until it is idle, or
    until the interrupted command stopped); None when it is not waiting for the freeze."""
    if m.phase is not MigrationPhase.FREEZING or m.frozen_at is not None:
        return None
    requested_at = next((s.at for s in reversed(m.phases) if s.phase is MigrationPhase.FREEZING), None)
    return None if requested_at is None else max(0.0, now - requested_at)


# --- actions: what the shell does, in order ------------------------------------------------------


@dataclass(frozen=True)
class Freeze:
    """Source: freeze as ``busy`` says (WAIT: at the first idle moment, serving commands until then,
    given up after ``busy_timeout_s``; INTERRUPT: stop the running command), then hold new ones."""

    step: ClassVar[str] = "freeze"
    agent_id: str
    cluster_id: str


@dataclass(frozen=True)
class Commit:
    """State store: write location ``cluster_id`` and ``epoch_to``. THE commit point."""

    step: ClassVar[str] = "commit"
    agent_id: str
    cluster_id: str
    epoch_to: int


@dataclass(frozen=True)
class KillSource:
    """Source: remove the old copy (fenced by epoch already; failure is only noted)."""

    step: ClassVar[str] = "kill_source"
    agent_id: str
    cluster_id: str
    epoch_from: int


@dataclass(frozen=True)
class Resume:
    """Rollback, source: unfreeze; idempotent (resuming an unfrozen agent is a no-op)."""

    step: ClassVar[str] = "resume"
    agent_id: str
    cluster_id: str


@dataclass(frozen=True)
class DeleteTarget:
    """Rollback, target: delete the partial copy at ``epoch_to``, if there is one."""

    step: ClassVar[str] = "delete_target"
    agent_id: str
    cluster_id: str
    epoch_to: int


@dataclass(frozen=True)
class Finish:
    """The migration is over: persist it, emit its event, release the agent. Not reported back."""

    step: ClassVar[str] = "finish"
    outcome: MigrationPhase  # COMPLETED or ROLLED_BACK


# --- events: what the shell reports --------------------------------------------------------------


@dataclass(frozen=True)
class StepSucceeded:
    step: str
    bytes_moved: int = 0
    dirty_bytes: int = 0  # protocol v2, pre-copy: bytes changed since the round's manifest (an estimate)
    frozen_at: float | None = None  # freeze: when the source actually froze (it may wait for idle first)
    interrupted_seq: int | None = None  # freeze with INTERRUPT: the journal entry of the stopped command


@dataclass(frozen=True)
class StepFailed:
    step: str
    error: str


Event = StepSucceeded | StepFailed

__all__ = ["Commit", "DeleteTarget", "Event", "Finish", "Freeze", "KillSource", "Resume", "StepFailed", "StepSucceeded",
           "freeze_wait_s", "validate_migration"]
