"""Settings and limits: one frozen object built at the edge and passed down.

Environment variables use the ``GODEL_`` prefix. ``state_dir()`` is where the control plane keeps
its SQLite file, its Ray head's description and its Ray auth token. ``SandboxPolicy`` (inside
``Limits``) is how a cluster sandboxes its agents: ``GODEL_ISOLATION`` (``sandbox`` | ``none``)
chooses it for ``local``; a site takes ``--isolation``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from godel_ray.models import Isolation

log = logging.getLogger(__name__)

VERSION = "0.1.0"
NAMESPACE = "godel"  # Ray namespace of every control-plane actor
BALANCER_NAME = "godel-balancer"
DEFAULT_SITE_PORT = 50051


ISOLATION_ENV = "GODEL_ISOLATION"  # sandbox | none, for the ``local`` cluster (sites take --isolation)
SANDBOX_RO_PATHS_ENV = "GODEL_SANDBOX_RO_PATHS"  # extra read-only paths in every sandbox, ':'-separated
SANDBOX_CGROUPS_ENV = "GODEL_SANDBOX_CGROUPS"  # 0: no cgroup per command (rlimits only)


def isolation_from_env() -> Isolation:
    """``$GODEL_ISOLATION``; unset or unknown means ``sandbox`` (``none`` only when asked for)."""
    raw = os.environ.get(ISOLATION_ENV, "").strip().lower()
    if not raw:
        return Isolation.SANDBOX
    try:
        return Isolation(raw)
    except ValueError:
        log.warning("ignoring %s=%r: use sandbox or none; running agents in the sandbox", ISOLATION_ENV, raw)
        return Isolation.SANDBOX


def _cgroups_from_env() -> bool:
    """``$GODEL_SANDBOX_CGROUPS=0`` turns the per-command cgroup off (rlimits only; saves a few ms per exec)."""
    return os.environ.get(SANDBOX_CGROUPS_ENV, "1").strip() != "0"


def _ro_paths_from_env() -> tuple[str, ...]:
    return tuple(p for p in os.environ.get(SANDBOX_RO_PATHS_ENV, "").split(":") if p.strip())


class SandboxPolicy(BaseModel):
    """How a cluster runs its agents' commands (``godel_ray.agents.sandbox``) and the default limits.

    The ``agent_*`` values apply where a ``SpawnConfig.limits`` field is ``None``. Processes count
    threads too. ``uid_base``/``uid_span``: when the site runs as root, each agent's commands run
    as their own unprivileged uid in this range (root is exempt from the process limit).
    ``ro_paths`` are added read-only to the allow-listed root; ``hidden_paths`` (token and key
    files, for instance) are covered even where an allow-listed path contains them.
    """

    model_config = ConfigDict(frozen=True)

    isolation: Isolation = Field(default_factory=isolation_from_env)
    agent_memory_mb: int = Field(default=4096, gt=0)
    agent_processes: int = Field(default=1024, gt=0)
    agent_cpu_time_s: float = Field(default=24 * 3600.0, gt=0, allow_inf_nan=False)
    agent_open_files: int = Field(default=4096, gt=0)
    agent_workdir_mb: int = Field(default=10 * 1024, gt=0)
    tmp_mb: int = Field(default=512, gt=0)  # the private /tmp and /dev/shm, each
    uid_base: int = Field(default=2_000_000_000, gt=0)
    uid_span: int = Field(default=100_000_000, gt=0)
    ro_paths: tuple[str, ...] = Field(default_factory=_ro_paths_from_env)
    hidden_paths: tuple[str, ...] = ()
    cgroups: bool = Field(default_factory=_cgroups_from_env)  # a cgroup per command where one can be made


class Limits(BaseModel):
    """Input limits enforced on every request (site and control plane alike), and the sandbox."""

    model_config = ConfigDict(frozen=True)

    max_message_bytes: int = 8 * 1024 * 1024
    max_command_bytes: int = 64 * 1024
    max_env_vars: int = 128
    max_env_bytes: int = 64 * 1024
    max_labels: int = 64
    max_label_bytes: int = 256
    max_output_bytes: int = 16 * 1024 * 1024  # per command; more is dropped and `truncated` set
    max_command_timeout_s: float = 24 * 3600.0
    default_command_timeout_s: float = 3600.0
    max_snapshot_bytes: int = 1024 * 1024 * 1024
    snapshot_chunk_bytes: int = 1024 * 1024
    sandbox: SandboxPolicy = Field(default_factory=SandboxPolicy)


LIMITS = Limits()


def state_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``explicit`` > ``$GODEL_STATE_DIR`` > ``~/.godel``."""
    raw = explicit or os.environ.get("GODEL_STATE_DIR") or Path.home() / ".godel"
    return Path(raw).expanduser().resolve()
