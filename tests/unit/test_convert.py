"""Proto <-> domain conversion: every wire field survives the round trip, enums map one to one."""

from __future__ import annotations

import math

import pytest

from godel_ray.errors import InvalidArgument
from godel_ray.models import (
    Agent,
    AgentStatus,
    EventKind,
    ExecChunk,
    ExecResult,
    FederationEvent,
    JournalEntry,
    NodeCapacity,
    OutputStream,
    RestartPolicy,
    SiteCapacity,
    SpawnConfig,
)
from godel_ray.rpc import convert
from godel_ray.rpc.gen import federation_pb2 as pb


def _full_agent() -> Agent:
    config = SpawnConfig(model="claude-sonnet-4", labels={"task": "dl", "team": "x"}, env={"A": "1"},
                         timeout_s=600.0, cpus=2.5, requires_gpu=True, gpu_count=2, gpu_type="nvidia-a100",
                         restart_policy=RestartPolicy.CHECKPOINT, checkpoint_interval_s=30.0)
    return Agent(id="ag-1", config=config, cluster_id="gpu-east", status=AgentStatus.RUNNING,
                 status_reason="ok", epoch=3, created_at=1.5, started_at=2.5, finished_at=None,
                 node_id="node-1", gpu_ids=["0", "1"])


def test_agent_round_trip_keeps_every_wire_field() -> None:
    agent = _full_agent()
    wire = pb.Agent.FromString(convert.agent_to_pb(agent).SerializeToString())
    assert convert.agent_from_pb(wire, cluster_id="gpu-east") == agent


def test_agent_optional_numbers_use_zero_for_unset() -> None:
    agent = Agent(id="ag-2", config=SpawnConfig())
    msg = convert.agent_to_pb(agent)
    assert (msg.started_at, msg.finished_at, msg.spec.timeout_s, msg.spec.gpu_count, msg.spec.gpu_type) == \
        (0.0, 0.0, 0.0, 0, "")
    back = convert.agent_from_pb(msg)
    assert back.started_at is None and back.finished_at is None
    assert back.config == SpawnConfig()  # no GPU: requires_gpu False, gpu_count default


def test_gpu_type_alone_implies_a_gpu() -> None:
    config = SpawnConfig(gpu_type="nvidia-h100")
    spec = convert.spec_to_pb(config)
    assert spec.gpu_count == 1
    back = convert.spec_from_pb(spec)
    assert back.needs_gpu and back.num_gpus == 1 and back.gpu_type == "nvidia-h100"


def test_placement_hints_stay_off_the_wire() -> None:
    config = SpawnConfig(cluster="east", preferred_region="eu", max_cost_per_hour=2.0, idempotency_key="k")
    back = convert.spec_from_pb(convert.spec_to_pb(config))
    assert (back.cluster, back.preferred_region, back.max_cost_per_hour, back.idempotency_key) == \
        (None, None, None, None)


@pytest.mark.parametrize("status", list(AgentStatus))
def test_every_agent_status_maps_both_ways(status: AgentStatus) -> None:
    value = convert.agent_status_to_pb(status)
    assert value != pb.AGENT_STATUS_UNSPECIFIED
    assert convert.agent_status_from_pb(value) is status


def test_unspecified_status_means_any() -> None:
    assert convert.agent_status_to_pb(None) == pb.AGENT_STATUS_UNSPECIFIED
    assert convert.agent_status_from_pb(pb.AGENT_STATUS_UNSPECIFIED) is None


def test_enum_tables_cover_both_sides() -> None:
    assert {convert.agent_status_to_pb(s) for s in AgentStatus} == \
        set(pb.AgentStatus.values()) - {pb.AGENT_STATUS_UNSPECIFIED}
    for kind in EventKind:
        event = FederationEvent(kind=kind, type="t")
        assert convert.event_kind_from_pb(convert.event_to_pb(event).kind) is kind
    for policy in RestartPolicy:
        assert convert.restart_policy_from_pb(convert.spec_to_pb(SpawnConfig(restart_policy=policy))
                                              .restart_policy) is policy
    for stream in OutputStream:
        msg = convert.exec_chunk_to_pb(ExecChunk(stream=stream, data="x"))
        assert convert.stream_from_pb(msg.chunk.stream) is stream


def test_exec_chunks_and_result() -> None:
    chunk = ExecChunk(stream=OutputStream.STDERR, data="héllo\n")
    assert convert.exec_chunk_from_pb(convert.exec_chunk_to_pb(chunk)) == chunk
    result = ExecResult(exit_code=-9, duration_s=1.25, timed_out=True, truncated=True)
    msg = convert.exec_chunk_to_pb(ExecChunk(result=result))
    assert msg.WhichOneof("payload") == "result"
    assert convert.exec_chunk_from_pb(msg).result == result


def test_event_round_trip() -> None:
    event = FederationEvent(seq=42, kind=EventKind.COMMAND, type="command.finished", cluster_id="east",
                            agent_id="ag-1", ts=12.5, data={"exit_code": "0"})
    wire = pb.Event.FromString(convert.event_to_pb(event).SerializeToString())
    assert convert.event_from_pb(wire, cluster_id="east") == event


