"""Helpers shared by the test tiers."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from godel_ray.errors import GodelError

T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], what: str, timeout_s: float = 120.0, poll_s: float = 0.2) -> T:
    """Poll ``probe`` until it returns a truthy value (a GodelError counts as not yet); no fixed sleeps."""
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except GodelError as exc:
            last = exc
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what} (last error: {last})")
