"""Settings and limits: one frozen object built at the edge and passed down.

Environment variables use the ``GODEL_`` prefix. ``state_dir()`` is where the control plane keeps
its SQLite file, its Ray head's description and its Ray auth token; ``work_dir()``, beside it, is
where its own (``local``) agents keep their working directories. ``SandboxPolicy`` (inside
``Limits``) is how a cluster sandboxes its agents: ``GODEL_ISOLATION`` (``sandbox`` | ``none``)
chooses it for ``local``; a site takes ``--isolation``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from godel_ray.models import DEFAULT_BUSY_TIMEOUT_S, Isolation

log = logging.getLogger(__name__)

VERSION = "0.1.0"
NAMESPACE = "godel"  # Ray namespace of every control-plane actor
BALANCER_NAME = "godel-balancer"
DEFAULT_SITE_PORT = 50051


BUSY_TIMEOUT_ENV = "GODEL_MIGRATION_BUSY_TIMEOUT_S"  # how long a move waits for a busy agent to be idle


def busy_timeout_from_env(default_s: float = DEFAULT_BUSY_TIMEOUT_S) -> float:
    """The default ``--busy-timeout`` of a move: ``$GODEL_MIGRATION_BUSY_TIMEOUT_S`` or 600 s."""
    raw = os.environ.get(BUSY_TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw else default_s
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        log.warning("%s=%r is not a positive number of seconds; using %g", BUSY_TIMEOUT_ENV, raw, default_s)
        return default_s
    return value


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


TRANSFER_CHUNK_ENV = "GODEL_TRANSFER_CHUNK_BYTES"
DEFAULT_TRANSFER_CHUNK_BYTES = 4 * 1024 * 1024
MIN_TRANSFER_CHUNK_BYTES = 4096


def _transfer_chunk_from_env() -> int:
    """``$GODEL_TRANSFER_CHUNK_BYTES`` (at least 4 KiB), else 4 MiB: small chunks slow a move down
    (tests use that to write during a pre-copy)."""
    raw = os.environ.get(TRANSFER_CHUNK_ENV, "").strip()
    try:
        return max(MIN_TRANSFER_CHUNK_BYTES, int(raw)) if raw else DEFAULT_TRANSFER_CHUNK_BYTES
    except ValueError:
        return DEFAULT_TRANSFER_CHUNK_BYTES


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
    # One streamed output chunk (``ExecChunk.data`` as UTF-8, one gRPC message's payload) is at most
    # this; far under ``max_message_bytes``. Big, because each chunk costs a Ray streaming item (a few
    # ms on a busy 2-core machine: 256 KiB chunks streamed at a third of the rate of 1 MiB ones).
    exec_chunk_bytes: int = Field(default=1024 * 1024, ge=4096)
    max_command_timeout_s: float = 24 * 3600.0
    default_command_timeout_s: float = 3600.0
    max_snapshot_bytes: int = 1024 * 1024 * 1024
    snapshot_chunk_bytes: int = 1024 * 1024  # one gRPC message of a snapshot or workdir stream
    transfer_chunk_bytes: int = Field(default_factory=_transfer_chunk_from_env)  # one object of a workdir stream
    # The journal travels as its own section (one message per entry, never inside the header): its
    # entries and the bytes of their commands are bounded on their own, far above the message limit.
    max_snapshot_journal_entries: int = 1_000_000
    max_snapshot_journal_bytes: int = 1024 * 1024 * 1024
    # An archive's cost is not only its bytes: 100k empty files (a 620 KB archive) took 70 s to
    # unpack, and long names made the check hold about 1 GB. So members, names and time are bounded.
    max_snapshot_members: int = 50_000
    max_snapshot_name_bytes: int = 4096  # one member's name or link target (PATH_MAX)
    max_snapshot_names_total_bytes: int = 16 * 1024 * 1024  # every name, link target and extended header
    snapshot_unpack_timeout_s: float = 45.0  # under the runtime's 60 s ready timeout: refused, not killed
    max_concurrent_imports: int = 4  # ImportAgent streams a site receives at once (each buffers <= one snapshot)
    event_log_capacity: int = 10_000  # events an event log keeps; a reader further behind sees a gap
    event_log_max_bytes: int = 16 * 1024 * 1024  # and the most memory they may hold (estimated)
    # A site's gRPC server (``rpc.server``): concurrent HTTP/2 streams on one connection (a client
    # queues the rest; the control plane multiplexes every call to a site on one connection), and
    # streaming calls open at once in all / without a credential (health Watch); over either: refused.
    max_streams_per_connection: int = 1000
    max_open_streams: int = 2000
    max_public_streams: int = 32
    sandbox: SandboxPolicy = Field(default_factory=SandboxPolicy)


LIMITS = Limits()


WORK_DIR_ENV = "GODEL_WORK_DIR"
WORK_DIR_SUFFIX = "-work"


def state_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``explicit`` > ``$GODEL_STATE_DIR`` > ``~/.godel``."""
    raw = explicit or os.environ.get("GODEL_STATE_DIR") or Path.home() / ".godel"
    return Path(raw).expanduser().resolve()


def work_dir(state: str | os.PathLike[str] | None = None) -> Path:
    """Where the control plane's own agents keep their working directories: ``$GODEL_WORK_DIR``, else
    ``<state dir>-work`` beside the state dir (``~/.godel-work`` by default).

    Never inside the state dir: an agent's workdir must not lead (through ``..``) to the state store,
    the Ray token or key files. Created with mode 0700 by whoever first writes there.
    """
    raw = os.environ.get(WORK_DIR_ENV)
    if raw:
        return Path(raw).expanduser().resolve()
    root = state_dir(state)
    return root.with_name(root.name + WORK_DIR_SUFFIX)
