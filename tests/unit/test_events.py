"""EventLog: increasing sequence numbers, resume from a seq, bounded capacity, waiting readers."""

from __future__ import annotations

import asyncio

from godel_ray.core.events import EventLog
from godel_ray.models import EventKind, FederationEvent


def ev(type_: str) -> FederationEvent:
    return FederationEvent(kind=EventKind.AGENT, type=type_)


def test_append_assigns_increasing_seq_from_one() -> None:
    log = EventLog()
    stored = [log.append(ev(f"e{i}")) for i in range(3)]
    assert [e.seq for e in stored] == [1, 2, 3] and log.last_seq == 3
    assert [e.type for e in log.since(0)] == ["e0", "e1", "e2"]
    assert [e.seq for e in log.since(2)] == [3]
    assert log.since(3) == [] and log.since(99) == []


def test_capacity_keeps_the_newest_and_shows_the_gap() -> None:
    log = EventLog(capacity=3)
    for i in range(5):
        log.append(ev(f"e{i}"))
    assert len(log) == 3
    assert [e.seq for e in log.since(0)] == [3, 4, 5]  # first seq > 1: the reader sees it missed two
    assert [e.seq for e in log.since(3)] == [4, 5]


def test_wait_since_returns_when_an_event_arrives() -> None:
    async def go() -> tuple[list[FederationEvent], list[FederationEvent]]:
        log = EventLog()
        log.append(ev("old"))
        waiter = asyncio.create_task(log.wait_since(1, timeout_s=30))
        await asyncio.sleep(0)
        assert not waiter.done()
        log.append(ev("new"))
        got = await waiter
        empty = await log.wait_since(2, timeout_s=0.01)
        return got, empty

    got, empty = asyncio.run(go())
    assert [(e.seq, e.type) for e in got] == [(2, "new")]
    assert empty == []


def test_wait_since_returns_at_once_when_something_is_newer() -> None:
    async def go() -> list[FederationEvent]:
        log = EventLog()
        log.append(ev("a"))
        return await log.wait_since(0, timeout_s=30)

    assert [e.type for e in asyncio.run(go())] == ["a"]


def test_the_default_window_is_the_setting() -> None:
    from godel_ray.settings import LIMITS

    log = EventLog()
    for i in range(LIMITS.event_log_capacity + 5):
        log.append(ev(f"e{i}"))
    assert len(log) == LIMITS.event_log_capacity and log.last_seq == LIMITS.event_log_capacity + 5
    assert log.first_seq == 6 and log.since(0)[0].seq == 6


def test_a_reader_that_fell_behind_gets_what_is_left_and_resumes_exactly() -> None:
    log = EventLog(capacity=4)
    for i in range(10):
        log.append(ev(f"e{i}"))
    behind = log.since(2)  # seqs 3..6 were dropped
    assert [e.seq for e in behind] == [7, 8, 9, 10] and log.first_seq == 7
    assert [e.seq for e in log.since(behind[1].seq)] == [9, 10]  # resume after what it got
    assert log.since(10) == [] and log.since(-5) == behind
    log.append(ev("e10"))
    assert [e.seq for e in log.since(10)] == [11]


def test_the_window_is_bounded_by_size_too() -> None:
    """A few huge events cannot hold memory without bound: the oldest go, the newest always stays."""
    big = {"reason": "x" * 10_000}
    log = EventLog(capacity=1000, max_bytes=25_000)
    for i in range(10):
        log.append(FederationEvent(kind=EventKind.AGENT, type=f"e{i}", data=big))
    assert len(log) == 2 and log.size_bytes <= 25_000
    assert [e.seq for e in log.since(0)] == [9, 10]
    huge = EventLog(capacity=10, max_bytes=100)
    huge.append(FederationEvent(kind=EventKind.AGENT, type="huge", data=big))
    assert [e.type for e in huge.since(0)] == ["huge"]


def test_an_empty_log() -> None:
    log = EventLog(capacity=2)
    assert log.since(0) == [] and log.first_seq == 1 and log.last_seq == 0 and len(log) == 0


def test_deferred_events_keep_their_place_and_wake_readers_once() -> None:
    async def go() -> None:
        log = EventLog()
        log.append(ev("a"))
        waiter = asyncio.create_task(log.wait_since(1, timeout_s=30))
        await asyncio.sleep(0)
        log.defer(lambda: ev("b"))
        log.defer(lambda: ev("c"))
        assert not waiter.done()  # nothing appended yet: the loop has not turned
        got = await waiter  # the loop turned: both at once, in order
        assert [(e.seq, e.type) for e in got] == [(2, "b"), (3, "c")]
        log.defer(lambda: ev("d"))
        log.append(ev("e"))  # an append takes the deferred ones first
        assert [e.type for e in log.since(3)] == ["d", "e"]
        log.defer(lambda: ev("f"))
        assert log.last_seq == 6 and log.since(5)[0].type == "f"  # and so does every read

    asyncio.run(go())


def test_defer_without_a_running_loop_appends_at_once() -> None:
    log = EventLog()
    log.defer(lambda: ev("x"))
    assert [e.type for e in log.since(0)] == ["x"]
