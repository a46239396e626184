"""Helpers shared by the test tiers: polling with a deadline, and skipping for a missing machine feature."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import NoReturn, TypeVar

import pytest

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


def in_ci() -> bool:
    """Whether this is a CI run (``CI`` set to anything but empty, 0, false or no; CI services set ``CI=true``)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail(reason: str) -> NoReturn:
    """Skip a test whose machine lacks a feature it needs (``ip netns``, ...), saying why; under CI, fail.

    CI machines are set up to have every feature, so there a missing one is a broken setup, not a reason
    to pass quietly. Use this, never ``pytest.skip``, for a missing machine feature.
    """
    if in_ci():
        pytest.fail(f"{reason} (CI={os.environ['CI']}: a missing machine feature fails in CI instead of skipping)")
    pytest.skip(reason)
