"""Checkpoint scheduling, failover plans and stale-copy detection: pure functions, fake clock."""

from __future__ import annotations

import subprocess
import sys

from godel_ray.core.failover import (
    KillStale,
    MarkFailed,
    Restore,
    due_checkpoints,
    failover_plan,
    loss_note,
    lost_agents,
    offline_for,
    stale_copies,
)
from godel_ray.models import Agent, AgentStatus, ClusterHealthState, ClusterStatus, RestartPolicy, SpawnConfig


def _agent(agent_id: str, cluster: str = "a", *, policy: RestartPolicy = RestartPolicy.CHECKPOINT,
           interval_s: float = 10.0, status: AgentStatus = AgentStatus.RUNNING, epoch: int = 1) -> Agent:
    config = SpawnConfig(restart_policy=policy, checkpoint_interval_s=interval_s)
    return Agent(id=agent_id, config=config, cluster_id=cluster, status=status, epoch=epoch)


def test_core_failover_imports_neither_ray_nor_grpc() -> None:
    code = "import sys, godel_ray.core.failover; print(sorted(m for m in ('ray', 'grpc') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_due_checkpoints_first_time_then_every_interval_oldest_first() -> None:
    agents = [_agent("x", interval_s=10), _agent("y", interval_s=10), _agent("z", interval_s=100)]
    assert due_checkpoints(agents, {}, now=0.0) == ["x", "y", "z"]  # never checkpointed: all due
    last = {"x": 5.0, "y": 1.0, "z": 1.0}
    assert due_checkpoints(agents, last, now=11.0) == ["y"]
    assert due_checkpoints(agents, last, now=15.0) == ["y", "x"]  # oldest checkpoint first
    assert due_checkpoints(agents, last, now=101.0) == ["y", "z", "x"]


def test_due_checkpoints_skips_policy_status_busy_and_unreachable() -> None:
    agents = [_agent("never", policy=RestartPolicy.NEVER), _agent("done", status=AgentStatus.TERMINATED),
              _agent("frozen", status=AgentStatus.MIGRATING), _agent("busy"), _agent("off", cluster="dead"),
              _agent("ok")]
    assert due_checkpoints(agents, {}, now=0.0, busy=frozenset({"busy"}),
                           unreachable=frozenset({"dead"})) == ["ok"]


def test_offline_for_counts_only_offline() -> None:
    assert offline_for(None, 10.0) == 0.0
    assert offline_for(ClusterHealthState(cluster_id="a", status=ClusterStatus.DEGRADED, offline_since=1.0), 10) == 0
    assert offline_for(ClusterHealthState(cluster_id="a", status=ClusterStatus.MAINTENANCE, offline_since=1.0),
                       10) == 0
    assert offline_for(ClusterHealthState(cluster_id="a", status=ClusterStatus.OFFLINE, offline_since=4.0), 10) == 6


def test_failover_plan_waits_for_the_grace_period() -> None:
    agents = [_agent("x")]
    assert failover_plan(agents, {"a": 1.9}, {"a": 2.0}, frozenset({"x"})) == []
    assert failover_plan(agents, {"a": 0.0}, {"a": 0.0}, frozenset({"x"})) == []  # not offline at all
    assert failover_plan(agents, {"a": 2.0}, {"a": 2.0}, frozenset({"x"})) == [Restore("x", "a", 2.0)]


def test_failover_plan_restores_checkpointed_and_fails_the_rest_with_reasons() -> None:
    agents = [_agent("ckpt"), _agent("no-ckpt-yet"), _agent("never", policy=RestartPolicy.NEVER),
              _agent("elsewhere", cluster="b"), _agent("ended", status=AgentStatus.FAILED), _agent("moving")]
    plan = failover_plan(agents, {"a": 5.0, "b": 0.0}, {"a": 2.0, "b": 2.0}, frozenset({"ckpt", "ended"}),
                         busy=frozenset({"moving"}))
    assert plan[0] == Restore("ckpt", "a", 5.0)
    failed = {a.agent_id: a for a in plan[1:]}
    assert set(failed) == {"no-ckpt-yet", "never"}
    assert all(isinstance(a, MarkFailed) and a.dead_cluster == "a" for a in failed.values())
    assert "first checkpoint" in failed["no-ckpt-yet"].reason
    assert "restart_policy is never" in failed["never"].reason and "offline for 5.0s" in failed["never"].reason


def test_stale_copies() -> None:
    table = {a.id: a for a in [_agent("moved", cluster="b", epoch=2), _agent("newer", cluster="a", epoch=3),
                                _agent("same", cluster="a", epoch=1), _agent("dead", status=AgentStatus.FAILED),
                                _agent("migrating", cluster="b")]}
    present = [_agent("moved", epoch=1), _agent("newer", epoch=2), _agent("same", epoch=1), _agent("dead"),
               _agent("unknown"), _agent("migrating"), _agent("moved-final", status=AgentStatus.TERMINATED)]
    out = stale_copies("a", present, table, busy=frozenset({"migrating"}))
    assert [(k.agent_id, k.epoch) for k in out] == [("moved", 1), ("newer", 2), ("dead", 1)]
    assert all(isinstance(k, KillStale) and k.cluster_id == "a" for k in out)
    assert "lives on b" in out[0].reason and "superseded by epoch 3" in out[1].reason
    assert "failed" in out[2].reason


def test_loss_note_names_the_checkpoint_and_the_loss() -> None:
    assert loss_note(12.5, 3, "west") == ("restored from the checkpoint taken at 1970-01-01T00:00:12Z after "
                                         "cluster west went offline; 3 command(s) run after it were lost")
    assert loss_note(12.5, 0, "west").endswith("no command was recorded after it, so nothing was lost")


def test_lost_agents_restores_checkpointed_ones_and_fails_the_rest_with_why() -> None:
    before = [_agent("ckpt"), _agent("fresh"), _agent("plain", policy=RestartPolicy.NEVER), _agent("kept")]
    table = {a.id: a for a in before}
    actions = lost_agents("a", before, [_agent("kept")], table, frozenset({"ckpt"}))
    assert actions[0] == Restore("ckpt", "a", 0.0, returned=True)
    assert [(type(x), x.agent_id) for x in actions[1:]] == [(MarkFailed, "fresh"), (MarkFailed, "plain")]
    fresh, plain = actions[1:]
    assert isinstance(fresh, MarkFailed) and isinstance(plain, MarkFailed)
    assert "no longer hosts the agent (it restarted)" in fresh.reason and "first checkpoint" in fresh.reason
    assert "restart_policy is never" in plain.reason


def test_lost_agents_judges_only_rows_older_than_the_answer_and_leaves_moves_alone() -> None:
    row = _agent("x")
    assert lost_agents("a", [row], [], {"x": row}, frozenset({"x"}), busy=frozenset({"x"})) == []  # a move or restore
    moved = row.model_copy(update={"cluster_id": "b", "epoch": 2})
    assert lost_agents("a", [row], [], {"x": moved}, frozenset({"x"})) == []  # changed since the question
    assert lost_agents("a", [row], [], {}, frozenset({"x"})) == []
    ended_there = row.model_copy(update={"status": AgentStatus.COMPLETED})
    assert lost_agents("a", [row], [ended_there], {"x": row}, frozenset()) == []  # its end is reported by its event
    assert lost_agents("a", [], [], {"x": row}, frozenset({"x"})) == []  # written after the question: not judged


def test_loss_note_says_how_the_cluster_lost_the_agent() -> None:
    assert "after cluster west restarted without it; " in loss_note(12.5, 1, "west", returned=True)
