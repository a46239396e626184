"""validate_migration: the refusals before a move starts (the protocol itself, v2, is
tests/unit/test_live_migration.py's)."""

from __future__ import annotations

import pytest

from godel_ray.core.migration import validate_migration
from godel_ray.core.placement import ClusterView
from godel_ray.errors import (
    AgentNotFound,
    AgentNotRunning,
    ClusterNotFound,
    CooldownActive,
    InvalidArgument,
    MigrationInProgress,
    NoPlacement,
)
from godel_ray.models import (
    Agent,
    AgentStatus,
    Cluster,
    ClusterCapabilities,
    ClusterHealthState,
    ClusterStatus,
    MigrationPhase,
    SpawnConfig,
)

AGENT = "ag-1"
SOURCE = "local"
TARGET = "gpu-east"
T0 = 1000.0
P = MigrationPhase


# --- validate_migration -------------------------------------------------------------------------


def cluster_view(cluster_id: str, *, status: ClusterStatus = ClusterStatus.ACTIVE, active: int = 0,
                 gpu_types: list[str] | None = None) -> ClusterView:
    caps = ClusterCapabilities(gpu=gpu_types is not None, gpu_types=gpu_types or [])
    return ClusterView(cluster=Cluster(id=cluster_id, endpoint=f"{cluster_id}:1", max_agents=4, capabilities=caps),
                       health=ClusterHealthState(cluster_id=cluster_id, status=status, rtt_ms=5.0),
                       active_agents=active)


def agent(**config: object) -> Agent:
    return Agent(id=AGENT, config=SpawnConfig.model_validate(config), cluster_id=SOURCE,
                 status=AgentStatus.RUNNING, epoch=3)


def validate(a: Agent | None, target: ClusterView | None, *, target_id: str = TARGET,
             last_attempt_at: float | None = None, in_progress: bool = False) -> None:
    validate_migration(a, cluster_view(SOURCE), target, target_id=target_id, last_attempt_at=last_attempt_at,
                       cooldown_s=30.0, now=T0, in_progress=in_progress)


def test_validate_accepts_a_good_move() -> None:
    validate(agent(), cluster_view(TARGET))
    validate(agent(gpu_type="nvidia-a100"), cluster_view(TARGET, gpu_types=["A100"]))
    validate(agent(cluster=SOURCE), cluster_view(TARGET))  # the original pin does not bind the move


def test_validate_refusals() -> None:
    with pytest.raises(AgentNotFound):
        validate(None, cluster_view(TARGET))
    with pytest.raises(AgentNotRunning):
        validate(agent().model_copy(update={"status": AgentStatus.TERMINATED}), cluster_view(TARGET))
    with pytest.raises(ClusterNotFound, match="nowhere"):
        validate(agent(), None, target_id="nowhere")
    with pytest.raises(InvalidArgument, match="already runs on local"):
        validate(agent(), cluster_view(SOURCE), target_id=SOURCE)
    with pytest.raises(MigrationInProgress):
        validate(agent(), cluster_view(TARGET), in_progress=True)


def test_validate_cooldown_says_when_to_retry() -> None:
    with pytest.raises(CooldownActive) as info:
        validate(agent(), cluster_view(TARGET), last_attempt_at=T0 - 10.0)
    assert info.value.retry_after_s == pytest.approx(20.0)
    validate(agent(), cluster_view(TARGET), last_attempt_at=T0 - 30.0)  # exactly elapsed: allowed


@pytest.mark.parametrize(("target", "reason"), [
    (cluster_view(TARGET, status=ClusterStatus.OFFLINE), "status is offline"),
    (cluster_view(TARGET, active=4), "full: 4/4 agents"),
])
def test_validate_target_must_pass_placement_filters(target: ClusterView, reason: str) -> None:
    with pytest.raises(NoPlacement) as info:
        validate(agent(), target)
    assert info.value.reasons == {TARGET: reason}
    assert reason in str(info.value)


def test_validate_gpu_agent_never_moves_to_a_cluster_without_its_gpu_type() -> None:
    with pytest.raises(NoPlacement, match="no nvidia-a100 GPU"):
        validate(agent(gpu_type="nvidia-a100"), cluster_view(TARGET, gpu_types=["T4"]))
