"""HealthTracker with a fake clock: degraded, offline, hysteresis, maintenance, slow RTT, one event each."""

from __future__ import annotations

import pytest

from godel_ray.core.health import RTT_EWMA_ALPHA, HealthTracker
from godel_ray.models import ClusterStatus, HealthSettings, SiteCapacity

SETTINGS = HealthSettings(degraded_after=2, offline_after=5, recover_after=2, slow_rtt_ms=500.0)
FAST_MS = 10.0
SLOW_MS = 900.0
CAPACITY = SiteCapacity(max_agents=4, available_agents=3)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def tick(self, seconds: float = 5.0) -> float:
        self.now += seconds
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def fail(tracker: HealthTracker, clock: FakeClock, times: int) -> list[ClusterStatus | None]:
    return [tracker.on_failure("deadline exceeded", clock.tick()) for _ in range(times)]


def succeed(tracker: HealthTracker, clock: FakeClock, times: int, rtt_ms: float = FAST_MS
            ) -> list[ClusterStatus | None]:
    return [tracker.on_success(rtt_ms, CAPACITY, clock.tick()) for _ in range(times)]


def test_degraded_then_offline_each_reported_once(clock: FakeClock) -> None:
    tracker = HealthTracker("gpu-east", SETTINGS)
    events = fail(tracker, clock, 7)
    assert events == [None, ClusterStatus.DEGRADED, None, None, ClusterStatus.OFFLINE, None, None]
    state = tracker.state
    assert state.status is ClusterStatus.OFFLINE
    assert state.consecutive_failures == 7
    assert state.last_error == "deadline exceeded"
    assert state.offline_since == 1000.0 + 5 * 5.0


def test_offline_for_counts_from_entering_offline(clock: FakeClock) -> None:
    tracker = HealthTracker("c", SETTINGS)
    assert tracker.offline_for(clock.now) == 0.0
    fail(tracker, clock, 5)
    entered = clock.now
    assert tracker.offline_for(entered + 42.0) == 42.0
    fail(tracker, clock, 3)  # more failures do not move the start
    assert tracker.offline_for(entered + 42.0) == 42.0


def test_one_success_is_not_enough_to_recover(clock: FakeClock) -> None:
    tracker = HealthTracker("c", SETTINGS)
    fail(tracker, clock, 5)
    assert succeed(tracker, clock, 1) == [None]
    assert tracker.status is ClusterStatus.OFFLINE
    assert tracker.on_failure("again", clock.tick()) is None  # the streak is broken
    assert succeed(tracker, clock, 3) == [None, ClusterStatus.ACTIVE, None]
    assert tracker.state.offline_since is None
    assert tracker.offline_for(clock.now) == 0.0


def test_degraded_recovers_after_two_successes(clock: FakeClock) -> None:
    tracker = HealthTracker("c", SETTINGS)
    fail(tracker, clock, 2)
    assert succeed(tracker, clock, 2) == [None, ClusterStatus.ACTIVE]
    assert tracker.state.consecutive_failures == 0


def test_slow_rtt_degrades_after_n_and_does_not_count_towards_recovery(clock: FakeClock) -> None:
    tracker = HealthTracker("c", SETTINGS)
    # degraded after ``degraded_after`` (2) consecutive slow answers, not on one
    assert succeed(tracker, clock, 2, rtt_ms=SLOW_MS) == [None, ClusterStatus.DEGRADED]
    assert succeed(tracker, clock, 1, rtt_ms=SLOW_MS) == [None]
    assert succeed(tracker, clock, 1) == [None]
    assert succeed(tracker, clock, 1, rtt_ms=SLOW_MS) == [None]  # resets the streak
    assert succeed(tracker, clock, 1) == [None]
    assert succeed(tracker, clock, 1) == [ClusterStatus.ACTIVE]


def test_slow_success_takes_offline_to_degraded(clock: FakeClock) -> None:
    tracker = HealthTracker("c", SETTINGS)
    fail(tracker, clock, 5)
    assert succeed(tracker, clock, 1, rtt_ms=SLOW_MS) == [ClusterStatus.DEGRADED]
    assert tracker.state.offline_since is None


