"""The event log: a bounded, in-memory, sequence-numbered window of ``FederationEvent``s.

Pure (asyncio only). One writer (the runtime or the balancer, on one event loop) appends; any
number of readers ask for what is newer than the last ``seq`` they saw, or wait for it. Sequence
numbers start at 1 and only rise, so a subscriber that reconnects resumes with ``since(last_seq)``.

The window is bounded by count (``Limits.event_log_capacity``) and by size
(``Limits.event_log_max_bytes``, so a few huge events cannot hold much memory either): the oldest
events are dropped first. A reader that fell further behind gets what is left, oldest first; it
sees the gap (the first seq it gets is larger than ``last + 1``, and ``first_seq`` says where the
window starts) and may resync.

A hot path (a command's start and end) ``defer``s its events instead: the event is built and
appended when the loop next turns, together with any other deferred ones, waking readers once.
Deferred events keep their place: every ``append`` and every read takes the deferred ones first.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable

from godel_ray.models import FederationEvent
from godel_ray.settings import LIMITS

DEFAULT_CAPACITY = LIMITS.event_log_capacity
DEFAULT_MAX_BYTES = LIMITS.event_log_max_bytes
FOLLOW_WAIT_S = 30.0  # one wait of a follower; then it simply waits again (keeps waits bounded)
EVENT_OVERHEAD_BYTES = 256  # what one stored event costs beyond its strings (model, deque slot)


def event_size(event: FederationEvent) -> int:
    """An estimate of the memory ``event`` holds: its strings plus a fixed overhead."""
    return (EVENT_OVERHEAD_BYTES + len(event.type) + len(event.cluster_id) + len(event.agent_id)
            + sum(len(k) + len(v) for k, v in event.data.items()))


class EventLog:
    """Invariants: stored ``seq`` values are 1, 2, 3, ... in append order and the kept ones are
    contiguous; at most ``capacity`` events and (beyond the newest one) ``max_bytes`` are kept.

    Not thread-safe: append and wait from the same event loop.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        self._capacity = capacity
        self._max_bytes = max_bytes
        self._events: deque[tuple[FederationEvent, int]] = deque()
        self._bytes = 0
        self._last_seq = 0
        self._waiters: set[asyncio.Future[None]] = set()
        self._deferred: list[Callable[[], FederationEvent]] = []

    @property
    def last_seq(self) -> int:
        self.flush()
        return self._last_seq

    @property
    def first_seq(self) -> int:
        """The oldest kept seq (``last_seq + 1`` when nothing is kept): older ones were dropped."""
        self.flush()
        return self._events[0][0].seq if self._events else self._last_seq + 1

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def defer(self, make: Callable[[], FederationEvent]) -> None:
        """Append ``make()`` when the running loop next turns (at once when no loop runs), after
        every event deferred or appended before it. ``make`` should carry its own ``ts``."""
        self._deferred.append(make)
        if len(self._deferred) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop (a generator finalised at exit): no one to defer to
                self.flush()

    def flush(self) -> None:
        """Append the deferred events now, in order; wake readers once."""
        if not self._deferred:
            return
        deferred, self._deferred = self._deferred, []
        for make in deferred:
            self._store(make())
        self._wake()

    def append(self, event: FederationEvent) -> FederationEvent:
        """Store a copy of ``event`` with the next ``seq`` (after any deferred ones); drop the oldest
        beyond the bounds; wake every waiter. Returns the stored event."""
        self.flush()
        stored = self._store(event)
        self._wake()
        return stored

    def _store(self, event: FederationEvent) -> FederationEvent:
        self._last_seq += 1
        stored = event.model_copy(update={"seq": self._last_seq})
        size = event_size(stored)
        self._events.append((stored, size))
        self._bytes += size
        while len(self._events) > self._capacity or (self._bytes > self._max_bytes and len(self._events) > 1):
            _, dropped = self._events.popleft()
            self._bytes -= dropped
        return stored

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    def since(self, seq: int) -> list[FederationEvent]:
        """Every kept event with ``seq`` greater than ``seq``, oldest first."""
        self.flush()
        if seq >= self._last_seq or not self._events:
            return []
        first = self._events[0][0].seq
        start = max(0, seq - first + 1)  # kept seqs are contiguous
        return [self._events[i][0] for i in range(start, len(self._events))]

    async def follow(self, since_seq: int = 0) -> AsyncIterator[FederationEvent]:
        """Every event after ``since_seq``, then each new one as it comes, forever.

        A cursor past the last event comes from an earlier life of the log's owner (a site's log
        restarts at 1 with its process): replay everything rather than skip events until the
        numbers catch up."""
        seq = since_seq if since_seq <= self.last_seq else 0
        while True:
            for event in await self.wait_since(seq, FOLLOW_WAIT_S):
                seq = event.seq
                yield event

    async def wait_since(self, seq: int, timeout_s: float | None = None) -> list[FederationEvent]:
        """Events newer than ``seq``; waits up to ``timeout_s`` for one (``[]`` when none came)."""
        events = self.since(seq)
        if events:
            return events
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout_s)
        except TimeoutError:
            return []
        finally:
            self._waiters.discard(waiter)
        return self.since(seq)

    def __len__(self) -> int:
        self.flush()
        return len(self._events)


__all__ = ["DEFAULT_CAPACITY", "DEFAULT_MAX_BYTES", "EventLog", "event_size"]
