"""The failure detector and the health it drives, with a fake clock: dead, silent, slow, flapping.

``simulate`` plays the ClusterActor's part: it probes when the tracker says (``next_probe_in_s``),
gives up on a probe after the heartbeat deadline, and reports channel changes as a gRPC channel
with 1 s keepalive pings and a 2 s ping timeout shows them. A ``World`` says how the site behaves
at each instant (the numbers come from grpcio 1.85 against a real server: SIGKILL drops the
transport at once and refuses reconnects; SIGSTOP keeps the channel READY until the ping timeout,
then no connect attempt gets the server's SETTINGS frame).
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from godel_ray.core.detector import (
    ChannelState,
    FailureDetector,
    PhiAccrual,
    ProbeFailure,
    Verdict,
    probe_failure,
)
from godel_ray.core.failover import failover_plan, grace_s, offline_for
from godel_ray.core.health import HealthTracker
from godel_ray.errors import ClusterUnavailable, DeadlineExceeded, Unauthenticated
from godel_ray.models import Agent, ClusterHealthState, ClusterStatus, HealthSettings, RestartPolicy, SpawnConfig

DEFAULTS = HealthSettings()
DT = 0.01
PING_DROP_S = 3.0  # keepalive every 1 s, ping timeout 2 s: a frozen peer's transport is dropped by then
RTT_S = 0.005
READY, DOWN = ChannelState.READY, ChannelState.TRANSIENT_FAILURE
Outcome = tuple[float, ProbeFailure | None]  # (when the probe completes, why it failed or None)


@dataclass
class World:
    answer: Callable[[float], Outcome]  # a probe sent at t
    channel: Callable[[float], ChannelState]


@dataclass
class Run:
    tracker: HealthTracker
    transitions: list[tuple[float, ClusterStatus, str]] = field(default_factory=list)

    def first(self, status: ClusterStatus) -> tuple[float, str] | None:
        return next(((t, why) for t, s, why in self.transitions if s is status), None)

    @property
    def statuses(self) -> list[ClusterStatus]:
        return [s for _, s, _ in self.transitions]


def simulate(world: World, until_s: float, settings: HealthSettings = DEFAULTS) -> Run:
    run = Run(HealthTracker("site", settings))
    tracker = run.tracker
    channel: ChannelState | None = None
    next_probe_at = 0.0
    pending: tuple[float, ProbeFailure | None, float] | None = None

    def note(t: float, status: ClusterStatus | None) -> None:
        if status is not None:
            run.transitions.append((round(t, 3), status, tracker.state.evidence))

    for step in range(int(until_s / DT) + 1):
        t = step * DT
        state = world.channel(t)
        if state is not channel:
            channel = state
            note(t, tracker.on_channel(state, t))
        if pending is not None and pending[0] <= t + 1e-9:
            _, failure, sent = pending
            pending = None
            if failure is None:
                note(t, tracker.on_success((t - sent) * 1000.0, tracker.state.capacity, t))
            else:
                note(t, tracker.on_failure(failure.value, t, failure))
            next_probe_at = t + tracker.next_probe_in_s()
        if pending is None and t >= next_probe_at - 1e-9:
            done, failure = world.answer(t)
            if done - t > settings.heartbeat_timeout_s:
                done, failure = t + settings.heartbeat_timeout_s, ProbeFailure.TIMEOUT
            pending = (max(done, t + DT), failure, t)
        note(t, tracker.tick(t))
    return run


def up_until(end: float, after: World) -> World:
    """Healthy until ``end``, then ``after``."""
    return World(answer=lambda t: (t + RTT_S, None) if t < end else after.answer(t),
                 channel=lambda t: READY if t < end else after.channel(t))


def killed_at(k: float) -> World:
    """SIGKILL at ``k``: the transport drops at once; every connect is refused."""
    return up_until(k, World(answer=lambda t: (t + 0.001, ProbeFailure.REFUSED), channel=lambda t: DOWN))


def frozen(start: float, end: float = math.inf) -> World:
    """SIGSTOP at ``start``, SIGCONT at ``end``."""
    def answer(t: float) -> Outcome:
        if t < start or t >= end:
            return t + RTT_S, None
        if t >= start + PING_DROP_S:
            return t + 0.001, ProbeFailure.TIMEOUT  # reconnects time out waiting for SETTINGS
        return end + RTT_S, None  # held by the frozen process: answered on SIGCONT (if in time)

    def channel(t: float) -> ChannelState:
        return DOWN if start + PING_DROP_S <= t < end else READY

    return World(answer, channel)


def partitioned(start: float, end: float = math.inf) -> World:
    """Packets dropped from ``start``; after the ping timeout, no route at all (link down)."""
    def answer(t: float) -> Outcome:
        if t < start or t >= end:
            return t + RTT_S, None
        if t >= start + PING_DROP_S:
            return t + 0.001, ProbeFailure.UNREACHABLE
        return math.inf, None

    def channel(t: float) -> ChannelState:
        return DOWN if start + PING_DROP_S <= t < end else READY

    return World(answer, channel)


def slow(rtt_s: Callable[[float], float]) -> World:
    """A loaded site: its transport answers pings (READY), its heartbeats take ``rtt_s(t)``."""
    return World(answer=lambda t: (t + rtt_s(t), None), channel=lambda t: READY)


# --- dead -----------------------------------------------------------------------------------------

def test_a_killed_site_is_dead_from_connection_evidence_within_about_a_second() -> None:
    run = simulate(killed_at(20.0), 40.0)
    offline = run.first(ClusterStatus.OFFLINE)
    assert offline is not None and offline[1] == Verdict.DEAD.value
    assert 20.0 < offline[0] <= 21.5
    assert run.statuses == [ClusterStatus.DEGRADED, ClusterStatus.OFFLINE]  # one event per transition
    state = run.tracker.state
    assert state.consecutive_failures >= DEFAULTS.offline_after and state.last_error == "refused"
    assert grace_s(state, DEFAULTS) == DEFAULTS.dead_grace_period_s
    # restore can start within 15 s of the death with room to spare for the restore itself
    assert offline[0] - 20.0 + DEFAULTS.dead_grace_period_s < 5.0


def test_refused_needs_offline_after_probes_in_a_row() -> None:
    detector = FailureDetector(DEFAULTS)
    detector.channel_changed(READY, 0.0)
    detector.answered(5.0, 1.0)
    detector.channel_changed(DOWN, 1.5)
    detector.failed(ProbeFailure.REFUSED, 1.6)
    detector.failed(ProbeFailure.REFUSED, 1.85)
    assert detector.verdict(1.9) is Verdict.SLOW
    assert detector.next_probe_in_s() < DEFAULTS.heartbeat_interval_s  # confirm quickly
    detector.failed(ProbeFailure.TIMEOUT, 2.1)  # the streak of refusals is broken
    detector.failed(ProbeFailure.REFUSED, 2.2)
    assert detector.verdict(2.2) is Verdict.SLOW
    detector.failed(ProbeFailure.REFUSED, 2.3)
    detector.failed(ProbeFailure.REFUSED, 2.4)
    assert detector.verdict(2.4) is Verdict.DEAD


# --- silent ---------------------------------------------------------------------------------------

def test_a_frozen_site_is_silent_within_a_few_intervals_never_before_its_pings_stop() -> None:
    run = simulate(frozen(20.0), 60.0)
    offline = run.first(ClusterStatus.OFFLINE)
    assert offline is not None and offline[1] == Verdict.SILENT.value
    assert 20.0 + PING_DROP_S <= offline[0] <= 20.0 + 8.0
    assert run.tracker.state.suspicion >= DEFAULTS.phi_threshold
    assert grace_s(run.tracker.state, DEFAULTS) == DEFAULTS.grace_period_s


@pytest.mark.parametrize("pause_s", [1.0, 2.0, 3.0])
def test_a_site_frozen_for_seconds_is_never_offline_and_comes_back(pause_s: float) -> None:
    for start in (20.0, 20.3, 20.7):  # where in the heartbeat rhythm the freeze lands
        run = simulate(frozen(start, start + pause_s), 40.0)
        assert ClusterStatus.OFFLINE not in run.statuses, (start, run.transitions)
        assert run.tracker.status is ClusterStatus.ACTIVE


def test_a_partitioned_site_is_silent_not_dead() -> None:
    run = simulate(partitioned(20.0), 60.0)
    offline = run.first(ClusterStatus.OFFLINE)
    assert offline is not None and offline[1] == Verdict.SILENT.value
    assert run.tracker.state.evidence == Verdict.SILENT.value  # unreachable never reads as refused


def test_a_short_partition_is_not_offline_and_a_long_one_comes_back_after_hysteresis() -> None:
    assert ClusterStatus.OFFLINE not in simulate(partitioned(20.0, 22.0), 40.0).statuses
    run = simulate(partitioned(20.0, 40.0), 60.0)
    assert run.statuses == [ClusterStatus.DEGRADED, ClusterStatus.OFFLINE, ClusterStatus.ACTIVE]
    back = run.first(ClusterStatus.ACTIVE)
    assert back is not None and back[0] >= 40.0 + DEFAULTS.heartbeat_interval_s  # recover_after answers


def test_silence_without_failed_probes_blames_nobody() -> None:
    """A stalled control plane sends no probes: elapsed time alone never makes a site offline."""
    tracker = HealthTracker("c", DEFAULTS)
    tracker.on_success(5.0, tracker.state.capacity, 0.0)
    tracker.on_failure("timeout", 100.0)
    assert tracker.tick(1000.0) is None
    assert tracker.detector.phi(1000.0) >= DEFAULTS.phi_threshold
    assert tracker.status is ClusterStatus.ACTIVE


# --- slow -----------------------------------------------------------------------------------------

def test_a_site_whose_heartbeats_time_out_but_whose_channel_answers_is_degraded_never_offline() -> None:
    run = simulate(slow(lambda t: 5.0 if 20.0 <= t < 80.0 else RTT_S), 100.0)  # 60 s of timeouts
    assert run.statuses == [ClusterStatus.DEGRADED, ClusterStatus.ACTIVE]
    assert all(why != Verdict.SILENT.value for _, _, why in run.transitions)


def test_slow_answers_are_degraded_after_n_never_offline_and_probed_no_faster() -> None:
    run = simulate(slow(lambda t: 0.8 if 20.0 <= t < 50.0 else RTT_S), 70.0)
    assert run.statuses == [ClusterStatus.DEGRADED, ClusterStatus.ACTIVE]
    degraded = run.first(ClusterStatus.DEGRADED)
    assert degraded is not None and degraded[0] > 20.0 + DEFAULTS.heartbeat_interval_s  # not on the first
    tracker = HealthTracker("c", DEFAULTS)
    tracker.on_channel(READY, 0.0)
    tracker.on_failure("deadline", 1.0, ProbeFailure.TIMEOUT)
    assert tracker.next_probe_in_s() == DEFAULTS.heartbeat_interval_s  # no added load on a loaded site


def test_a_site_answering_with_errors_is_alive() -> None:
    tracker = HealthTracker("c", DEFAULTS)
    for i in range(30):
        tracker.on_failure("unauthenticated", float(i), ProbeFailure.ERROR)
    assert tracker.status is ClusterStatus.DEGRADED and tracker.state.evidence == Verdict.SLOW.value


# --- flapping -------------------------------------------------------------------------------------

def test_a_flapping_site_is_never_offline() -> None:
    """Frozen for 1.5 s out of every 3 s, for a minute."""
    def answer(t: float) -> Outcome:
        phase = t % 3.0
        return (t + RTT_S, None) if phase < 1.5 else (t - phase + 3.0 + RTT_S, None)

    run = simulate(World(answer, lambda t: READY), 60.0)
    assert ClusterStatus.OFFLINE not in run.statuses


def test_alternating_answers_and_failures_emit_nothing() -> None:
    tracker = HealthTracker("c", DEFAULTS)
    events = []
    for i in range(20):
        now = float(i)
        if i % 2:
            events.append(tracker.on_failure("timeout", now))
        else:
            events.append(tracker.on_success(5.0, tracker.state.capacity, now))
    assert events == [None] * 20 and tracker.status is ClusterStatus.ACTIVE


def test_transitions_are_emitted_once_each_while_offline_persists() -> None:
    run = simulate(killed_at(10.0), 120.0)
    assert run.statuses.count(ClusterStatus.OFFLINE) == 1


# --- phi accrual ----------------------------------------------------------------------------------

def test_phi_grows_with_silence_and_adapts_to_the_rhythm_seen() -> None:
    fast = PhiAccrual(1.0, acceptable_pause_s=0.0)
    for i in range(50):
        fast.arrival(float(i))
    values = [fast.phi(s) for s in (0.5, 1.0, 1.5, 2.0, 3.0, 10.0, 1e6)]
    assert values == sorted(values) and values[0] < 0.5 and values[-1] < 100.0
    lazy = PhiAccrual(1.0, acceptable_pause_s=0.0)
    for i in range(50):
        lazy.arrival(float(3 * i))  # an answer every 3 s
    assert lazy.phi(2.0) < fast.phi(2.0)
    assert lazy.mean_s() == pytest.approx(3.0, rel=0.1)


def test_channel_ready_and_stream_events_are_signs_of_life() -> None:
    detector = FailureDetector(DEFAULTS)
    detector.answered(5.0, 0.0)
    detector.channel_changed(DOWN, 1.0)
    detector.stream_event(30.0)
    assert detector.silence_s(31.0) == pytest.approx(1.0)
    detector.channel_changed(READY, 40.0)
    assert detector.silence_s(40.5) == pytest.approx(0.5) and detector.transport_alive()
    detector.channel_changed(ChannelState.IDLE, 41.0)
    assert not detector.transport_alive()


def test_probe_failure_reads_the_transport_cause() -> None:
    assert probe_failure(ClusterUnavailable("x", cause="refused")) is ProbeFailure.REFUSED
    assert probe_failure(ClusterUnavailable("x", cause="unreachable")) is ProbeFailure.UNREACHABLE
    assert probe_failure(ClusterUnavailable("x", cause="silent")) is ProbeFailure.TIMEOUT
    assert probe_failure(ClusterUnavailable("x", tls=True)) is ProbeFailure.ERROR
    assert probe_failure(DeadlineExceeded("x")) is ProbeFailure.TIMEOUT
    assert probe_failure(TimeoutError()) is ProbeFailure.TIMEOUT
    assert probe_failure(Unauthenticated("x")) is ProbeFailure.ERROR
    assert probe_failure(RuntimeError("x")) is ProbeFailure.TIMEOUT


# --- failover policy ------------------------------------------------------------------------------

def _agent(agent_id: str) -> Agent:
    return Agent(id=agent_id, config=SpawnConfig(restart_policy=RestartPolicy.CHECKPOINT), cluster_id="a")


def test_grace_scales_with_the_evidence_and_nothing_fails_over_while_degraded() -> None:
    settings = HealthSettings(grace_period_s=10.0, dead_grace_period_s=2.0)

    def health(status: ClusterStatus, evidence: str) -> ClusterHealthState:
        return ClusterHealthState(cluster_id="a", status=status, evidence=evidence, offline_since=0.0)

    assert grace_s(health(ClusterStatus.OFFLINE, "dead"), settings) == 2.0
    assert grace_s(health(ClusterStatus.OFFLINE, "silent"), settings) == 10.0
    assert grace_s(health(ClusterStatus.OFFLINE, ""), settings) == 10.0  # a row from before the detector
    assert grace_s(health(ClusterStatus.OFFLINE, "alive"), settings) is None  # answering again
    assert grace_s(health(ClusterStatus.OFFLINE, "slow"), settings) is None
    assert grace_s(health(ClusterStatus.DEGRADED, "slow"), settings) is None
    assert grace_s(health(ClusterStatus.MAINTENANCE, "dead"), settings) is None
    assert grace_s(None, settings) is None
    assert grace_s(health(ClusterStatus.OFFLINE, "dead"), HealthSettings(grace_period_s=1.0)) == 1.0  # capped

    agents = [_agent("x")]
    for state in (health(ClusterStatus.DEGRADED, "slow"), health(ClusterStatus.OFFLINE, "alive")):
        grace = grace_s(state, settings)
        graces = {} if grace is None else {"a": grace}
        assert failover_plan(agents, {"a": offline_for(state, 1e6)}, graces, frozenset({"x"})) == []
    dead = health(ClusterStatus.OFFLINE, "dead")
    assert failover_plan(agents, {"a": offline_for(dead, 1.9)}, {"a": 2.0}, frozenset({"x"})) == []
    assert len(failover_plan(agents, {"a": offline_for(dead, 2.0)}, {"a": 2.0}, frozenset({"x"}))) == 1


def test_core_detector_imports_neither_ray_nor_grpc() -> None:
    code = ("import sys, godel_ray.core.detector, godel_ray.core.health; "
            "print(sorted(m for m in ('ray', 'grpc') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_reconfigure_keeps_what_was_observed() -> None:
    tracker = HealthTracker("c", DEFAULTS)
    tracker.on_failure("timeout", 1.0)
    tracker.reconfigure(HealthSettings(heartbeat_interval_s=4.0, heartbeat_timeout_s=2.0, degraded_after=3))
    assert tracker.next_probe_in_s() == 4.0
    assert tracker.on_failure("timeout", 2.0) is None  # 2 bad beats: not yet, now that 3 are needed
    assert tracker.on_failure("timeout", 3.0) is ClusterStatus.DEGRADED
    assert tracker.detector.phi(3.5) < tracker.detector.phi(30.0)
