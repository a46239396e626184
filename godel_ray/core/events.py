"""The event log: a bounded, in-memory, sequence-numbered list of ``FederationEvent``s.

Pure (asyncio only). One writer (the runtime or the balancer, on one event loop) appends; any
number of readers ask for what is newer than the last ``seq`` they saw, or wait for it. Sequence
numbers start at 1 and only rise, so a subscriber that reconnects resumes with ``since(last_seq)``;
a reader that fell further behind than ``capacity`` sees a gap (the first seq it gets is larger
than ``last + 1``) and may resync.
"""

from __future__ import annotations

import asyncio
from collections import deque

from godel_ray.models import FederationEvent

DEFAULT_CAPACITY = 10_000


class EventLog:
    """Invariants: ``seq`` values are 1, 2, 3, ... in append order; at most ``capacity`` are kept.

    Not thread-safe: append and wait from the same event loop.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._events: deque[FederationEvent] = deque(maxlen=capacity)
        self._last_seq = 0
        self._waiters: set[asyncio.Future[None]] = set()

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def append(self, event: FederationEvent) -> FederationEvent:
        """Store a copy of ``event`` with the next ``seq``; wake every waiter. Returns the stored event."""
        self._last_seq += 1
        stored = event.model_copy(update={"seq": self._last_seq})
        self._events.append(stored)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()
        return stored

    def since(self, seq: int) -> list[FederationEvent]:
        """Every kept event with ``seq`` greater than ``seq``, oldest first."""
        if seq >= self._last_seq:
            return []
        if not self._events or seq < self._events[0].seq:
            return list(self._events)
        start = seq - self._events[0].seq + 1  # seqs in the deque are contiguous
        return [self._events[i] for i in range(start, len(self._events))]

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
        return len(self._events)


__all__ = ["DEFAULT_CAPACITY", "EventLog"]
