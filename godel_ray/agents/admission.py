"""``StartGate``: admission control for agent starts on one cluster.

Starting an agent actor starts a Ray worker process, which costs about a second of one core; a
burst of a hundred starts on a small cluster makes every one of them slow, and the slowest miss
their deadlines. So at most about as many cold starts run at once as the cluster has cores; the
rest wait in arrival order, each up to its own deadline, after which it is refused with an error
that says so (``ResourceExhausted``: retry later). A start served by the warm pool is not gated: it
starts no process. No ray here.

Invariants: starts are admitted in arrival order (a waiter is never overtaken by a later one);
``running`` never exceeds the limit a start was admitted under; a waiter that times out or is
cancelled takes no slot, and one cancelled just after it was admitted gives its slot back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

from godel_ray.errors import ResourceExhausted


class StartGate:
    """At most ``limit`` starts at once (``limit`` given per call: a cluster's cores can change)."""

    def __init__(self, cluster_id: str) -> None:
        self.cluster_id = cluster_id
        self.running = 0
        self._waiters: deque[tuple[asyncio.Future[None], int]] = deque()

    @property
    def waiting(self) -> int:
        return sum(1 for fut, _ in self._waiters if not fut.done())

    @contextlib.asynccontextmanager
    async def admitted(self, limit: int, timeout_s: float) -> AsyncIterator[None]:
        """Hold one of ``limit`` start slots for the body; wait (in order) at most ``timeout_s`` for it."""
        await self._enter(max(1, limit), timeout_s)
        try:
            yield
        finally:
            self._leave()

    async def _enter(self, limit: int, timeout_s: float) -> None:
        if self.running < limit and not self.waiting:
            self.running += 1
            return
        ahead = self.running + self.waiting
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((fut, limit))
        try:
            await asyncio.wait_for(fut, timeout_s)  # on timeout, fut is cancelled: ``_admit`` skips it
        except TimeoutError:
            raise ResourceExhausted(
                f"cluster {self.cluster_id} is starting {self.running} agent(s) at once, its limit ({limit}, "
                f"about its cores), with {ahead} ahead of this one: none of their slots came free within "
                f"{timeout_s:g} s; retry once the burst of spawns is over", cluster_id=self.cluster_id) from None
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._leave()  # admitted just before the caller went away
            raise

    def _leave(self) -> None:
        self.running -= 1
        self._admit()

    def _admit(self) -> None:
        while self._waiters:
            fut, limit = self._waiters[0]
            if fut.done():  # timed out or cancelled
                self._waiters.popleft()
                continue
            if self.running >= limit:
                return
            self._waiters.popleft()
            self.running += 1
            fut.set_result(None)


__all__ = ["StartGate"]
