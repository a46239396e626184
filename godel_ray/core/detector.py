"""Failure detection: several signals about one cluster in, a verdict out (alive, slow, silent, dead).

Pure: no ray, no grpc, no clock (``now`` is passed in). ``godel_ray.core.health.HealthTracker``
owns one ``FailureDetector`` and turns its verdicts into cluster statuses with hysteresis.

The signals, and what each proves:

- a heartbeat **answer** (fast or slow, or an error the site itself produced): the site's process
  runs. Answers also feed a phi-accrual estimator over their inter-arrival times (Hayashibara et
  al., as Akka and Cassandra use it), so "silent for longer than usual" is measured against the
  rhythm actually observed, not a fixed count;
- a heartbeat **failure**, by kind (``ProbeFailure``): a refused or reset connection means nothing
  listens at the endpoint (the process is gone: strong evidence); an unreachable network or a
  missed deadline says only that no answer came (frozen, partitioned, or very slow: weak evidence);
- the gRPC **channel's connectivity state** (``ChannelState``). The client pings every second and
  drops the transport after a ping goes unanswered for two; a channel becomes READY only once the
  server's HTTP/2 SETTINGS frame arrived. So a channel that stayed READY since the last answer
  proves the process still answers pings: heartbeats that time out meanwhile are slow, not silent;
- the site's **event stream**: every event it delivers is a sign of life.

Verdicts (``Verdict``), evidence-weighted:

- DEAD: the last ``offline_after`` probes all found the connection refused or reset, and the
  channel is not READY. The shell re-probes quickly after such a failure (``next_probe_in_s``), so
  a dead site is known within about a second.
- SILENT: at least ``offline_after`` consecutive failed probes, the suspicion level (phi) since
  the last sign of life at or above ``phi_threshold``, and no READY channel vouching for the
  process. Requiring failed probes as well as elapsed time means a stalled control plane (no
  probes sent) never blames the site.
- SLOW: probes fail or answer late, but the site shows life (a READY channel, late answers).
  Slow is degraded at worst, never offline.
- ALIVE: the last probe was answered in time.
"""

from __future__ import annotations

import math
from collections import deque
from enum import Enum

from godel_ray.errors import ClusterUnavailable, DeadlineExceeded, GodelError
from godel_ray.models import HealthSettings

PHI_WINDOW = 100  # inter-arrival samples kept
MIN_STD_S = 0.1  # floor on the inter-arrival standard deviation: regular heartbeats are not infinitely precise
PHI_Y_LIMIT = 12.0  # phi's normalised distance is clamped here: phi stays finite (about 61 at the top)
FAST_PROBE_FRACTION = 0.25  # after a failure that proves nothing answers, probe again this much sooner
MIN_PROBE_INTERVAL_S = 0.05


class ChannelState(str, Enum):
    """A gRPC channel's connectivity state, as plain strings (core does not import grpc)."""

    IDLE = "idle"
    CONNECTING = "connecting"
    READY = "ready"
    TRANSIENT_FAILURE = "transient_failure"
    SHUTDOWN = "shutdown"


class ProbeFailure(str, Enum):
    """Why one heartbeat failed, ordered by what it proves about the site's process."""

    REFUSED = "refused"  # connection refused or reset: nothing listens at the endpoint
    UNREACHABLE = "unreachable"  # no route to the site: a partition, or its machine is gone
    TIMEOUT = "timeout"  # no answer in time: frozen, partitioned, or very slow
    ERROR = "error"  # the site answered, with an error: its process runs


class Verdict(str, Enum):
    ALIVE = "alive"
    SLOW = "slow"
    SILENT = "silent"
    DEAD = "dead"

    @property
    def is_down(self) -> bool:
        return self in (Verdict.SILENT, Verdict.DEAD)


