"""Helpers shared by the test tiers: polling with a deadline, and skipping for a missing machine feature."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
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


# What a command inside an agent prints to name a process the host can find: its pid as the agent
# sees it and its PID namespace (agents run in a PID namespace of their own).
ECHO_CHILD = "echo $! $(readlink /proc/self/ns/pid)"


# The same for the shell itself (``$$``): put it first in a command that then ``exec``s the process to watch.
ECHO_SELF = "echo $$ $(readlink /proc/self/ns/pid)"


def host_pid(ref: str) -> int | None:
    """The pid, as this host sees it, of the live (not zombie) process named by ``ref`` (what
    ``ECHO_CHILD``/``ECHO_SELF`` printed inside an agent: a pid and a PID namespace); None when gone."""
    ns_pid_text, _, pidns = ref.strip().partition(" ")
    ns_pid = int(ns_pid_text)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if pidns and os.readlink(f"/proc/{entry.name}/ns/pid") != pidns:
                continue
            status = Path(f"/proc/{entry.name}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        nspids = fields.get("NSpid", "").split()
        if nspids and int(nspids[-1]) == ns_pid and not fields.get("State", "").strip().startswith("Z"):
            return int(entry.name)
    return None


def process_gone(ref: str) -> bool:
    """True when the process named by ``ref`` (see ``host_pid``) no longer runs anywhere; a zombie counts as gone."""
    return host_pid(ref) is None


def gone_or_blocked_writing(ref: str) -> bool:
    """True when the process named by ``ref`` has exited, or sleeps in a write to a full pipe (its
    reader is not keeping up): a reader that waits for this is slower than the writer, by construction."""
    pid = host_pid(ref)
    if pid is None:
        return True
    try:
        wchan = Path(f"/proc/{pid}/wchan").read_text()
        syscall = Path(f"/proc/{pid}/syscall").read_text().split()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return host_pid(ref) is None
    return wchan.endswith("pipe_write") or (state == "S" and syscall[:1] == ["1"])  # 1: write(2) on x86-64
