"""Proto <-> domain conversion: the only place that knows both shapes.

Every wire field is mapped both ways; enums are mapped by explicit tables (never by number or name
arithmetic), so a new enum value on either side fails loudly here. Proto3 has no ``None``: ``0``
stands for "unset" on optional numbers (``timeout_s``, ``started_at``, ``finished_at``) and ``""``
for optional strings (``gpu_type``).

Everything read from the wire is a domain model built with validation: a field the model refuses
(``inf``/``nan`` in any number, from a client or from a site) is ``InvalidArgument`` naming the
message and the field, never a bare pydantic error. Events are the one lenient read: an unknown
kind number (a newer site) is taken from the type's prefix (``"agent.x"`` is an agent event) and an
unknown type is carried as it is (``FederationEvent.type`` is a string on purpose).

What does not cross the wire: the placement hints of ``SpawnConfig`` (``cluster``, ``priority``,
regions, latency/cost caps, ``idempotency_key`` which travels in the request) and
``Agent.cluster_id`` / ``FederationEvent.cluster_id``: the caller knows which cluster it called.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from godel_ray.errors import InvalidArgument
from godel_ray.inputs import describe_validation_error
from godel_ray.models import (
    SNAPSHOT_FORMAT_VERSION,
    Agent,
    AgentLimits,
    AgentSnapshot,
    AgentStatus,
    BusyPolicy,
    EventKind,
    ExecChunk,
    ExecResult,
    FederationEvent,
    FreezeOptions,
    FreezeReport,
    Isolation,
    JournalEntry,
    NodeCapacity,
    OutputStream,
    RestartPolicy,
    SiteCapacity,
    SpawnConfig,
)
from godel_ray.rpc.gen import federation_pb2 as pb
from godel_ray.settings import Limits

_AGENT_STATUS_TO_PB: dict[AgentStatus, pb.AgentStatus] = {
    AgentStatus.PENDING: pb.AGENT_STATUS_PENDING,
    AgentStatus.RUNNING: pb.AGENT_STATUS_RUNNING,
    AgentStatus.MIGRATING: pb.AGENT_STATUS_MIGRATING,
    AgentStatus.COMPLETED: pb.AGENT_STATUS_COMPLETED,
    AgentStatus.FAILED: pb.AGENT_STATUS_FAILED,
    AgentStatus.TERMINATED: pb.AGENT_STATUS_TERMINATED,
}
_AGENT_STATUS_FROM_PB: dict[int, AgentStatus] = {int(v): k for k, v in _AGENT_STATUS_TO_PB.items()}

_RESTART_TO_PB: dict[RestartPolicy, pb.RestartPolicy] = {
    RestartPolicy.NEVER: pb.RESTART_POLICY_NEVER,
    RestartPolicy.CHECKPOINT: pb.RESTART_POLICY_CHECKPOINT,
}
_RESTART_FROM_PB: dict[int, RestartPolicy] = {int(v): k for k, v in _RESTART_TO_PB.items()}

_STREAM_TO_PB: dict[OutputStream, pb.OutputStream] = {
    OutputStream.STDOUT: pb.OUTPUT_STREAM_STDOUT,
    OutputStream.STDERR: pb.OUTPUT_STREAM_STDERR,
}
_STREAM_FROM_PB: dict[int, OutputStream] = {int(v): k for k, v in _STREAM_TO_PB.items()}

_EVENT_KIND_TO_PB: dict[EventKind, pb.EventKind] = {
    EventKind.AGENT: pb.EVENT_KIND_AGENT,
    EventKind.COMMAND: pb.EVENT_KIND_COMMAND,
    EventKind.CLUSTER: pb.EVENT_KIND_CLUSTER,
    EventKind.MIGRATION: pb.EVENT_KIND_MIGRATION,
}
_EVENT_KIND_FROM_PB: dict[int, EventKind] = {int(v): k for k, v in _EVENT_KIND_TO_PB.items()}

_ISOLATION_TO_PB: dict[Isolation, pb.Isolation] = {
    Isolation.SANDBOX: pb.ISOLATION_SANDBOX,
    Isolation.NONE: pb.ISOLATION_NONE,
}
_ISOLATION_FROM_PB: dict[int, Isolation] = {int(v): k for k, v in _ISOLATION_TO_PB.items()}

_BUSY_TO_PB: dict[BusyPolicy, pb.BusyPolicy] = {
    BusyPolicy.WAIT: pb.BUSY_POLICY_WAIT,
    BusyPolicy.INTERRUPT: pb.BUSY_POLICY_INTERRUPT,
    BusyPolicy.LIVE_PROCESS: pb.BUSY_POLICY_LIVE_PROCESS,
}
_BUSY_FROM_PB: dict[int, BusyPolicy] = {int(v): k for k, v in _BUSY_TO_PB.items()}


M = TypeVar("M", bound=BaseModel)


def _none_if_zero(value: float) -> float | None:
    return value if value else None


def _build(model_cls: type[M], what: str, /, **fields: Any) -> M:
    """``model_cls(**fields)``, with a refusal as ``InvalidArgument`` naming ``what`` and the field."""
    try:
        return model_cls(**fields)
    except ValidationError as exc:
        loc = exc.errors()[0]["loc"]
        raise InvalidArgument(f"{what}: {describe_validation_error(exc)}",
                              field=str(loc[0]) if loc else what) from None


# --- enums -------------------------------------------------------------------------------------

def agent_status_to_pb(status: AgentStatus | None) -> pb.AgentStatus:
    return pb.AGENT_STATUS_UNSPECIFIED if status is None else _AGENT_STATUS_TO_PB[status]


def agent_status_from_pb(value: int) -> AgentStatus | None:
    """``UNSPECIFIED`` reads as ``None`` (e.g. "any status" in ListAgents); an unknown number (proto3
    enums are open) is ``InvalidArgument``."""
    if value == pb.AGENT_STATUS_UNSPECIFIED:
        return None
    status = _AGENT_STATUS_FROM_PB.get(value)
    if status is None:
        known = ", ".join(str(int(v)) for v in _AGENT_STATUS_TO_PB.values())
        raise InvalidArgument(f"agent status {value} is unknown: use 0 (any) or one of {known}", field="status")
    return status


def restart_policy_from_pb(value: int) -> RestartPolicy:
    return _RESTART_FROM_PB.get(value, RestartPolicy.NEVER)


def stream_from_pb(value: int) -> OutputStream:
    return _STREAM_FROM_PB.get(value, OutputStream.STDOUT)


def event_kind_from_pb(value: int) -> EventKind:
    """The kind for a known number; ``InvalidArgument`` for any other (proto3 enums are open)."""
    kind = _EVENT_KIND_FROM_PB.get(value)
    if kind is None:
        raise InvalidArgument(f"event kind {value} is unknown", field="kind")
    return kind


def _kind_of_type(type_: str) -> EventKind | None:
    """``"agent.spawned"`` -> ``EventKind.AGENT``; ``None`` when the prefix names no kind."""
    prefix, dot, _ = type_.partition(".")
    try:
        return EventKind(prefix) if dot else None
    except ValueError:
        return None


# --- spawn config / agent ----------------------------------------------------------------------

def spec_to_pb(config: SpawnConfig) -> pb.AgentSpec:
    return pb.AgentSpec(
        model=config.model,
        labels=dict(config.labels),
        env=dict(config.env),
        timeout_s=config.timeout_s or 0.0,
        cpus=config.cpus,
        gpu_count=config.num_gpus,
        gpu_type=config.gpu_type or "",
        restart_policy=_RESTART_TO_PB[config.restart_policy],
        checkpoint_interval_s=config.checkpoint_interval_s,
        limits=limits_to_pb(config.limits),
        unshare_net=config.unshare_net,
    )


def limits_to_pb(limits: AgentLimits) -> pb.AgentLimits:
    return pb.AgentLimits(memory_mb=limits.memory_mb or 0, processes=limits.processes or 0,
                          cpu_time_s=limits.cpu_time_s or 0.0, open_files=limits.open_files or 0,
                          workdir_mb=limits.workdir_mb or 0)


def limits_from_pb(msg: pb.AgentLimits) -> AgentLimits:
    """``0`` is "the site's default"; a negative or non-finite value is ``InvalidArgument``."""
    values: dict[str, float] = {"memory_mb": msg.memory_mb, "processes": msg.processes,
                                "cpu_time_s": msg.cpu_time_s, "open_files": msg.open_files,
                                "workdir_mb": msg.workdir_mb}
    for name, value in values.items():
        if not math.isfinite(value) or value < 0:
            raise InvalidArgument(f"limits.{name} must be a finite number > 0 (or 0 for the site's default); "
                                  f"got {value}", field=f"limits.{name}")
    return AgentLimits(memory_mb=msg.memory_mb or None, processes=msg.processes or None,
                       cpu_time_s=msg.cpu_time_s or None, open_files=msg.open_files or None,
                       workdir_mb=msg.workdir_mb or None)


def spec_from_pb(spec: pb.AgentSpec) -> SpawnConfig:
    needs_gpu = spec.gpu_count > 0 or bool(spec.gpu_type)
    return _build(
        SpawnConfig, "agent spec",
        model=spec.model,
        labels=dict(spec.labels),
        env=dict(spec.env),
        timeout_s=_none_if_zero(spec.timeout_s),
        cpus=spec.cpus,
        requires_gpu=needs_gpu,
        gpu_count=spec.gpu_count if spec.gpu_count > 0 else 1,
        gpu_type=spec.gpu_type or None,
        restart_policy=restart_policy_from_pb(spec.restart_policy),
        checkpoint_interval_s=spec.checkpoint_interval_s,
        limits=limits_from_pb(spec.limits),
        unshare_net=spec.unshare_net,
    )


def agent_to_pb(agent: Agent) -> pb.Agent:
    return pb.Agent(
        id=agent.id,
        spec=spec_to_pb(agent.config),
        status=_AGENT_STATUS_TO_PB[agent.status],
        status_reason=agent.status_reason,
        epoch=agent.epoch,
        created_at=agent.created_at,
        started_at=agent.started_at or 0.0,
        finished_at=agent.finished_at or 0.0,
        node_id=agent.node_id,
        gpu_ids=list(agent.gpu_ids),
    )


def agent_from_pb(msg: pb.Agent, cluster_id: str = "") -> Agent:
    return _build(
        Agent, f"agent {msg.id[:80]!r}",
        id=msg.id,
        config=spec_from_pb(msg.spec),
        cluster_id=cluster_id,
        status=_AGENT_STATUS_FROM_PB.get(msg.status, AgentStatus.PENDING),
        status_reason=msg.status_reason,
        epoch=msg.epoch,
        created_at=msg.created_at,
        started_at=_none_if_zero(msg.started_at),
        finished_at=_none_if_zero(msg.finished_at),
        node_id=msg.node_id,
        gpu_ids=list(msg.gpu_ids),
    )


# --- exec --------------------------------------------------------------------------------------

def exec_chunk_to_pb(chunk: ExecChunk) -> pb.ExecuteCommandResponse:
    if chunk.result is not None:
        r = chunk.result
        return pb.ExecuteCommandResponse(result=pb.ExecResult(
            exit_code=r.exit_code, duration_s=r.duration_s, timed_out=r.timed_out, truncated=r.truncated))
    return pb.ExecuteCommandResponse(chunk=pb.OutputChunk(
        stream=_STREAM_TO_PB[chunk.stream], data=chunk.data.encode("utf-8", errors="replace")))


def exec_chunk_from_pb(msg: pb.ExecuteCommandResponse) -> ExecChunk:
    """The result message carries no output: the caller folds the chunks (``collect``)."""
    if msg.WhichOneof("payload") == "result":
        r = msg.result
        return ExecChunk(result=_build(ExecResult, "exec result", exit_code=r.exit_code, duration_s=r.duration_s,
                                       timed_out=r.timed_out, truncated=r.truncated))
    return ExecChunk(stream=stream_from_pb(msg.chunk.stream),
                     data=msg.chunk.data.decode("utf-8", errors="replace"))


UTF8_REPLACEMENT_BYTES = 3  # an undecodable output byte arrives as U+FFFD, three bytes in UTF-8


def max_exec_response_bytes(limits: Limits) -> int:
    """The largest ``ExecResponse`` a site may send: a command's whole output (``max_output_bytes``,
    stdout and stderr together, each byte at worst a replacement character) and the envelope. The
    one message allowed past ``max_message_bytes``: collect mode answers in one reply."""
    return max(limits.max_message_bytes, UTF8_REPLACEMENT_BYTES * limits.max_output_bytes) + 64 * 1024


def exec_result_to_pb(result: ExecResult) -> pb.ExecResponse:
    return pb.ExecResponse(
        result=pb.ExecResult(exit_code=result.exit_code, duration_s=result.duration_s, timed_out=result.timed_out,
                             truncated=result.truncated),
        stdout=result.stdout.encode("utf-8", errors="replace"), stderr=result.stderr.encode("utf-8", errors="replace"))


def exec_result_from_pb(msg: pb.ExecResponse) -> ExecResult:
    r = msg.result
    return _build(ExecResult, "exec result", exit_code=r.exit_code, duration_s=r.duration_s, timed_out=r.timed_out,
                  truncated=r.truncated, stdout=msg.stdout.decode("utf-8", errors="replace"),
                  stderr=msg.stderr.decode("utf-8", errors="replace"))


# --- events ------------------------------------------------------------------------------------

def event_to_pb(event: FederationEvent) -> pb.Event:
    return pb.Event(seq=event.seq, kind=_EVENT_KIND_TO_PB[event.kind], type=event.type,
                    agent_id=event.agent_id, ts=event.ts, data=dict(event.data))


def event_from_pb(msg: pb.Event, cluster_id: str = "") -> FederationEvent:
    """The domain event. An unknown kind number is read from the type's prefix; ``InvalidArgument``
    when neither names a kind or a field is refused (the caller skips that one event)."""
    kind = _EVENT_KIND_FROM_PB.get(msg.kind) or _kind_of_type(msg.type)
    if kind is None:
        raise InvalidArgument(f"event {msg.seq}: kind {msg.kind} and type {msg.type[:80]!r} are both unknown",
                              field="kind")
    return _build(FederationEvent, f"event {msg.seq}", seq=msg.seq, kind=kind, type=msg.type,
                  cluster_id=cluster_id, agent_id=msg.agent_id, ts=msg.ts, data=dict(msg.data))


# --- capacity ----------------------------------------------------------------------------------

def capacity_to_pb(cap: SiteCapacity) -> pb.SiteCapacity:
    return pb.SiteCapacity(
        name=cap.name, region=cap.region, cost_per_hour=cap.cost_per_hour, max_agents=cap.max_agents,
        active_agents=cap.active_agents, available_agents=cap.available_agents,
        gpu_types=list(cap.gpu_types), free_gpus=dict(cap.free_gpus), total_gpus=cap.total_gpus,
        total_cpus=cap.total_cpus, free_cpus=cap.free_cpus, warm_pool=cap.warm_pool, version=cap.version,
        isolation=pb.ISOLATION_UNSPECIFIED if cap.isolation is None else _ISOLATION_TO_PB[cap.isolation],
        nodes=[pb.NodeCapacity(node_id=n.node_id, head=n.head, total_cpus=n.total_cpus, free_cpus=n.free_cpus,
                               total_gpus=n.total_gpus, free_gpus=n.free_gpus, gpu_types=list(n.gpu_types))
               for n in cap.nodes],
    )


def capacity_from_pb(msg: pb.SiteCapacity) -> SiteCapacity:
    return _build(
        SiteCapacity, "site capacity",
        name=msg.name, region=msg.region, cost_per_hour=msg.cost_per_hour, max_agents=msg.max_agents,
        active_agents=msg.active_agents, available_agents=msg.available_agents,
        gpu_types=list(msg.gpu_types), free_gpus=dict(msg.free_gpus), total_gpus=msg.total_gpus,
        total_cpus=msg.total_cpus, free_cpus=msg.free_cpus, warm_pool=msg.warm_pool, version=msg.version,
        isolation=_ISOLATION_FROM_PB.get(msg.isolation),  # unspecified or newer than us: unknown
        nodes=[NodeCapacity(node_id=n.node_id, head=n.head, total_cpus=n.total_cpus, free_cpus=n.free_cpus,
                            total_gpus=n.total_gpus, free_gpus=n.free_gpus, gpu_types=list(n.gpu_types))
               for n in msg.nodes],
    )


# --- snapshots ---------------------------------------------------------------------------------

def freeze_request_to_pb(agent_id: str, epoch: int, options: FreezeOptions | None) -> pb.FreezeAgentRequest:
    request = pb.FreezeAgentRequest(agent_id=agent_id, epoch=epoch)
    if options is not None:
        request.busy = _BUSY_TO_PB[options.busy]
        request.busy_timeout_s = options.busy_timeout_s
        request.interrupt_grace_s = options.grace_s
        request.target_cluster_id = options.target
    return request


def freeze_options_from_pb(msg: pb.FreezeAgentRequest) -> FreezeOptions | None:
    """The request's freeze options; None when it sent none (the defaults apply)."""
    if msg.busy == pb.BUSY_POLICY_UNSPECIFIED:
        return None
    fields: dict[str, Any] = {"busy": _BUSY_FROM_PB.get(msg.busy, BusyPolicy.WAIT), "grace_s": msg.interrupt_grace_s,
                              "target": msg.target_cluster_id}
    if msg.busy_timeout_s > 0:
        fields["busy_timeout_s"] = msg.busy_timeout_s
    return _build(FreezeOptions, "freeze options", **fields)