def test_capacity_round_trip() -> None:
    cap = SiteCapacity(name="s", region="eu", cost_per_hour=3.5, max_agents=10, active_agents=2,
                       available_agents=8, gpu_types=["nvidia-a100"], free_gpus={"nvidia-a100": 1.0},
                       total_gpus=2.0, total_cpus=8.0, free_cpus=6.0, warm_pool=1, version="0.1.0")
    assert convert.capacity_from_pb(convert.capacity_to_pb(cap)) == cap


def test_capacity_round_trip_with_nodes() -> None:
    cap = SiteCapacity(name="s", total_gpus=2.0, total_cpus=8.0, nodes=[
        NodeCapacity(node_id="aa", head=True, total_cpus=4.0, free_cpus=3.0),
        NodeCapacity(node_id="bb", total_cpus=4.0, free_cpus=4.0, total_gpus=2.0, free_gpus=1.0,
                     gpu_types=["nvidia-a100"])])
    wire = pb.SiteCapacity.FromString(convert.capacity_to_pb(cap).SerializeToString())
    assert convert.capacity_from_pb(wire) == cap


@pytest.mark.parametrize("exit_code", [None, 0, 3])
def test_journal_entry_round_trip(exit_code: int | None) -> None:
    entry = JournalEntry(seq=7, command="make", exit_code=exit_code, started_at=9.0, duration_s=0.5,
                         timed_out=False)
    assert convert.journal_entry_from_pb(convert.journal_entry_to_pb(entry)) == entry


# --- what a client or a site may send: refused naming the field, never a bare pydantic error -------

NON_FINITE = [math.inf, -math.inf, math.nan, float("1e309")]


@pytest.mark.parametrize("value", NON_FINITE, ids=["inf", "-inf", "nan", "1e309"])
@pytest.mark.parametrize("field", ["timeout_s", "cpus", "checkpoint_interval_s"])
def test_spec_with_a_non_finite_number_is_invalid_argument(field: str, value: float) -> None:
    spec = convert.spec_to_pb(SpawnConfig())
    setattr(spec, field, value)
    with pytest.raises(InvalidArgument, match=f"agent spec: {field}: Input should be a finite number") as info:
        convert.spec_from_pb(spec)
    assert info.value.field == field


@pytest.mark.parametrize("value", NON_FINITE, ids=["inf", "-inf", "nan", "1e309"])
@pytest.mark.parametrize("field", ["cost_per_hour", "total_gpus", "total_cpus", "free_cpus", "free_gpus"])
def test_capacity_with_a_non_finite_number_is_invalid_argument(field: str, value: float) -> None:
    msg = convert.capacity_to_pb(SiteCapacity(name="s", gpu_types=["a100"], free_gpus={"a100": 1.0}))
    if field == "free_gpus":
        msg.free_gpus["a100"] = value
    else:
        setattr(msg, field, value)
    with pytest.raises(InvalidArgument, match="site capacity: .*finite number") as info:
        convert.capacity_from_pb(msg)
    assert info.value.field == field


def test_agent_and_journal_with_non_finite_times_are_invalid_argument() -> None:
    agent = convert.agent_to_pb(Agent(id="ag-1", config=SpawnConfig()))
    agent.created_at = math.nan
    with pytest.raises(InvalidArgument, match="agent 'ag-1': created_at") as info:
        convert.agent_from_pb(agent)
    assert info.value.field == "created_at"
    with pytest.raises(InvalidArgument, match="journal entry 3: duration_s"):
        convert.journal_entry_from_pb(pb.JournalEntry(seq=3, command="ls", started_at=1.0, duration_s=math.inf))
    with pytest.raises(InvalidArgument, match="exec result: duration_s"):
        convert.exec_chunk_from_pb(pb.ExecuteCommandResponse(result=pb.ExecResult(duration_s=math.nan)))


# --- events from a newer site: carried when the kind can be told, refused (and skipped) otherwise --

def test_an_unknown_event_type_of_a_known_kind_is_carried() -> None:
    wire = pb.Event(seq=5, kind=pb.EVENT_KIND_AGENT, type="agent.hibernated", agent_id="ag-1", ts=1.0)
    event = convert.event_from_pb(wire, cluster_id="east")
    assert (event.seq, event.kind, event.type, event.cluster_id) == (5, EventKind.AGENT, "agent.hibernated", "east")


@pytest.mark.parametrize(("type_", "kind"), [("agent.hibernated", EventKind.AGENT),
                                              ("migration.paused", EventKind.MIGRATION),
                                              ("cluster.status", EventKind.CLUSTER)])
def test_an_unknown_kind_number_is_read_from_the_type(type_: str, kind: EventKind) -> None:
    for number in (0, 99, -1):
        event = convert.event_from_pb(pb.Event(seq=6, kind=number, type=type_, ts=1.0))  # type: ignore[arg-type]
        assert (event.kind, event.type) == (kind, type_)


@pytest.mark.parametrize("type_", ["quota.exceeded", "", "agent", ".agent", "Agent.spawned"])
def test_an_event_whose_kind_cannot_be_told_is_invalid_argument(type_: str) -> None:
    with pytest.raises(InvalidArgument, match="event 7: kind 42 and type .* both unknown"):
        convert.event_from_pb(pb.Event(seq=7, kind=42, type=type_, ts=1.0))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="event kind 42 is unknown"):
        convert.event_kind_from_pb(42)


def test_an_event_with_a_non_finite_time_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="event 8: ts"):
        convert.event_from_pb(pb.Event(seq=8, kind=pb.EVENT_KIND_AGENT, type="agent.spawned", ts=math.inf))
