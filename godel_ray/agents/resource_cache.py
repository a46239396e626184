"""``ResourceCache``: the Ray cluster's resources as last read, so a heartbeat never waits on Ray.

A heartbeat must be answered promptly, whatever the site is doing: a slow answer reads as a sick
site to the control plane's failure detector. Reading Ray's resources means GCS round trips that
take long exactly when the site is busy (a burst of spawns), so heartbeats answer from this cache,
which refreshes in the background: a read of a value older than ``MAX_AGE_S`` (or announced stale
by ``invalidate``) starts a refresh and waits for it ``FRESH_WAIT_S`` at most, then answers with
what it has. An idle site answers with fresh figures; a busy one answers in time, with the last
ones. Nothing reads Ray while nobody asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_AGE_S = 0.5  # older than this, a read starts a background refresh
FRESH_WAIT_S = 0.25  # ... and waits this long at most for it (Ray's own reads take ms when it is idle)


class ResourceCache(Generic[T]):
    """The latest value of ``read()``, refreshed in the background.

    Invariants: ``get()`` awaits ``read()`` itself only for the very first value; afterwards it
    answers from the cache, waiting at most ``fresh_wait_s`` (never on Ray directly) for the refresh
    it starts when the value is older than ``max_age_s`` or a change was announced with
    ``invalidate()``. At most one refresh runs at a time; a failed refresh keeps the last value
    (logged) and the next ``get()`` tries again.
    """

    def __init__(self, read: Callable[[], Awaitable[T]], *, max_age_s: float = MAX_AGE_S,
                 fresh_wait_s: float = FRESH_WAIT_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self._max_age_s = max_age_s
        self._fresh_wait_s = fresh_wait_s
        self._clock = clock
        self._value: T | None = None
        self._read_at = 0.0
        self._changes = 0  # invalidations announced
        self._covered = 0  # invalidations the current value was read after
        self._task: asyncio.Task[None] | None = None
        self._refreshed: asyncio.Event | None = None

    async def get(self) -> T:
        if self._value is None:
            covers = self._changes
            value = await self._read()
            self._store(value, covers)
            return value
        if self._clock() - self._read_at > self._max_age_s or self._covered < self._changes:
            self._refresh_in_background()
            if self._refreshed is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._refreshed.wait()), self._fresh_wait_s)
        value = self._value
        assert value is not None  # set by the first read and never cleared
        return value

    def invalidate(self) -> None:
        """Resources changed (an agent started or ended): the next read should see it."""
        self._changes += 1
        if self._value is not None:
            self._refresh_in_background()

    def _store(self, value: T, covers: int) -> None:
        self._value = value
        self._read_at = self._clock()
        self._covered = max(self._covered, covers)

    def _refresh_in_background(self) -> None:
        if self._task is not None and not self._task.done():
            return
        self._refreshed = asyncio.Event()
        self._task = asyncio.create_task(self._refresh(self._refreshed), name="resource-cache-refresh")

    async def _refresh(self, done: asyncio.Event) -> None:
        try:
            while True:
                covers = self._changes
                try:
                    self._store(await self._read(), covers)
                except Exception as exc:  # noqa: BLE001 - keep the last value; the next get() retries
                    log.warning("resource refresh failed (keeping the last value): %s", exc)
                    return
                if self._covered >= self._changes:
                    return
        finally:
            done.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None


__all__ = ["FRESH_WAIT_S", "MAX_AGE_S", "ResourceCache"]
