"""What the proxy does after each outcome: the one policy its sync and asyncio shells share. Pure.

The shells (``client.proxy`` and ``client.aio``) only carry out the steps decided here:

    balancer call failed    -> ``after_balancer_error``: Retry (a read-only call while the balancer
                               restarts) | Raise
    call to an agent        -> ``AgentRoute``: Send (at an epoch: straight to the agent's actor for a
                               ``local`` agent, else to its cluster) | Reroute (ask the balancer
                               where the agent is now) | Raise
    events page received    -> ``EventCursor.advance``: NEXT (fetch again now) | POLL (wait,
                               then fetch) | DONE

Nothing here imports Ray or does I/O; every rule is unit-tested without either.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from godel_ray.errors import (
    AgentMoved,
    AgentNotFound,
    ClusterUnavailable,
    ControlPlaneNotRunning,
    GodelError,
    StaleEpoch,
)
from godel_ray.models import LOCAL_CLUSTER_ID, FederationEvent

REROUTE_ATTEMPTS = 3  # re-resolutions of an agent's location before giving up
BALANCER_RETRY_ATTEMPTS = 5  # tries of a read-only balancer call while the balancer restarts
BALANCER_RETRY_DELAY_S = 0.5
EVENTS_PAGE = 1000  # events fetched per call
EVENTS_POLL_S = 0.5  # wait between polls when following the event log

# The cluster answered but the agent is not (or no longer) there at this epoch: the command did
# not start, and the balancer knows where the agent is now.
MOVED_ERRORS: tuple[type[GodelError], ...] = (AgentMoved, StaleEpoch, AgentNotFound)


class Location(NamedTuple):
    """Where an agent lives, as the balancer last said: its cluster and its epoch there."""

    cluster_id: str
    epoch: int


@dataclass(frozen=True)
class Send:
    """Send the call to ``location``: with ``direct``, straight to the agent's actor (it checks the
    epoch itself: one hop); else through the cluster's ClusterActor (which checks it)."""

    location: Location
    direct: bool = False


@dataclass(frozen=True)
class Reroute:
    """Forget the cached location and ask the balancer where the agent is now.

    ``drop_cluster``: the cluster itself failed, so its cached handle is dropped too.
    """

    drop_cluster: str | None = None


@dataclass(frozen=True)
class Retry:
    """Call the balancer again after ``delay_s``."""

    delay_s: float


@dataclass(frozen=True)
class Raise:
    """Give up: raise ``error`` to the caller."""

    error: GodelError


def after_balancer_error(error: GodelError, attempt: int, *, read_only: bool) -> Retry | Raise:
    """After balancer call number ``attempt`` (0-based) failed with ``error``.

    Only read-only calls are retried, and only while the balancer is not answering (Ray restarts
    it): a spawn or a migration must never run twice behind the caller's back.
    """
    if read_only and isinstance(error, ControlPlaneNotRunning) and attempt + 1 < BALANCER_RETRY_ATTEMPTS:
        return Retry(BALANCER_RETRY_DELAY_S)
    return Raise(error)


class AgentRoute:
    """Routes one call to an agent (exec or a streamed exec) to wherever the agent lives.

    Drive it: ``start()``, then ``located(loc)`` after each Reroute and ``failed(err, started=...)``
    after each failed Send, until the shell has a result or a Raise.

    Invariants:
    - A call is sent only to a location the balancer gave (perhaps cached from an earlier answer).
    - Once a call has produced output (``started``) it is never sent again: a command runs at most
      once per call.
    - At most ``max_reroutes`` re-resolutions; after that the last error is raised.
    - ``AgentMoved``/``StaleEpoch``/``AgentNotFound`` (the command did not start): reroute.
    - A ``local`` agent is sent to directly (its actor, one hop) until a direct send of this call
      fails; a failed direct send (moved, stale, or the actor unreachable or dead: it refused, so the
      command did not start) reroutes and sends again through the cluster, which answers for the
      agent exactly (it runs the command on the current copy, or says why not).
    - ``ClusterUnavailable``: drop the cluster's handle and reroute, but send again only if the
      balancer now places the agent elsewhere (it moved, or failover restored it). Still placed on
      the failed cluster: the cluster is down, not the agent moved, so that error is raised.
    - Any other error is raised at once.
    """

    def __init__(self, cached: Location | None, *, max_reroutes: int = REROUTE_ATTEMPTS,
                 local_id: str = LOCAL_CLUSTER_ID) -> None:
        self._location = cached
        self._max_reroutes = max_reroutes
        self._local_id = local_id
        self._direct = True  # until a direct send of this call failed
        self.reroutes = 0
        self._unless_same: GodelError | None = None  # raised if the next location equals the last

    def _send(self, location: Location) -> Send:
        return Send(location, direct=self._direct and location.cluster_id == self._local_id)

    def start(self) -> Send | Reroute:
        return Reroute() if self._location is None else self._send(self._location)

    def located(self, location: Location) -> Send | Raise:
        """The balancer placed the agent at ``location``."""
        pending, self._unless_same = self._unless_same, None
        if pending is not None and location == self._location:
            return Raise(pending)
        self._location = location
        return self._send(location)

    def failed(self, error: GodelError, *, started: bool, direct: bool = False) -> Reroute | Raise:
        """The last Send failed with ``error`` (``started``: after some of its output arrived;
        ``direct``: it went straight to the agent's actor)."""
        reroutable = isinstance(error, (*MOVED_ERRORS, ClusterUnavailable))
        if started or not reroutable or self.reroutes >= self._max_reroutes:
            return Raise(error)
        self.reroutes += 1
        if direct:
            self._direct = False
            return Reroute()
        if isinstance(error, ClusterUnavailable):
            self._unless_same = error
            return Reroute(drop_cluster=self._location.cluster_id if self._location else None)
        return Reroute()


class Page(enum.Enum):
    NEXT = "next"  # a full page came back: fetch the next one at once
    POLL = "poll"  # caught up and following: wait, then fetch
    DONE = "done"  # caught up and not following: stop


class EventCursor:
    """Reads the event log page by page: fetch after ``seq``, then ``advance(batch)`` says what next.

    Invariant: ``seq`` is the sequence number of the last event handed out (events are oldest first),
    so no event is handed out twice and none is skipped.
    """

    def __init__(self, since_seq: int = 0, *, follow: bool = False, page_size: int = EVENTS_PAGE) -> None:
        self.seq = since_seq
        self.follow = follow
        self.page_size = page_size

    def advance(self, batch: Sequence[FederationEvent]) -> Page:
        if batch:
            self.seq = batch[-1].seq
        if len(batch) >= self.page_size:
            return Page.NEXT
        return Page.POLL if self.follow else Page.DONE


__all__ = ["BALANCER_RETRY_ATTEMPTS", "BALANCER_RETRY_DELAY_S", "EVENTS_PAGE", "EVENTS_POLL_S", "MOVED_ERRORS",
           "REROUTE_ATTEMPTS", "AgentRoute", "EventCursor", "Location", "Page", "Raise", "Reroute", "Retry", "Send",
           "after_balancer_error"]
