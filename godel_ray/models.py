"""Domain values shared by every layer: pydantic models with snake_case fields and units in names.

These are the public data types of godel-ray (the seed's names: ``Cluster``, ``SpawnConfig``,
``Agent``, ``ExecResult`` ...). Proto conversion lives in ``godel_ray.rpc.convert``; validation of
user input (ids, sizes, env names) lives in ``godel_ray.core.validation``. The records of moves
(``Migration``, ``MigrationPhase``, ``PhaseStamp``, ``DrainReport``, ``BusyPolicy``,
``FreezeOptions``) live in ``godel_ray.migration_models`` and the federation's events (``EventKind``,
``EventType``, ``FederationEvent``) in ``godel_ray.event_models``; both are exported from here too;
the common base in ``godel_ray.model_base``.
"""

from __future__ import annotations

import uuid
from enum import Enum
from typing import Literal

from pydantic import Field

from godel_ray.event_models import EventKind, EventType, FederationEvent
from godel_ray.migration_models import (
    DEFAULT_BUSY_TIMEOUT_S,
    DEFAULT_INTERRUPT_GRACE_S,
    BusyPolicy,
    DrainReport,
    FreezeOptions,
    Migration,
    MigrationPhase,
    PhaseStamp,
    new_migration_id,
)
from godel_ray.model_base import DomainModel as _Model
from godel_ray.model_base import now_s

LOCAL_CLUSTER_ID = "local"  # the control plane's own cluster: always registered, hosts agents with no gRPC


def new_agent_id() -> str:
    return "ag-" + uuid.uuid4().hex[:12]


