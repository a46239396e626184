"""Moves of agents: ``Migration`` (one move, phase by phase), its ``MigrationPhase``s and
``PhaseStamp``s, ``DrainReport`` (what ``cluster drain`` did), and how a move treats a busy agent
(``BusyPolicy``, ``FreezeOptions``). Public through ``godel_ray.models`` like every other domain model.
"""

from __future__ import annotations

import uuid
from enum import Enum

from pydantic import Field

from godel_ray.model_base import DomainModel as _Model
from godel_ray.model_base import now_s


def new_migration_id() -> str:
    return "mig-" + uuid.uuid4().hex[:12]


class BusyPolicy(str, Enum):
    """What a move does with an agent whose command is running when it must freeze."""

    WAIT = "wait"  # freeze at the first idle moment (new commands are served meanwhile), up to a deadline
    INTERRUPT = "interrupt"  # stop the running command (SIGTERM, a grace, SIGKILL), then freeze
    LIVE_PROCESS = "live_process"  # checkpoint the running command with CRIU (opt-in; refused with the reason
    #                                where ``criu check`` fails: see ``agents.criu``); an idle agent freezes at once


DEFAULT_BUSY_TIMEOUT_S = 600.0  # how long a move waits for a busy agent to become idle
DEFAULT_INTERRUPT_GRACE_S = 10.0  # between SIGTERM and SIGKILL of an interrupted command


class FreezeOptions(_Model):
    """How a freeze treats a running command (``AgentActor.freeze``). ``target``: the cluster the agent
    moves to, named in the error an interrupted command's caller gets."""

    busy: BusyPolicy = BusyPolicy.WAIT
    busy_timeout_s: float = Field(default=DEFAULT_BUSY_TIMEOUT_S, gt=0)
    grace_s: float = Field(default=DEFAULT_INTERRUPT_GRACE_S, ge=0)
    target: str = ""


class MigrationPhase(str, Enum):
    VALIDATING = "validating"
    PREPARING = "preparing"  # protocol v2: the target holds resources and a staging dir
    PRECOPYING = "precopying"  # protocol v2: the workdir streams while the source runs
    FREEZING = "freezing"
    DELTA = "delta"  # protocol v2: what changed since the pre-copy manifest, frozen
    ACTIVATING = "activating"  # protocol v2: the target renames staging and runs at epoch_to
    EXPORTING = "exporting"
    TRANSFERRING = "transferring"
    IMPORTING = "importing"
    VERIFYING = "verifying"
    COMMITTING = "committing"
    CLEANING_UP = "cleaning_up"
    COMPLETED = "completed"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


class PhaseStamp(_Model):
    phase: MigrationPhase
    at: float


class Migration(_Model):
    id: str = Field(default_factory=new_migration_id)
    agent_id: str
    source: str
    target: str
    phase: MigrationPhase = MigrationPhase.VALIDATING
    phases: list[PhaseStamp] = Field(default_factory=list)
    epoch_from: int = 0
    epoch_to: int = 0
    bytes_moved: int = 0
    downtime_s: float | None = None
    error: str = ""
    started_at: float = Field(default_factory=now_s)
    finished_at: float | None = None
    reason: str = "manual"  # manual | drain | failover
    busy: BusyPolicy = BusyPolicy.WAIT  # what the freeze did with a running command
    busy_timeout_s: float = Field(default=DEFAULT_BUSY_TIMEOUT_S, gt=0)
    frozen_at: float | None = None  # when the source actually froze (its clock); FREEZING's stamp is the request
    interrupted_seq: int | None = None  # the journal entry of the command the move interrupted


class DrainReport(_Model):
    """What ``cluster drain`` did: the moves it started (or finished, with ``--wait``), the agents
    it could not move with the reason for each, and whether the cluster is now in maintenance."""

    cluster_id: str
    migrations: list[Migration] = Field(default_factory=list)
    unmovable: dict[str, str] = Field(default_factory=dict)  # agent id -> why it stays
    maintenance: bool = True
    busy: BusyPolicy = BusyPolicy.WAIT
    waiting_for_idle: dict[str, float] = Field(default_factory=dict)  # agent id -> seconds waited so far

    @property
    def complete(self) -> bool:
        """Every agent left (or is leaving) and none had to stay."""
        return not self.unmovable and all(m.phase is not MigrationPhase.ROLLED_BACK for m in self.migrations)


__all__ = ["DEFAULT_BUSY_TIMEOUT_S", "DEFAULT_INTERRUPT_GRACE_S", "BusyPolicy", "DrainReport", "FreezeOptions",
           "Migration", "MigrationPhase", "PhaseStamp", "new_migration_id"]
