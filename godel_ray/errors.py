"""The one exception tree of godel-ray.

Every failure a user can trigger is one of these, with a message a person can act on and
structured fields (``agent_id``, ``cluster_id``, ``reasons``). Foreign exceptions (gRPC, Ray) are
mapped to this tree in exactly one place each: ``godel_ray.rpc.errors`` for gRPC status codes and
``godel_ray.raykit.rayapi`` for Ray's wrappers.

    GodelError
    ├── InvalidArgument                 bad input: ids, sizes, env names, timeouts   (INVALID_ARGUMENT)
    │   └── SnapshotRejected            hostile or corrupt snapshot archive
    ├── NotFound                                                                     (NOT_FOUND)
    │   ├── AgentNotFound
    │   └── ClusterNotFound
    ├── AlreadyExists                   duplicate cluster name, agent id              (ALREADY_EXISTS)
    ├── Unauthenticated                 missing or wrong credential                   (UNAUTHENTICATED)
    ├── FailedPrecondition              the state does not allow it now               (FAILED_PRECONDITION)
    │   ├── StaleEpoch                  fenced: the caller's epoch is not the agent's
    │   ├── AgentMoved                  this copy was migrated away; ask the balancer again
    │   ├── AgentNotRunning             agent completed, failed, or terminated
    │   ├── CommandInterrupted          the command was stopped to move the agent (``cluster_id``: where to)
    │   ├── AgentBusy                   a move waited ``busy_timeout_s`` for the agent to be idle: given up
    │   ├── LiveProcessUnavailable      ``--live-process`` refused here (``reason``: criu missing or failing)
    │   ├── MigrationInProgress
    │   ├── CooldownActive              migration cooldown not elapsed (``retry_after_s``)
    │   ├── Standby                     this control plane waits; ``holder`` is the active one
    │   └── LeaseLost                   fenced: a deposed balancer's write (``token``) is refused
    ├── ResourceExhausted               no capacity (max agents, CPUs, GPUs)          (RESOURCE_EXHAUSTED)
    │   └── NoPlacement                 nothing fits; ``reasons`` maps cluster id to why
    ├── ClusterUnavailable              a cluster cannot be reached                   (UNAVAILABLE)
    ├── DeadlineExceeded                a call ran past its deadline                  (DEADLINE_EXCEEDED)
    └── ControlPlaneNotRunning          no control plane at the state dir
"""

from __future__ import annotations

from typing import Any


class GodelError(Exception):
    """Base of every godel-ray error. ``fields`` carries structured context."""

    code = "UNKNOWN"

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields

    def __getattr__(self, name: str) -> Any:
        # Structured fields read as attributes: err.cluster_id, err.reasons.
        fields = self.__dict__.get("fields", {})
        if name in fields:
            return fields[name]
        raise AttributeError(name)

    def __reduce__(self) -> Any:
        # Errors cross Ray actor boundaries by pickle; keep the keyword fields.
        return (_rebuild, (type(self), self.message, self.fields))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[GodelError], message: str, fields: dict[str, Any]) -> GodelError:
    return cls(message, **fields)


class InvalidArgument(GodelError):
    code = "INVALID_ARGUMENT"


class SnapshotRejected(InvalidArgument):
    pass


class NotFound(GodelError):
    code = "NOT_FOUND"


class AgentNotFound(NotFound):
    pass


class ClusterNotFound(NotFound):
    pass


class AlreadyExists(GodelError):
    code = "ALREADY_EXISTS"


class Unauthenticated(GodelError):
    code = "UNAUTHENTICATED"


class FailedPrecondition(GodelError):
    code = "FAILED_PRECONDITION"


class StaleEpoch(FailedPrecondition):
    pass


class AgentMoved(FailedPrecondition):
    pass


class AgentNotRunning(FailedPrecondition):
    pass


class CommandInterrupted(FailedPrecondition):
    """The running command was interrupted (SIGTERM, a grace, SIGKILL) so its agent could move; the
    fields say where to (``cluster_id``), which command (``seq``) and how it ended (``exit_code``).
    Never retried behind the caller's back: the caller decides whether to run it again there."""


class AgentBusy(FailedPrecondition):
    """A move gave up waiting for the agent to become idle (``busy_timeout_s``); nothing was frozen."""


class LiveProcessUnavailable(FailedPrecondition):
    """A move with its running command (CRIU) is refused on this host; ``reason`` says why. Nothing frozen."""


class MigrationInProgress(FailedPrecondition):
    pass


class CooldownActive(FailedPrecondition):
    pass


class Standby(FailedPrecondition):
    pass


class LeaseLost(FailedPrecondition):
    pass


class ResourceExhausted(GodelError):
    code = "RESOURCE_EXHAUSTED"


class NoPlacement(ResourceExhausted):
    pass


class ClusterUnavailable(GodelError):
    code = "UNAVAILABLE"


class DeadlineExceeded(GodelError):
    code = "DEADLINE_EXCEEDED"


class ControlPlaneNotRunning(GodelError):
    code = "FAILED_PRECONDITION"


ALL_ERRORS: tuple[type[GodelError], ...] = (
    GodelError, InvalidArgument, SnapshotRejected, NotFound, AgentNotFound, ClusterNotFound,
    AlreadyExists, Unauthenticated, FailedPrecondition, StaleEpoch, AgentMoved, AgentNotRunning,
    CommandInterrupted, AgentBusy, LiveProcessUnavailable, MigrationInProgress, CooldownActive, Standby, LeaseLost, ResourceExhausted,
    NoPlacement, ClusterUnavailable, DeadlineExceeded, ControlPlaneNotRunning,
)
ERRORS_BY_NAME: dict[str, type[GodelError]] = {cls.__name__: cls for cls in ALL_ERRORS}

# ``godel_ray`` re-exports this module with ``import *``: only the exception classes, never the
# helpers above (``ALL_ERRORS``, ``ERRORS_BY_NAME``) or this module's own imports.
__all__ = [
    "AgentBusy", "AgentMoved", "AgentNotFound", "AgentNotRunning", "AlreadyExists", "ClusterNotFound",
    "ClusterUnavailable", "CommandInterrupted", "ControlPlaneNotRunning", "CooldownActive", "DeadlineExceeded",
    "FailedPrecondition", "GodelError", "InvalidArgument", "LeaseLost", "LiveProcessUnavailable", "MigrationInProgress", "NoPlacement", "NotFound", "ResourceExhausted",
    "SnapshotRejected", "StaleEpoch", "Standby", "Unauthenticated",
]