def probe_failure(exc: BaseException) -> ProbeFailure:
    """Classify a failed heartbeat. ``ClusterUnavailable.fields["cause"]`` is set by the gRPC client
    (``rpc.errors``) from what the transport said; a TLS refusal is the site's TLS layer answering."""
    if isinstance(exc, ClusterUnavailable):
        if exc.fields.get("tls"):
            return ProbeFailure.ERROR
        cause = exc.fields.get("cause", "")
        if cause == ProbeFailure.REFUSED.value:
            return ProbeFailure.REFUSED
        if cause == ProbeFailure.UNREACHABLE.value:
            return ProbeFailure.UNREACHABLE
        return ProbeFailure.TIMEOUT
    if isinstance(exc, DeadlineExceeded | TimeoutError):
        return ProbeFailure.TIMEOUT
    if isinstance(exc, GodelError):
        return ProbeFailure.ERROR  # a status the site sent: unauthenticated, internal, ...
    return ProbeFailure.TIMEOUT  # nothing came back that proves the site runs


def default_acceptable_pause_s(settings: HealthSettings) -> float:
    """How long a pause between answers is still normal: two missed beats and one deadline."""
    return 2.0 * settings.heartbeat_interval_s + settings.heartbeat_timeout_s


def _pause_s(settings: HealthSettings) -> float:
    pause = settings.acceptable_pause_s
    return default_acceptable_pause_s(settings) if pause is None else pause