def freeze_report_to_pb(report: FreezeReport) -> pb.FreezeAgentReply:
    return pb.FreezeAgentReply(agent=agent_to_pb(report.agent), frozen_at=report.frozen_at or 0.0,
                               interrupted_seq=report.interrupted_seq or 0)


def freeze_report_from_pb(msg: pb.FreezeAgentReply, cluster_id: str) -> FreezeReport:
    return FreezeReport(agent=agent_from_pb(msg.agent, cluster_id), frozen_at=msg.frozen_at or None,
                        interrupted_seq=msg.interrupted_seq or None)


def journal_entry_to_pb(entry: JournalEntry) -> pb.JournalEntry:
    return pb.JournalEntry(seq=entry.seq, command=entry.command, exit_code=entry.exit_code or 0,
                           finished=entry.exit_code is not None, started_at=entry.started_at,
                           duration_s=entry.duration_s, timed_out=entry.timed_out,
                           interrupted=entry.interrupted, interrupt_reason=entry.interrupt_reason)


def journal_entry_from_pb(msg: pb.JournalEntry) -> JournalEntry:
    return _build(JournalEntry, f"journal entry {msg.seq}", seq=msg.seq, command=msg.command,
                  exit_code=msg.exit_code if msg.finished else None,
                  started_at=msg.started_at, duration_s=msg.duration_s, timed_out=msg.timed_out,
                  interrupted=msg.interrupted, interrupt_reason=msg.interrupt_reason)


