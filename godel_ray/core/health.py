"""Cluster health: heartbeat outcomes in, cluster status out, with hysteresis.

Pure: no ray, no grpc, no clock (``now`` is passed in). A ``ClusterActor`` owns one
``HealthTracker``, feeds it every heartbeat, and emits a ``cluster.status`` event whenever a method
returns a status (which happens only on a transition).
"""

from __future__ import annotations

from godel_ray.models import ClusterHealthState, ClusterStatus, HealthSettings, SiteCapacity

RTT_EWMA_ALPHA = 0.3  # weight of the newest RTT sample


class HealthTracker:
    """Heartbeat outcomes -> cluster status, with hysteresis.

    Invariants:

    * ACTIVE -> DEGRADED after ``degraded_after`` consecutive failures, or on one success slower
      than ``slow_rtt_ms``; -> OFFLINE after ``offline_after`` consecutive failures (from ACTIVE or
      DEGRADED). ``offline_since`` is set on entering OFFLINE and cleared on leaving it.
    * Back to ACTIVE only after ``recover_after`` consecutive *fast* successes, from DEGRADED or
      OFFLINE. A slow success resets that count (and takes OFFLINE to DEGRADED: reachable, slowly).
    * MAINTENANCE is the operator's: heartbeats never set or clear it. While it is on, heartbeats
      still update RTT, capacity and counters, and the reachability status underneath is tracked,
      so turning maintenance off lands on the status the heartbeats say.
    * The RTT is an EWMA (``RTT_EWMA_ALPHA``) of successful heartbeats only.
    * Every method returns the new status when, and only when, the visible status changed, so the
      caller emits exactly one event per transition.
    """

    def __init__(self, cluster_id: str, settings: HealthSettings, *, maintenance: bool = False,
                 initial: ClusterStatus = ClusterStatus.ACTIVE, offline_since: float | None = None) -> None:
        """``initial`` and ``offline_since`` restore a tracker from the state store."""
        if initial is ClusterStatus.MAINTENANCE:
            maintenance, initial = True, ClusterStatus.ACTIVE
        self._settings = settings
        self._maintenance = maintenance
        self._reachability = initial  # ACTIVE, DEGRADED or OFFLINE: what heartbeats say
        self._state = ClusterHealthState(
            cluster_id=cluster_id, status=self._visible(),
            offline_since=offline_since if initial is ClusterStatus.OFFLINE else None)

    @property
    def state(self) -> ClusterHealthState:
        """A copy of the current state: callers may keep or send it."""
        return self._state.model_copy(deep=True)

    @property
    def status(self) -> ClusterStatus:
        return self._state.status

    @property
    def maintenance(self) -> bool:
        return self._maintenance

    def on_success(self, rtt_ms: float, capacity: SiteCapacity, now: float) -> ClusterStatus | None:
        state = self._state
        state.rtt_ms = rtt_ms if state.rtt_ms is None else (
            RTT_EWMA_ALPHA * rtt_ms + (1.0 - RTT_EWMA_ALPHA) * state.rtt_ms)
        state.capacity = capacity
        state.last_heartbeat_at = now
        state.last_success_at = now
        state.consecutive_failures = 0
        state.last_error = ""
        if rtt_ms > self._settings.slow_rtt_ms:
            state.consecutive_successes = 0  # a slow answer does not count towards recovery
            if self._reachability is not ClusterStatus.DEGRADED:
                self._set_reachability(ClusterStatus.DEGRADED, now)
        else:
            state.consecutive_successes += 1
            if (self._reachability is not ClusterStatus.ACTIVE
                    and state.consecutive_successes >= self._settings.recover_after):
                self._set_reachability(ClusterStatus.ACTIVE, now)
        return self._publish()

    def on_failure(self, error: str, now: float) -> ClusterStatus | None:
        state = self._state
        state.last_heartbeat_at = now
        state.last_error = error
        state.consecutive_successes = 0
        state.consecutive_failures += 1
        failures = state.consecutive_failures
        if failures >= self._settings.offline_after and self._reachability is not ClusterStatus.OFFLINE:
            self._set_reachability(ClusterStatus.OFFLINE, now)
        elif self._reachability is ClusterStatus.OFFLINE and state.offline_since is None:
            state.offline_since = now  # restored as OFFLINE without a start time: count from here
        elif failures >= self._settings.degraded_after and self._reachability is ClusterStatus.ACTIVE:
            self._set_reachability(ClusterStatus.DEGRADED, now)
        return self._publish()

    def set_maintenance(self, on: bool, now: float) -> ClusterStatus | None:
        """The operator's switch. Handing back a cluster that is still offline restarts its
        failover grace period now: the time it spent offline in maintenance was the operator's."""
        if self._maintenance and not on and self._reachability is ClusterStatus.OFFLINE:
            self._state.offline_since = now
        self._maintenance = on
        return self._publish()

    def offline_for(self, now: float) -> float:
        """Seconds the cluster has been offline; 0 when it is not (maintenance included: the
        operator took it down on purpose, so failover does not start)."""
        since = self._state.offline_since
        if self._state.status is not ClusterStatus.OFFLINE or since is None:
            return 0.0
        return max(0.0, now - since)

    def _set_reachability(self, status: ClusterStatus, now: float) -> None:
        if status is ClusterStatus.OFFLINE:
            self._state.offline_since = now
        elif self._reachability is ClusterStatus.OFFLINE:
            self._state.offline_since = None
        self._reachability = status

    def _visible(self) -> ClusterStatus:
        return ClusterStatus.MAINTENANCE if self._maintenance else self._reachability

    def _publish(self) -> ClusterStatus | None:
        visible = self._visible()
        if visible is self._state.status:
            return None
        self._state.status = visible
        return visible


__all__ = ["RTT_EWMA_ALPHA", "HealthTracker"]
