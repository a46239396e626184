"""Cluster health: the failure detector's verdicts in, cluster status out, with hysteresis.

Pure: no ray, no grpc, no clock (``now`` is passed in). A ``ClusterActor`` owns one
``HealthTracker``, feeds it every heartbeat outcome, every change of its gRPC channel's state and
every event its stream delivers, and emits a ``cluster.status`` event whenever a method returns a
status (which happens only on a transition). What each signal proves, and how they combine into a
verdict, is ``godel_ray.core.detector``'s business; this module decides what the user sees.
"""

from __future__ import annotations

from godel_ray.core.detector import ChannelState, FailureDetector, ProbeFailure, Verdict
from godel_ray.models import ClusterHealthState, ClusterStatus, HealthSettings, SiteCapacity

RTT_EWMA_ALPHA = 0.3  # weight of the newest RTT sample
SUSPICION_DECIMALS = 1  # the state carries phi rounded: it changes (and is stored) only when it moves


class HealthTracker:
    """Signals -> cluster status, with hysteresis.

    Invariants:

    * ACTIVE -> DEGRADED after ``degraded_after`` consecutive failed or slow heartbeats (one slow
      answer is not enough: a GC pause or a burst of spawns is not a sick site).
    * -> OFFLINE (from ACTIVE or DEGRADED) only when the detector says DEAD (connections refused,
      ``offline_after`` times running) or SILENT (``offline_after`` failed heartbeats and a
      suspicion level over the threshold, with no channel vouching for the process). A site that
      answers, however slowly, or whose channel stays READY, is never OFFLINE.
      ``offline_since`` is set on entering OFFLINE and cleared on leaving it.
    * Back to ACTIVE only after ``recover_after`` consecutive *fast* answers, from DEGRADED or
      OFFLINE. A slow answer resets that count (and takes OFFLINE to DEGRADED: reachable, slowly).
    * ``state.evidence`` is always the detector's current verdict: failover acts on an OFFLINE
      cluster only while it says ``silent`` or ``dead`` (``core.failover.grace_s``).
    * MAINTENANCE is the operator's: heartbeats never set or clear it. While it is on, heartbeats
      still update RTT, capacity and counters, and the reachability status underneath is tracked,
      so turning maintenance off lands on the status the heartbeats say.
    * The RTT is an EWMA (``RTT_EWMA_ALPHA``) of answered heartbeats only.
    * Every method returns the new status when, and only when, the visible status changed, so the
      caller emits exactly one event per transition.
    """

    def __init__(self, cluster_id: str, settings: HealthSettings, *, maintenance: bool = False,
                 initial: ClusterStatus = ClusterStatus.ACTIVE, offline_since: float | None = None) -> None:
        """``initial`` and ``offline_since`` restore a tracker from the state store."""
        if initial is ClusterStatus.MAINTENANCE:
            maintenance, initial = True, ClusterStatus.ACTIVE
        self._settings = settings
        self.detector = FailureDetector(settings)
        self._maintenance = maintenance
        self._reachability = initial  # ACTIVE, DEGRADED or OFFLINE: what the signals say
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

    # --- signals ------------------------------------------------------------------------------

    def on_success(self, rtt_ms: float, capacity: SiteCapacity, now: float) -> ClusterStatus | None:
        state = self._state
        self.detector.answered(rtt_ms, now)
        state.rtt_ms = rtt_ms if state.rtt_ms is None else (
            RTT_EWMA_ALPHA * rtt_ms + (1.0 - RTT_EWMA_ALPHA) * state.rtt_ms)
        state.capacity = capacity
        state.last_heartbeat_at = now
        state.last_success_at = now
        state.consecutive_failures = 0
        state.last_error = ""
        if self.detector.is_slow(rtt_ms):
            state.consecutive_successes = 0  # a slow answer does not count towards recovery
            if self._reachability is ClusterStatus.OFFLINE:
                self._set_reachability(ClusterStatus.DEGRADED, now)  # reachable, slowly
        else:
            state.consecutive_successes += 1
            if (self._reachability is not ClusterStatus.ACTIVE
                    and state.consecutive_successes >= self._settings.recover_after):
                self._set_reachability(ClusterStatus.ACTIVE, now)
        return self._evaluate(now)

    def on_failure(self, error: str, now: float, kind: ProbeFailure = ProbeFailure.TIMEOUT
                   ) -> ClusterStatus | None:
        """A failed heartbeat; ``kind`` says what the failure proves (``core.detector.probe_failure``)."""
        state = self._state
        self.detector.failed(kind, now)
        state.last_heartbeat_at = now
        state.last_error = error
        state.consecutive_successes = 0
        state.consecutive_failures += 1
        if self._reachability is ClusterStatus.OFFLINE and state.offline_since is None:
            state.offline_since = now  # restored as OFFLINE without a start time: count from here
        return self._evaluate(now)

    def on_channel(self, channel: ChannelState, now: float) -> ClusterStatus | None:
        """The gRPC channel to the site changed state."""
        self.detector.channel_changed(channel, now)
        self._state.channel = channel.value
        return self._evaluate(now)

    def on_stream_event(self, now: float) -> ClusterStatus | None:
        """The site's event stream delivered an event: a sign of life."""
        self.detector.stream_event(now)
        return self._evaluate(now)

    def tick(self, now: float) -> ClusterStatus | None:
        """Re-judge with time passing (suspicion grows while nothing arrives)."""
        return self._evaluate(now)

    def next_probe_in_s(self) -> float:
        return self.detector.next_probe_in_s()

    def reconfigure(self, settings: HealthSettings) -> None:
        """New settings (the registry entry changed); what was observed so far is kept."""
        self._settings = settings
        self.detector.reconfigure(settings)

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

    # --- judgement ----------------------------------------------------------------------------

    def _evaluate(self, now: float) -> ClusterStatus | None:
        detector = self.detector
        verdict = detector.verdict(now)
        self._state.evidence = verdict.value
        self._state.suspicion = round(detector.phi(now), SUSPICION_DECIMALS)
        if verdict.is_down:
            if self._reachability is not ClusterStatus.OFFLINE:
                self._set_reachability(ClusterStatus.OFFLINE, now)
        elif (self._reachability is ClusterStatus.ACTIVE and verdict is not Verdict.ALIVE
              and detector.bad_streak >= self._settings.degraded_after):
            self._set_reachability(ClusterStatus.DEGRADED, now)
        return self._publish()

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