def snapshot_format(header: pb.SnapshotHeader) -> int:
    """The header's snapshot format: 0 (unset) reads as 1; ``InvalidArgument`` for one newer than known."""
    version = header.format_version or 1
    if version > SNAPSHOT_FORMAT_VERSION:
        raise InvalidArgument(f"snapshot format {version} is newer than this side reads "
                              f"(up to {SNAPSHOT_FORMAT_VERSION}): upgrade it", field="format_version")
    return version


def snapshot_from_header(header: pb.SnapshotHeader, archive: bytes, cluster_id: str = "",
                         journal: list[JournalEntry] | None = None) -> AgentSnapshot:
    """The snapshot a header describes, with its (already checked) ``archive``; ``journal`` is the
    section that followed a format-2 header (format 1 carries it in the header itself)."""
    version = snapshot_format(header)
    entries = journal if version >= 2 else [journal_entry_from_pb(e) for e in header.journal]
    return _build(AgentSnapshot, "snapshot header", agent=agent_from_pb(header.agent, cluster_id),
                  journal=list(entries or []), archive=archive, sha256=header.sha256, taken_at=header.taken_at,
                  format_version=SNAPSHOT_FORMAT_VERSION, frozen_at=_none_if_zero(header.frozen_at))


def snapshot_header_to_pb(agent: Agent, journal_entries: int, archive_size: int, sha256: str,
                          taken_at: float, frozen_at: float | None = None) -> pb.SnapshotHeader:
    """A format-2 header: ``journal_entries`` ``journal_entry`` chunks follow it, then the archive."""
    return pb.SnapshotHeader(agent=agent_to_pb(agent), archive_size=archive_size, sha256=sha256,
                             taken_at=taken_at, format_version=SNAPSHOT_FORMAT_VERSION,
                             journal_entries=journal_entries, frozen_at=frozen_at or 0.0)


__all__ = [
    "agent_from_pb", "agent_status_from_pb", "agent_status_to_pb", "agent_to_pb", "capacity_from_pb",
    "capacity_to_pb", "event_from_pb", "event_kind_from_pb", "event_to_pb", "exec_chunk_from_pb",
    "exec_chunk_to_pb", "exec_result_from_pb", "exec_result_to_pb", "freeze_options_from_pb",
    "freeze_report_from_pb", "freeze_report_to_pb", "freeze_request_to_pb", "journal_entry_from_pb",
    "journal_entry_to_pb", "limits_from_pb", "limits_to_pb", "max_exec_response_bytes", "restart_policy_from_pb",
    "snapshot_format",
    "snapshot_from_header", "snapshot_header_to_pb", "spec_from_pb", "spec_to_pb", "stream_from_pb",
]