def test_one_slow_answer_is_not_degraded(clock: FakeClock) -> None:
    tracker = HealthTracker("c", SETTINGS)
    assert succeed(tracker, clock, 1, rtt_ms=SLOW_MS) == [None]
    assert succeed(tracker, clock, 1) == [None]  # a fast answer ends the streak
    assert succeed(tracker, clock, 1, rtt_ms=SLOW_MS) == [None]
    assert tracker.status is ClusterStatus.ACTIVE


def test_a_slow_answer_then_a_failure_is_two_bad_beats(clock: FakeClock) -> None:
    tracker = HealthTracker("c", SETTINGS)
    succeed(tracker, clock, 1, rtt_ms=SLOW_MS)
    assert fail(tracker, clock, 1) == [ClusterStatus.DEGRADED]


def test_failures_while_degraded_by_slowness_go_offline(clock: FakeClock) -> None:
    tracker = HealthTracker("c", SETTINGS)
    succeed(tracker, clock, 2, rtt_ms=SLOW_MS)
    assert tracker.status is ClusterStatus.DEGRADED
    assert fail(tracker, clock, 5) == [None, None, None, None, ClusterStatus.OFFLINE]


def test_maintenance_is_sticky(clock: FakeClock) -> None:
    tracker = HealthTracker("c", SETTINGS)
    assert tracker.set_maintenance(True, clock.now) is ClusterStatus.MAINTENANCE
    assert tracker.set_maintenance(True, clock.now) is None
    assert succeed(tracker, clock, 5) == [None] * 5
    assert fail(tracker, clock, 6) == [None] * 6
    assert tracker.status is ClusterStatus.MAINTENANCE
    assert tracker.offline_for(clock.now + 100) == 0.0  # no failover for a cluster in maintenance
    events = succeed(tracker, clock, 1, rtt_ms=40.0)
    assert events == [None]
    assert tracker.state.rtt_ms is not None and tracker.state.capacity == CAPACITY  # still updated


def test_leaving_maintenance_lands_on_heartbeat_status(clock: FakeClock) -> None:
    tracker = HealthTracker("c", SETTINGS, maintenance=True)
    assert tracker.status is ClusterStatus.MAINTENANCE
    fail(tracker, clock, 5)
    off_at = clock.tick()
    assert tracker.set_maintenance(False, off_at) is ClusterStatus.OFFLINE
    assert tracker.offline_for(off_at + 3.0) == 3.0  # grace counts from the hand-back
    healthy = HealthTracker("d", SETTINGS, initial=ClusterStatus.MAINTENANCE)
    assert healthy.maintenance
    assert healthy.set_maintenance(False, clock.now) is ClusterStatus.ACTIVE


def test_rtt_is_an_ewma_of_successes_only(clock: FakeClock) -> None:
    tracker = HealthTracker("c", SETTINGS)
    tracker.on_success(100.0, CAPACITY, clock.tick())
    assert tracker.state.rtt_ms == 100.0
    tracker.on_failure("boom", clock.tick())
    assert tracker.state.rtt_ms == 100.0
    tracker.on_success(200.0, CAPACITY, clock.tick())
    assert tracker.state.rtt_ms == pytest.approx(RTT_EWMA_ALPHA * 200.0 + (1 - RTT_EWMA_ALPHA) * 100.0)
    assert tracker.state.last_success_at == clock.now


def test_state_is_a_copy(clock: FakeClock) -> None:
    tracker = HealthTracker("c", SETTINGS)
    snapshot = tracker.state
    snapshot.status = ClusterStatus.OFFLINE
    snapshot.capacity.max_agents = 99
    assert tracker.status is ClusterStatus.ACTIVE
    assert tracker.state.capacity.max_agents == 0


def test_restored_offline_without_start_counts_from_next_failure(clock: FakeClock) -> None:
    tracker = HealthTracker("c", SETTINGS, initial=ClusterStatus.OFFLINE)
    assert tracker.offline_for(clock.now) == 0.0
    assert tracker.on_failure("still down", clock.tick()) is None
    assert tracker.offline_for(clock.now + 7.0) == 7.0
    restored = HealthTracker("d", SETTINGS, initial=ClusterStatus.OFFLINE, offline_since=900.0)
    assert restored.offline_for(1000.0) == 100.0