class PhiAccrual:
    """Suspicion level over observed inter-arrival times (phi-accrual, Akka's logistic approximation).

    ``phi(elapsed)`` is ``-log10`` of the probability that the next arrival comes later than
    ``elapsed`` after the last one, assuming a normal distribution of the intervals seen (mean plus
    ``acceptable_pause_s``; standard deviation at least ``min_std_s``). phi 1 means a 10 % chance
    that the site is fine and merely late, phi 8 one in a hundred million. Seeded with
    ``first_interval_s`` so that it is meaningful before the first arrival.
    """

    def __init__(self, first_interval_s: float, acceptable_pause_s: float, *, min_std_s: float = MIN_STD_S,
                 window: int = PHI_WINDOW) -> None:
        std = first_interval_s / 4.0
        self._intervals: deque[float] = deque([first_interval_s - std, first_interval_s + std], maxlen=window)
        self.acceptable_pause_s = acceptable_pause_s
        self._min_std_s = min_std_s
        self._last: float | None = None

    @property
    def last_arrival(self) -> float | None:
        return self._last

    def arrival(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self._intervals.append(now - self._last)
        self._last = now

    def mean_s(self) -> float:
        return sum(self._intervals) / len(self._intervals)

    def std_s(self) -> float:
        mean = self.mean_s()
        variance = sum((x - mean) ** 2 for x in self._intervals) / len(self._intervals)
        return max(math.sqrt(variance), self._min_std_s)

    def phi(self, elapsed_s: float) -> float:
        mean = self.mean_s() + self.acceptable_pause_s
        y = max(-PHI_Y_LIMIT, min(PHI_Y_LIMIT, (elapsed_s - mean) / self.std_s()))
        e = math.exp(-y * (1.5976 + 0.070566 * y * y))
        if elapsed_s > mean:
            return -math.log10(e / (1.0 + e))
        return max(0.0, -math.log10(1.0 - 1.0 / (1.0 + e)))


class FailureDetector:
    """Signals about one cluster -> a ``Verdict`` and a suspicion level.

    Invariants:

    * Every answer (fast, slow, or an error the site sent), every event from its stream, and every
      entry of its channel into READY is a sign of life; silence is measured from the latest one
      (from the first failure when there has been none yet).
    * DEAD needs ``offline_after`` consecutive refused/reset probes; SILENT needs ``offline_after``
      consecutive failed probes *and* phi >= ``phi_threshold``; neither while the channel has been
      READY since the last sign of life (the transport answers pings: the site is slow, not gone).
    * A probe answered after ``slow_rtt_ms`` and a probe failing while the site shows life are
      both "bad" beats: ``bad_streak`` counts them with failures, and a fast answer resets it.
    """

    def __init__(self, settings: HealthSettings) -> None:
        self.settings = settings
        self._phi = PhiAccrual(settings.heartbeat_interval_s, _pause_s(settings))
        self.last_life_at: float | None = None
        self._silence_from: float | None = None  # first failure, when no life was ever seen
        self.channel: ChannelState | None = None  # None: no channel (the in-process local cluster)
        self._ready_since: float | None = None
        self.failures = 0  # consecutive failed probes
        self.refused = 0  # consecutive refused/reset probes
        self.bad_streak = 0  # consecutive failed or slow probes
        self.last_failure: ProbeFailure | None = None

    def reconfigure(self, settings: HealthSettings) -> None:
        """New settings; the observed history (inter-arrival times, streaks) is kept."""
        self.settings = settings
        self._phi.acceptable_pause_s = _pause_s(settings)

    # --- signals ------------------------------------------------------------------------------

    def answered(self, rtt_ms: float, now: float) -> None:
        """A heartbeat came back (``rtt_ms`` after it was sent)."""
        self._phi.arrival(now)
        self._life(now)
        self.failures = self.refused = 0
        self.last_failure = None
        self.bad_streak = self.bad_streak + 1 if self.is_slow(rtt_ms) else 0

    def failed(self, kind: ProbeFailure, now: float) -> None:
        """A heartbeat failed (see ``probe_failure`` for the kind)."""
        self.failures += 1
        self.bad_streak += 1
        self.refused = self.refused + 1 if kind is ProbeFailure.REFUSED else 0
        self.last_failure = kind
        if kind is ProbeFailure.ERROR:
            self._life(now)  # it answered, with an error
        elif self.last_life_at is None and self._silence_from is None:
            self._silence_from = now

    def channel_changed(self, state: ChannelState, now: float) -> None:
        if state is ChannelState.READY and self.channel is not ChannelState.READY:
            self._ready_since = now
            self._life(now)  # the server's SETTINGS frame arrived: its process runs
        elif state is not ChannelState.READY:
            self._ready_since = None
        self.channel = state

    def stream_event(self, now: float) -> None:
        """The site's event stream delivered an event."""
        self._life(now)

    def _life(self, now: float) -> None:
        if self.last_life_at is None or now > self.last_life_at:
            self.last_life_at = now

    # --- judgement ----------------------------------------------------------------------------

    def is_slow(self, rtt_ms: float) -> bool:
        return rtt_ms > self.settings.slow_rtt_ms

    def transport_alive(self) -> bool:
        """The channel has been READY without a break since the last sign of life (or longer)."""
        return self._ready_since is not None

    def silence_s(self, now: float) -> float:
        since = self.last_life_at if self.last_life_at is not None else self._silence_from
        return 0.0 if since is None else max(0.0, now - since)

    def phi(self, now: float) -> float:
        """Suspicion level: 0 right after a sign of life, ~1 when overdue, >= 8 when long silent."""
        if self.last_life_at is None and self._silence_from is None:
            return 0.0
        return self._phi.phi(self.silence_s(now))

    def verdict(self, now: float) -> Verdict:
        offline_after = self.settings.offline_after
        if self.failures == 0 and self.bad_streak == 0:
            return Verdict.ALIVE
        if not self.transport_alive() and self.failures >= offline_after:
            if self.refused >= offline_after:
                return Verdict.DEAD
            if self.last_failure is not ProbeFailure.ERROR and self.phi(now) >= self.settings.phi_threshold:
                return Verdict.SILENT
        return Verdict.SLOW

    def next_probe_in_s(self) -> float:
        """When to probe next: the heartbeat interval, or a fraction of it after a failure that says
        nothing answers at all (refused, unreachable, or no channel): such probes cost nothing and
        confirm a death quickly. Never faster for a site that is merely slow (no added load)."""
        interval = self.settings.heartbeat_interval_s
        if self.failures and not self.transport_alive() and self.last_failure in (
                ProbeFailure.REFUSED, ProbeFailure.UNREACHABLE):
            return max(MIN_PROBE_INTERVAL_S, interval * FAST_PROBE_FRACTION)
        return interval


__all__ = ["ChannelState", "FailureDetector", "PhiAccrual", "ProbeFailure", "Verdict",
           "default_acceptable_pause_s", "probe_failure"]
