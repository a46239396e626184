from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_STATUS_UNSPECIFIED: _ClassVar[AgentStatus]
    AGENT_STATUS_PENDING: _ClassVar[AgentStatus]
    AGENT_STATUS_RUNNING: _ClassVar[AgentStatus]
    AGENT_STATUS_MIGRATING: _ClassVar[AgentStatus]
    AGENT_STATUS_COMPLETED: _ClassVar[AgentStatus]
    AGENT_STATUS_FAILED: _ClassVar[AgentStatus]
    AGENT_STATUS_TERMINATED: _ClassVar[AgentStatus]

class RestartPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESTART_POLICY_UNSPECIFIED: _ClassVar[RestartPolicy]
    RESTART_POLICY_NEVER: _ClassVar[RestartPolicy]
    RESTART_POLICY_CHECKPOINT: _ClassVar[RestartPolicy]

class OutputStream(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_STREAM_UNSPECIFIED: _ClassVar[OutputStream]
    OUTPUT_STREAM_STDOUT: _ClassVar[OutputStream]
    OUTPUT_STREAM_STDERR: _ClassVar[OutputStream]

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_AGENT: _ClassVar[EventKind]
    EVENT_KIND_COMMAND: _ClassVar[EventKind]
    EVENT_KIND_CLUSTER: _ClassVar[EventKind]
    EVENT_KIND_MIGRATION: _ClassVar[EventKind]

class BusyPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BUSY_POLICY_UNSPECIFIED: _ClassVar[BusyPolicy]
    BUSY_POLICY_WAIT: _ClassVar[BusyPolicy]
    BUSY_POLICY_INTERRUPT: _ClassVar[BusyPolicy]
    BUSY_POLICY_LIVE_PROCESS: _ClassVar[BusyPolicy]

class Isolation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ISOLATION_UNSPECIFIED: _ClassVar[Isolation]
    ISOLATION_SANDBOX: _ClassVar[Isolation]
    ISOLATION_NONE: _ClassVar[Isolation]

class TransferMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSFER_MODE_SNAPSHOT: _ClassVar[TransferMode]
    TRANSFER_MODE_FULL: _ClassVar[TransferMode]
    TRANSFER_MODE_CHANGES: _ClassVar[TransferMode]
    TRANSFER_MODE_FINAL: _ClassVar[TransferMode]
AGENT_STATUS_UNSPECIFIED: AgentStatus
AGENT_STATUS_PENDING: AgentStatus
AGENT_STATUS_RUNNING: AgentStatus
AGENT_STATUS_MIGRATING: AgentStatus
AGENT_STATUS_COMPLETED: AgentStatus
AGENT_STATUS_FAILED: AgentStatus
AGENT_STATUS_TERMINATED: AgentStatus
RESTART_POLICY_UNSPECIFIED: RestartPolicy
RESTART_POLICY_NEVER: RestartPolicy
RESTART_POLICY_CHECKPOINT: RestartPolicy
OUTPUT_STREAM_UNSPECIFIED: OutputStream
OUTPUT_STREAM_STDOUT: OutputStream
OUTPUT_STREAM_STDERR: OutputStream
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_AGENT: EventKind
EVENT_KIND_COMMAND: EventKind
EVENT_KIND_CLUSTER: EventKind
EVENT_KIND_MIGRATION: EventKind
BUSY_POLICY_UNSPECIFIED: BusyPolicy
BUSY_POLICY_WAIT: BusyPolicy
BUSY_POLICY_INTERRUPT: BusyPolicy
BUSY_POLICY_LIVE_PROCESS: BusyPolicy
ISOLATION_UNSPECIFIED: Isolation
ISOLATION_SANDBOX: Isolation
ISOLATION_NONE: Isolation
TRANSFER_MODE_SNAPSHOT: TransferMode
TRANSFER_MODE_FULL: TransferMode
TRANSFER_MODE_CHANGES: TransferMode
TRANSFER_MODE_FINAL: TransferMode

class AgentLimits(_message.Message):
    __slots__ = ("memory_mb", "processes", "cpu_time_s", "open_files", "workdir_mb")
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    CPU_TIME_S_FIELD_NUMBER: _ClassVar[int]
    OPEN_FILES_FIELD_NUMBER: _ClassVar[int]
    WORKDIR_MB_FIELD_NUMBER: _ClassVar[int]
    memory_mb: int
    processes: int
    cpu_time_s: float
    open_files: int
    workdir_mb: int
    def __init__(self, memory_mb: _Optional[int] = ..., processes: _Optional[int] = ..., cpu_time_s: _Optional[float] = ..., open_files: _Optional[int] = ..., workdir_mb: _Optional[int] = ...) -> None: ...

class AgentSpec(_message.Message):
    __slots__ = ("model", "labels", "env", "timeout_s", "cpus", "gpu_count", "gpu_type", "restart_policy", "checkpoint_interval_s", "limits", "unshare_net")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    GPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    GPU_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESTART_POLICY_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    UNSHARE_NET_FIELD_NUMBER: _ClassVar[int]
    model: str
    labels: _containers.ScalarMap[str, str]
    env: _containers.ScalarMap[str, str]
    timeout_s: float
    cpus: float
    gpu_count: int
    gpu_type: str
    restart_policy: RestartPolicy
    checkpoint_interval_s: float
    limits: AgentLimits
    unshare_net: bool
    def __init__(self, model: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., env: _Optional[_Mapping[str, str]] = ..., timeout_s: _Optional[float] = ..., cpus: _Optional[float] = ..., gpu_count: _Optional[int] = ..., gpu_type: _Optional[str] = ..., restart_policy: _Optional[_Union[RestartPolicy, str]] = ..., checkpoint_interval_s: _Optional[float] = ..., limits: _Optional[_Union[AgentLimits, _Mapping]] = ..., unshare_net: _Optional[bool] = ...) -> None: ...

class Agent(_message.Message):
    __slots__ = ("id", "spec", "status", "status_reason", "epoch", "created_at", "started_at", "finished_at", "node_id", "gpu_ids")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_REASON_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    GPU_IDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: AgentSpec
    status: AgentStatus
    status_reason: str
    epoch: int
    created_at: float
    started_at: float
    finished_at: float
    node_id: str
    gpu_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[AgentSpec, _Mapping]] = ..., status: _Optional[_Union[AgentStatus, str]] = ..., status_reason: _Optional[str] = ..., epoch: _Optional[int] = ..., created_at: _Optional[float] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., node_id: _Optional[str] = ..., gpu_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SpawnAgentRequest(_message.Message):
    __slots__ = ("agent_id", "spec", "idempotency_key", "epoch")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    spec: AgentSpec
    idempotency_key: str
    epoch: int
    def __init__(self, agent_id: _Optional[str] = ..., spec: _Optional[_Union[AgentSpec, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., epoch: _Optional[int] = ...) -> None: ...

class SpawnAgentResponse(_message.Message):
    __slots__ = ("agent", "created")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    agent: Agent
    created: bool
    def __init__(self, agent: _Optional[_Union[Agent, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class KillAgentRequest(_message.Message):
    __slots__ = ("agent_id", "epoch", "reason")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    epoch: int
    reason: str
    def __init__(self, agent_id: _Optional[str] = ..., epoch: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class KillAgentResponse(_message.Message):
    __slots__ = ("agent",)
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent: Agent
    def __init__(self, agent: _Optional[_Union[Agent, _Mapping]] = ...) -> None: ...

class ExecuteCommandRequest(_message.Message):
    __slots__ = ("agent_id", "epoch", "command", "timeout_s")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    epoch: int
    command: str
    timeout_s: float
    def __init__(self, agent_id: _Optional[str] = ..., epoch: _Optional[int] = ..., command: _Optional[str] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class OutputChunk(_message.Message):
    __slots__ = ("stream", "data")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    stream: OutputStream
    data: bytes
    def __init__(self, stream: _Optional[_Union[OutputStream, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ExecResult(_message.Message):
    __slots__ = ("exit_code", "duration_s", "timed_out", "truncated")
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    duration_s: float
    timed_out: bool
    truncated: bool
    def __init__(self, exit_code: _Optional[int] = ..., duration_s: _Optional[float] = ..., timed_out: _Optional[bool] = ..., truncated: _Optional[bool] = ...) -> None: ...

class ExecuteCommandResponse(_message.Message):
    __slots__ = ("chunk", "result")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    chunk: OutputChunk
    result: ExecResult
    def __init__(self, chunk: _Optional[_Union[OutputChunk, _Mapping]] = ..., result: _Optional[_Union[ExecResult, _Mapping]] = ...) -> None: ...

class ExecResponse(_message.Message):
    __slots__ = ("result", "stdout", "stderr")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    result: ExecResult
    stdout: bytes
    stderr: bytes
    def __init__(self, result: _Optional[_Union[ExecResult, _Mapping]] = ..., stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ...) -> None: ...

class GetAgentStatusRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class GetAgentStatusResponse(_message.Message):
    __slots__ = ("agent",)
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent: Agent
    def __init__(self, agent: _Optional[_Union[Agent, _Mapping]] = ...) -> None: ...

class ListAgentsRequest(_message.Message):
    __slots__ = ("status", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    status: AgentStatus
    labels: _containers.ScalarMap[str, str]
    def __init__(self, status: _Optional[_Union[AgentStatus, str]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents",)
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[Agent]
    def __init__(self, agents: _Optional[_Iterable[_Union[Agent, _Mapping]]] = ...) -> None: ...

class StreamEventsRequest(_message.Message):
    __slots__ = ("since_seq",)
    SINCE_SEQ_FIELD_NUMBER: _ClassVar[int]
    since_seq: int
    def __init__(self, since_seq: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("seq", "kind", "type", "agent_id", "ts", "data")
    class DataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    seq: int
    kind: EventKind
    type: str
    agent_id: str
    ts: float
    data: _containers.ScalarMap[str, str]
    def __init__(self, seq: _Optional[int] = ..., kind: _Optional[_Union[EventKind, str]] = ..., type: _Optional[str] = ..., agent_id: _Optional[str] = ..., ts: _Optional[float] = ..., data: _Optional[_Mapping[str, str]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("sent_at",)
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    sent_at: float
    def __init__(self, sent_at: _Optional[float] = ...) -> None: ...

class SiteCapacity(_message.Message):
    __slots__ = ("name", "region", "cost_per_hour", "max_agents", "active_agents", "available_agents", "gpu_types", "free_gpus", "total_gpus", "total_cpus", "free_cpus", "warm_pool", "version", "isolation", "nodes")
    class FreeGpusEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    COST_PER_HOUR_FIELD_NUMBER: _ClassVar[int]
    MAX_AGENTS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_AGENTS_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_AGENTS_FIELD_NUMBER: _ClassVar[int]
    GPU_TYPES_FIELD_NUMBER: _ClassVar[int]
    FREE_GPUS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_GPUS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_CPUS_FIELD_NUMBER: _ClassVar[int]
    FREE_CPUS_FIELD_NUMBER: _ClassVar[int]
    WARM_POOL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ISOLATION_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    name: str
    region: str
    cost_per_hour: float
    max_agents: int
    active_agents: int
    available_agents: int
    gpu_types: _containers.RepeatedScalarFieldContainer[str]
    free_gpus: _containers.ScalarMap[str, float]
    total_gpus: float
    total_cpus: float
    free_cpus: float
    warm_pool: int
    version: str
    isolation: Isolation
    nodes: _containers.RepeatedCompositeFieldContainer[NodeCapacity]
    def __init__(self, name: _Optional[str] = ..., region: _Optional[str] = ..., cost_per_hour: _Optional[float] = ..., max_agents: _Optional[int] = ..., active_agents: _Optional[int] = ..., available_agents: _Optional[int] = ..., gpu_types: _Optional[_Iterable[str]] = ..., free_gpus: _Optional[_Mapping[str, float]] = ..., total_gpus: _Optional[float] = ..., total_cpus: _Optional[float] = ..., free_cpus: _Optional[float] = ..., warm_pool: _Optional[int] = ..., version: _Optional[str] = ..., isolation: _Optional[_Union[Isolation, str]] = ..., nodes: _Optional[_Iterable[_Union[NodeCapacity, _Mapping]]] = ...) -> None: ...

class NodeCapacity(_message.Message):
    __slots__ = ("node_id", "head", "total_cpus", "free_cpus", "total_gpus", "free_gpus", "gpu_types")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    TOTAL_CPUS_FIELD_NUMBER: _ClassVar[int]
    FREE_CPUS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_GPUS_FIELD_NUMBER: _ClassVar[int]
    FREE_GPUS_FIELD_NUMBER: _ClassVar[int]
    GPU_TYPES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    head: bool
    total_cpus: float
    free_cpus: float
    total_gpus: float
    free_gpus: float
    gpu_types: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_id: _Optional[str] = ..., head: _Optional[bool] = ..., total_cpus: _Optional[float] = ..., free_cpus: _Optional[float] = ..., total_gpus: _Optional[float] = ..., free_gpus: _Optional[float] = ..., gpu_types: _Optional[_Iterable[str]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("capacity", "received_at")
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    capacity: SiteCapacity
    received_at: float
    def __init__(self, capacity: _Optional[_Union[SiteCapacity, _Mapping]] = ..., received_at: _Optional[float] = ...) -> None: ...

class ExportAgentRequest(_message.Message):
    __slots__ = ("agent_id", "epoch", "freeze", "mode")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    FREEZE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    epoch: int
    freeze: bool
    mode: TransferMode
    def __init__(self, agent_id: _Optional[str] = ..., epoch: _Optional[int] = ..., freeze: _Optional[bool] = ..., mode: _Optional[_Union[TransferMode, str]] = ...) -> None: ...

class JournalEntry(_message.Message):
    __slots__ = ("seq", "command", "exit_code", "finished", "started_at", "duration_s", "timed_out", "interrupted", "interrupt_reason")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    INTERRUPTED_FIELD_NUMBER: _ClassVar[int]
    INTERRUPT_REASON_FIELD_NUMBER: _ClassVar[int]
    seq: int
    command: str
    exit_code: int
    finished: bool
    started_at: float
    duration_s: float
    timed_out: bool
    interrupted: bool
    interrupt_reason: str
    def __init__(self, seq: _Optional[int] = ..., command: _Optional[str] = ..., exit_code: _Optional[int] = ..., finished: _Optional[bool] = ..., started_at: _Optional[float] = ..., duration_s: _Optional[float] = ..., timed_out: _Optional[bool] = ..., interrupted: _Optional[bool] = ..., interrupt_reason: _Optional[str] = ...) -> None: ...

class SnapshotHeader(_message.Message):
    __slots__ = ("agent", "journal", "archive_size", "sha256", "taken_at", "format_version", "journal_entries", "frozen_at", "mode", "agent_id", "epoch")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TAKEN_AT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    FROZEN_AT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    agent: Agent
    journal: _containers.RepeatedCompositeFieldContainer[JournalEntry]
    archive_size: int
    sha256: str
    taken_at: float
    format_version: int
    journal_entries: int
    frozen_at: float
    mode: TransferMode
    agent_id: str
    epoch: int
    def __init__(self, agent: _Optional[_Union[Agent, _Mapping]] = ..., journal: _Optional[_Iterable[_Union[JournalEntry, _Mapping]]] = ..., archive_size: _Optional[int] = ..., sha256: _Optional[str] = ..., taken_at: _Optional[float] = ..., format_version: _Optional[int] = ..., journal_entries: _Optional[int] = ..., frozen_at: _Optional[float] = ..., mode: _Optional[_Union[TransferMode, str]] = ..., agent_id: _Optional[str] = ..., epoch: _Optional[int] = ...) -> None: ...

class SnapshotTrailer(_message.Message):
    __slots__ = ("sha256", "size_bytes", "dirty_bytes")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DIRTY_BYTES_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size_bytes: int
    dirty_bytes: int
    def __init__(self, sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., dirty_bytes: _Optional[int] = ...) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("header", "data", "journal_entry", "trailer", "deleted_path")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_ENTRY_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    DELETED_PATH_FIELD_NUMBER: _ClassVar[int]
    header: SnapshotHeader
    data: bytes
    journal_entry: JournalEntry
    trailer: SnapshotTrailer
    deleted_path: str
    def __init__(self, header: _Optional[_Union[SnapshotHeader, _Mapping]] = ..., data: _Optional[bytes] = ..., journal_entry: _Optional[_Union[JournalEntry, _Mapping]] = ..., trailer: _Optional[_Union[SnapshotTrailer, _Mapping]] = ..., deleted_path: _Optional[str] = ...) -> None: ...

class ImportAgentResponse(_message.Message):
    __slots__ = ("agent", "bytes_moved", "dirty_bytes", "members")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_MOVED_FIELD_NUMBER: _ClassVar[int]
    DIRTY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    agent: Agent
    bytes_moved: int
    dirty_bytes: int
    members: int
    def __init__(self, agent: _Optional[_Union[Agent, _Mapping]] = ..., bytes_moved: _Optional[int] = ..., dirty_bytes: _Optional[int] = ..., members: _Optional[int] = ...) -> None: ...

class PrepareAgentRequest(_message.Message):
    __slots__ = ("agent",)
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent: Agent
    def __init__(self, agent: _Optional[_Union[Agent, _Mapping]] = ...) -> None: ...

class PrepareAgentResponse(_message.Message):
    __slots__ = ("agent",)
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent: Agent
    def __init__(self, agent: _Optional[_Union[Agent, _Mapping]] = ...) -> None: ...

class AgentRef(_message.Message):
    __slots__ = ("agent_id", "epoch")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    epoch: int
    def __init__(self, agent_id: _Optional[str] = ..., epoch: _Optional[int] = ...) -> None: ...

class AgentReply(_message.Message):
    __slots__ = ("agent",)
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent: Agent
    def __init__(self, agent: _Optional[_Union[Agent, _Mapping]] = ...) -> None: ...

class FreezeAgentRequest(_message.Message):
    __slots__ = ("agent_id", "epoch", "busy", "busy_timeout_s", "interrupt_grace_s", "target_cluster_id")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    BUSY_FIELD_NUMBER: _ClassVar[int]
    BUSY_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    INTERRUPT_GRACE_S_FIELD_NUMBER: _ClassVar[int]
    TARGET_CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    epoch: int
    busy: BusyPolicy
    busy_timeout_s: float
    interrupt_grace_s: float
    target_cluster_id: str
    def __init__(self, agent_id: _Optional[str] = ..., epoch: _Optional[int] = ..., busy: _Optional[_Union[BusyPolicy, str]] = ..., busy_timeout_s: _Optional[float] = ..., interrupt_grace_s: _Optional[float] = ..., target_cluster_id: _Optional[str] = ...) -> None: ...

class FreezeAgentReply(_message.Message):
    __slots__ = ("agent", "frozen_at", "interrupted_seq")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    FROZEN_AT_FIELD_NUMBER: _ClassVar[int]
    INTERRUPTED_SEQ_FIELD_NUMBER: _ClassVar[int]
    agent: Agent
    frozen_at: float
    interrupted_seq: int
    def __init__(self, agent: _Optional[_Union[Agent, _Mapping]] = ..., frozen_at: _Optional[float] = ..., interrupted_seq: _Optional[int] = ...) -> None: ...

class ResumeAgentRequest(_message.Message):
    __slots__ = ("agent_id", "epoch")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    epoch: int
    def __init__(self, agent_id: _Optional[str] = ..., epoch: _Optional[int] = ...) -> None: ...

class ResumeAgentResponse(_message.Message):
    __slots__ = ("agent",)
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent: Agent
    def __init__(self, agent: _Optional[_Union[Agent, _Mapping]] = ...) -> None: ...