class AgentStatus(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    MIGRATING = "migrating"
    COMPLETED = "completed"
    FAILED = "failed"
    TERMINATED = "terminated"

    @property
    def is_final(self) -> bool:
        return self in (AgentStatus.COMPLETED, AgentStatus.FAILED, AgentStatus.TERMINATED)


class ClusterStatus(str, Enum):
    ACTIVE = "active"
    DEGRADED = "degraded"
    OFFLINE = "offline"
    MAINTENANCE = "maintenance"


class RestartPolicy(str, Enum):
    NEVER = "never"
    CHECKPOINT = "checkpoint"


class Isolation(str, Enum):
    """How a cluster runs its agents' commands (docs/security.md)."""

    SANDBOX = "sandbox"  # bubblewrap: own namespaces, allow-listed files and environment, limits
    NONE = "none"  # plain processes of the site's user: only when asked for explicitly


class Priority(str, Enum):
    """Which factor weighs most in placement."""

    LATENCY = "latency"
    COST = "cost"
    AVAILABILITY = "availability"
    GPU = "gpu"


FailBackPolicy = Literal["auto", "never"]


class AgentLimits(_Model):
    """Per-agent limits inside the sandbox; ``None`` takes the cluster's default (``SandboxPolicy``).

    ``memory_mb`` bounds each process's data (and the command as a whole where cgroups are
    writable); ``processes`` counts processes and threads; ``cpu_time_s`` is per process;
    ``workdir_mb`` bounds every file written (and the workdir's total, checked after each command).
    """

    memory_mb: int | None = Field(default=None, gt=0)
    processes: int | None = Field(default=None, gt=0)
    cpu_time_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    open_files: int | None = Field(default=None, gt=0)
    workdir_mb: int | None = Field(default=None, gt=0)


class SpawnConfig(_Model):
    """What a user asks for when spawning an agent. Placement fields are hints and hard filters."""

    model: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    timeout_s: float | None = None  # lifetime; None = until killed
    cpus: float = 1.0
    requires_gpu: bool = False
    gpu_count: int = 1  # only read when requires_gpu
    gpu_type: str | None = None  # e.g. "nvidia-a100"; implies requires_gpu
    cluster: str | None = None  # pin to this cluster id
    idempotency_key: str | None = None
    restart_policy: RestartPolicy = RestartPolicy.NEVER
    checkpoint_interval_s: float = 60.0
    # placement preferences and hard filters
    priority: Priority = Priority.AVAILABILITY
    preferred_region: str | None = None
    excluded_regions: list[str] = Field(default_factory=list)
    max_latency_ms: float | None = None
    max_cost_per_hour: float | None = None
    required_capabilities: list[str] = Field(default_factory=list)  # each must be in capabilities.flags
    fail_back: FailBackPolicy | None = None  # after an automatic move: go home when it is back (None: its default)


    # the sandbox (ignored where the cluster runs with isolation none)
    limits: AgentLimits = Field(default_factory=AgentLimits)
    unshare_net: bool = False  # True: the agent's commands get no network (loopback only)

    @property
    def needs_gpu(self) -> bool:
        return self.requires_gpu or self.gpu_type is not None

    @property
    def num_gpus(self) -> int:
        return self.gpu_count if self.needs_gpu else 0


class Agent(_Model):
    """An agent as the federation sees it. ``epoch`` rises at every move (fencing)."""

    id: str
    config: SpawnConfig
    cluster_id: str = ""
    status: AgentStatus = AgentStatus.PENDING
    status_reason: str = ""
    epoch: int = 1
    created_at: float = Field(default_factory=now_s)
    started_at: float | None = None
    finished_at: float | None = None
    node_id: str = ""
    gpu_ids: list[str] = Field(default_factory=list)
    # The cluster an automatic move (failover, drain) took it from; fail-back returns it there.
    # Empty when it lives where it was put (a manual move or a fail-back clears it).
    home_cluster_id: str = ""

    @property
    def model(self) -> str:
        return self.config.model

    @property
    def labels(self) -> dict[str, str]:
        return self.config.labels

    def public_dict(self) -> dict[str, object]:
        """JSON-safe view for output: env values are redacted (they may hold secrets)."""
        data = self.model_dump(mode="json")
        data["config"]["env"] = {k: "***" for k in self.config.env}
        data["model"] = self.config.model
        data["labels"] = dict(self.config.labels)
        return data


class OutputStream(str, Enum):
    STDOUT = "stdout"
    STDERR = "stderr"


class ExecResult(_Model):
    exit_code: int
    stdout: str = ""
    stderr: str = ""
    duration_s: float = 0.0
    timed_out: bool = False
    truncated: bool = False


class ExecChunk(_Model):
    """One piece of a streamed exec: output (``stream`` + ``data``) or, last, the ``result``."""

    stream: OutputStream = OutputStream.STDOUT
    data: str = ""
    result: ExecResult | None = None


class JournalEntry(_Model):
    """One command the agent ran. ``interrupted``: it was stopped (SIGTERM, a grace, SIGKILL) to move
    the agent, ``interrupt_reason`` says so; ``exit_code`` is how it ended (143 for SIGTERM)."""

    seq: int
    command: str
    exit_code: int | None = None
    started_at: float
    duration_s: float = 0.0
    timed_out: bool = False
    interrupted: bool = False
    interrupt_reason: str = ""


class FreezeReport(_Model):
    """What a freeze did (``AgentActor.freeze`` up to ``ClusterClient.freeze``): the agent as it is now
    (migrating), when it froze (its clock; a busy agent serves commands until idle, so this may be
    well after the request), and the journal entry of the command it interrupted (INTERRUPT only)."""

    agent: Agent
    frozen_at: float | None = None
    interrupted_seq: int | None = None


SNAPSHOT_FORMAT_VERSION = 2
"""1: the journal inside the snapshot header; 2: the journal as its own section after the header."""


class AgentSnapshot(_Model):
    """An agent's portable state: metadata, journal, and a tar.gz of its working directory.

    ``format_version`` is the version it was written in (``SNAPSHOT_FORMAT_VERSION`` when made here);
    a reader refuses a version newer than it knows.
    """

    format_version: int = SNAPSHOT_FORMAT_VERSION
    agent: Agent
    journal: list[JournalEntry] = Field(default_factory=list)
    archive: bytes = b""
    sha256: str = ""
    taken_at: float = Field(default_factory=now_s)
    frozen_at: float | None = None  # when the source froze (idle, no command waiting); None: not frozen

    @property
    def size_bytes(self) -> int:
        return len(self.archive)


class TransferMode(str, Enum):
    """What one workdir stream carries (protocol v2, ``agents.transfer``)."""

    FULL = "full"  # the whole working directory; the source keeps running (pre-copy, round 1)
    CHANGES = "changes"  # what changed since the last stream's manifest; the source keeps running
    FINAL = "final"  # what changed since the last manifest, with the agent and its journal: source frozen


class TransferHeader(_Model):
    """First piece of a workdir stream. ``agent`` and ``journal`` only in a FINAL stream."""

    format_version: int = SNAPSHOT_FORMAT_VERSION
    mode: TransferMode
    agent: Agent | None = None
    journal: list[JournalEntry] = Field(default_factory=list)


class TransferTrailer(_Model):
    """Last piece of a workdir stream: what the sender yielded (checked by the receiver), the paths
    gone since the manifest the stream was cut against, and what changed while it was sent."""

    sha256: str
    size_bytes: int = 0
    deleted: list[str] = Field(default_factory=list)
    dirty_bytes: int = 0  # changed since this stream's own manifest: the next pre-copy round's size


TransferPiece = TransferHeader | bytes | TransferTrailer
"""A workdir stream is: one ``TransferHeader``, data chunks (``bytes``, a few MiB each, one plain tar
stream together), one ``TransferTrailer``."""


class TransferReport(_Model):
    """What a receiver applied from one stream."""

    bytes_moved: int = 0
    dirty_bytes: int = 0
    members: int = 0


class ClusterCapabilities(_Model):
    gpu: bool = False
    gpu_types: list[str] = Field(default_factory=list)
    flags: list[str] = Field(default_factory=list)  # free-form capability flags, e.g. "docker"


class HealthSettings(_Model):
    """How a cluster's health is judged (``core.detector``, ``core.health``) and when it fails over
    (``core.failover``). With the defaults a site whose process is gone (connection refused) is
    offline within about a second and its checkpointed agents are restored ``dead_grace_period_s``
    later; a silent one (frozen, partitioned) is offline after about 5 s of silence and failed over
    ``grace_period_s`` later; a slow one is degraded, never offline."""

    heartbeat_interval_s: float = 1.0
    heartbeat_timeout_s: float = 1.0
    degraded_after: int = 2  # consecutive failed or slow heartbeats
    offline_after: int = 3  # consecutive failed heartbeats, at least, before offline (plus the evidence)
    recover_after: int = 2  # consecutive fast answers back to active
    slow_rtt_ms: float = 500.0
    phi_threshold: float = 8.0  # suspicion level (phi accrual) at which silence means offline
    acceptable_pause_s: float | None = None  # a normal pause between answers; None: 2 intervals + 1 deadline
    grace_period_s: float = 10.0  # offline on silence this long: checkpointed agents are restored elsewhere
    dead_grace_period_s: float = 2.0  # the same when connections are refused (the process is gone)


class Cluster(_Model):
    """A registry entry: ``local`` or a remote site reached at ``endpoint``.

    Only the *location* of credentials is stored (``auth_token_file``), never the secret itself.
    """

    id: str
    endpoint: str | None = None  # None for local
    region: str = "local"
    cost_per_hour: float = 0.0
    max_agents: int = 100
    capabilities: ClusterCapabilities = Field(default_factory=ClusterCapabilities)
    auth_token_file: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    health: HealthSettings = Field(default_factory=HealthSettings)
    load_threshold: float = 0.8  # spill-over threshold (used for local)
    warm_pool_size: int = 0
    maintenance: bool = False
    fail_back: FailBackPolicy = "never"  # default for agents moved off this cluster that set none
    created_at: float = Field(default_factory=now_s)

    @property
    def is_local(self) -> bool:
        return self.endpoint is None


class NodeCapacity(_Model):
    """One alive Ray node of a site, as the site's heartbeat reports it (from Ray's resources)."""

    node_id: str
    head: bool = False
    total_cpus: float = 0.0
    free_cpus: float = 0.0
    total_gpus: float = 0.0
    free_gpus: float = 0.0
    gpu_types: list[str] = Field(default_factory=list)


class SiteCapacity(_Model):
    """What a heartbeat reports: real capacity from the site's Ray resources (and per node)."""

    name: str = ""
    region: str = ""
    cost_per_hour: float = 0.0
    max_agents: int = 0
    active_agents: int = 0
    available_agents: int = 0
    gpu_types: list[str] = Field(default_factory=list)
    free_gpus: dict[str, float] = Field(default_factory=dict)  # by gpu type
    total_gpus: float = 0.0
    total_cpus: float = 0.0
    free_cpus: float = 0.0
    warm_pool: int = 0
    version: str = ""
    isolation: Isolation | None = None  # None: the site did not say (an older site)
    nodes: list[NodeCapacity] = Field(default_factory=list)  # each alive node (empty: not reported)


class ClusterHealthState(_Model):
    cluster_id: str
    status: ClusterStatus = ClusterStatus.ACTIVE
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    rtt_ms: float | None = None  # EWMA
    last_heartbeat_at: float | None = None
    last_success_at: float | None = None
    offline_since: float | None = None
    last_error: str = ""
    capacity: SiteCapacity = Field(default_factory=SiteCapacity)
    evidence: str = ""  # the detector's verdict: alive, slow, silent or dead (core.detector.Verdict)
    suspicion: float = 0.0  # phi at the last update: ~1 overdue, >= phi_threshold long silent
    channel: str = ""  # the gRPC channel's connectivity state; empty for local


class ClusterStats(_Model):
    cluster_id: str
    status: ClusterStatus
    agents_by_status: dict[str, int] = Field(default_factory=dict)
    capacity: SiteCapacity = Field(default_factory=SiteCapacity)
    rtt_ms: float | None = None
    load: float = 0.0  # used / max


class ClusterInfo(_Model):
    """A registry row as the user sees it: the entry, its live health, and its agent count."""

    cluster: Cluster
    health: ClusterHealthState
    agents: int = 0  # non-final agents the federation has placed there


class ClusterChanges(_Model):
    """A ClusterActor's answer to ``wait_changes``: its health and the events buffered after the
    caller's cursor.

    ``incarnation`` names this life of the actor (a restarted actor's buffer numbers from 1 again);
    ``health_version`` rises with every health change worth telling (anything but the suspicion
    level alone); ``site_seq`` is the last site event seq covered (the balancer's resume cursor);
    ``reconnects`` counts the cluster's returns from offline (each asks for an orphan sweep).
    """

    incarnation: str
    health: ClusterHealthState
    health_version: int
    events: list[FederationEvent] = Field(default_factory=list)
    site_seq: int = 0
    reconnects: int = 0


class CandidateScore(_Model):
    cluster_id: str
    score: float
    factors: dict[str, float] = Field(default_factory=dict)


class PlacementDecision(_Model):
    """Why an agent went where it went: every candidate weighed and every rejection."""

    agent_id: str = ""
    chosen: str | None = None
    rule: str = ""  # "pinned" | "local-under-threshold" | "best-score" | "none"
    priority: Priority = Priority.AVAILABILITY
    candidates: list[CandidateScore] = Field(default_factory=list)
    rejections: dict[str, str] = Field(default_factory=dict)
    decided_at: float = Field(default_factory=now_s)


__all__ = [
    "DEFAULT_BUSY_TIMEOUT_S",
    "DEFAULT_INTERRUPT_GRACE_S",
    "LOCAL_CLUSTER_ID",
    "Agent",
    "AgentLimits",
    "AgentSnapshot",
    "AgentStatus",
    "BusyPolicy",
    "CandidateScore",
    "Cluster",
    "ClusterCapabilities",
    "ClusterChanges",
    "ClusterHealthState",
    "ClusterInfo",
    "ClusterStats",
    "ClusterStatus",
    "DrainReport",
    "EventKind",
    "EventType",
    "ExecChunk",
    "ExecResult",
    "FederationEvent",
    "FreezeOptions",
    "FreezeReport",
    "HealthSettings",
    "Isolation",
    "JournalEntry",
    "Migration",
    "MigrationPhase",
    "NodeCapacity",
    "OutputStream",
    "PhaseStamp",
    "PlacementDecision",
    "Priority",
    "RestartPolicy",
    "SiteCapacity",
    "SpawnConfig",
    "TransferHeader",
    "TransferMode",
    "TransferPiece",
    "TransferReport",
    "TransferTrailer",
    "new_agent_id",
    "new_migration_id",
    "now_s",
]
