"""ResourceCache: heartbeats answer from the cache and never wait on a slow read (fake reads, fake clock)."""

from __future__ import annotations

import asyncio

import pytest

from godel_ray.agents.resource_cache import ResourceCache


class SlowReads:
    """A read that returns the next value only when the test releases it."""

    def __init__(self) -> None:
        self.calls = 0
        self.value = 0
        self.gate = asyncio.Event()
        self.fail = False

    async def read(self) -> int:
        self.calls += 1
        await self.gate.wait()
        if self.fail:
            raise RuntimeError("gcs unavailable")
        self.value += 1
        return self.value


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_only_the_first_read_is_awaited_then_stale_values_answer_within_the_bound() -> None:
    async def go() -> None:
        reads, clock = SlowReads(), Clock()
        cache = ResourceCache(reads.read, max_age_s=1.0, fresh_wait_s=0.01, clock=clock)
        reads.gate.set()
        assert await cache.get() == 1
        reads.gate.clear()  # from now on every read hangs until released
        assert await cache.get() == 1 and reads.calls == 1  # fresh: no read at all
        clock.now = 5.0  # stale
        assert await asyncio.wait_for(cache.get(), 5.0) == 1  # the refresh hangs: answered from the cache ...
        assert reads.calls == 2  # ... while one refresh started in the background
        assert await asyncio.wait_for(cache.get(), 5.0) == 1
        assert reads.calls == 2  # never two refreshes at once
        reads.gate.set()
        await asyncio.sleep(0)  # let the refresh task finish (a yield, not a timed wait)
        await asyncio.sleep(0)
        assert await cache.get() == 2
        await cache.close()

    asyncio.run(go())


def test_a_stale_read_gets_the_fresh_value_when_the_refresh_is_quick() -> None:
    async def go() -> None:
        reads, clock = SlowReads(), Clock()
        cache = ResourceCache(reads.read, max_age_s=1.0, fresh_wait_s=30.0, clock=clock)
        reads.gate.set()
        assert await cache.get() == 1
        clock.now = 5.0
        assert await asyncio.wait_for(cache.get(), 5.0) == 2
        await cache.close()

    asyncio.run(go())


def test_after_a_change_a_read_waits_briefly_for_a_fresh_value() -> None:
    async def go() -> None:
        reads = SlowReads()
        cache = ResourceCache(reads.read, fresh_wait_s=30.0)
        reads.gate.set()
        assert await cache.get() == 1
        cache.invalidate()  # an agent started: the refresh is already running
        assert await asyncio.wait_for(cache.get(), 5.0) == 2  # the refreshed value, not the old one
        reads.gate.clear()
        cache.invalidate()
        waiting = asyncio.ensure_future(cache.get())
        await asyncio.sleep(0)
        assert not waiting.done()  # waits for the refresh covering the change ...
        reads.gate.set()
        assert await asyncio.wait_for(waiting, 5.0) == 3
        await cache.close()

    asyncio.run(go())


def test_the_wait_for_a_fresh_value_is_bounded() -> None:
    async def go() -> None:
        reads = SlowReads()
        cache = ResourceCache(reads.read, fresh_wait_s=0.01)
        reads.gate.set()
        assert await cache.get() == 1
        reads.gate.clear()
        cache.invalidate()
        assert await asyncio.wait_for(cache.get(), 5.0) == 1  # the refresh hangs: the last value, at once
        await cache.close()

    asyncio.run(go())


def test_a_failed_refresh_keeps_the_last_value() -> None:
    async def go() -> None:
        reads, clock = SlowReads(), Clock()
        cache = ResourceCache(reads.read, max_age_s=1.0, fresh_wait_s=5.0, clock=clock)
        reads.gate.set()
        assert await cache.get() == 1
        reads.fail = True
        cache.invalidate()
        assert await cache.get() == 1
        reads.fail = False
        clock.now = 10.0
        await cache.get()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert await cache.get() == 2
        await cache.close()

    asyncio.run(go())


def test_the_first_read_raises_its_error() -> None:
    async def go() -> None:
        reads = SlowReads()
        reads.fail = True
        reads.gate.set()
        with pytest.raises(RuntimeError):
            await ResourceCache(reads.read).get()

    asyncio.run(go())
