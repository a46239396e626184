"""The federation's events: ``EventKind``, ``EventType`` (every type emitted) and ``FederationEvent``
(one event as buffered, stored and streamed). Public through ``godel_ray.models`` like every other
domain model.
"""

from __future__ import annotations

from enum import Enum

from pydantic import Field

from godel_ray.model_base import DomainModel as _Model
from godel_ray.model_base import now_s


class EventKind(str, Enum):
    AGENT = "agent"
    COMMAND = "command"
    CLUSTER = "cluster"
    MIGRATION = "migration"


class EventType(str, Enum):
    """Every event type the federation emits. ``FederationEvent.type`` stays a string so that an
    unknown type from a newer site is carried, not refused; compare against these members."""

    AGENT_CHECKPOINTED = "agent.checkpointed"
    AGENT_EXPORTED = "agent.exported"
    AGENT_FAILED = "agent.failed"
    AGENT_FAIL_BACK = "agent.fail_back"
    AGENT_IMPORTED = "agent.imported"
    AGENT_KILLED = "agent.killed"
    AGENT_ORPHAN_REMOVED = "agent.orphan_removed"
    AGENT_PLACED = "agent.placed"
    AGENT_RESTORE_FAILED = "agent.restore_failed"
    AGENT_RESTORED = "agent.restored"
    AGENT_SPAWNED = "agent.spawned"
    AGENT_STALE_REMOVED = "agent.stale_removed"
    AGENT_STATUS = "agent.status"
    CLUSTER_DRAINED = "cluster.drained"
    CLUSTER_DRAINING = "cluster.draining"
    CLUSTER_REGISTERED = "cluster.registered"
    CLUSTER_STATUS = "cluster.status"
    CLUSTER_UNREGISTERED = "cluster.unregistered"
    COMMAND_FINISHED = "command.finished"
    COMMAND_STARTED = "command.started"
    MIGRATION_COMMITTED = "migration.committed"
    MIGRATION_STARTED = "migration.started"

    @property
    def kind(self) -> EventKind:
        return EventKind(self.value.split(".", 1)[0])


class FederationEvent(_Model):
    seq: int = 0
    kind: EventKind
    type: str  # an ``EventType`` value (a newer site may send others)
    cluster_id: str = ""
    agent_id: str = ""
    ts: float = Field(default_factory=now_s)
    data: dict[str, str] = Field(default_factory=dict)
