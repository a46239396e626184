"""How this process learns that a child process exited: one pidfd per child, no thread per child.

Python 3.11's asyncio defaults to ``ThreadedChildWatcher``: every ``create_subprocess_exec`` starts
a thread that blocks in ``waitpid`` until the child exits. An agent runs one child per command, so
each command paid a thread start (and the thread's wake-up through ``call_soon_threadsafe``).
``PidfdWatcher`` instead registers the child's pidfd (Linux >= 5.3) with the event loop that
started it; the loop reaps the child when the pidfd becomes readable. Where ``pidfd_open`` is not
available (an old kernel, a seccomp filter), that child falls back to the threaded watcher.

The stdlib's own ``PidfdChildWatcher`` (3.11) is bound to one loop by ``attach_loop`` and answers
``is_active`` only while that loop runs, so it breaks every other loop of the process (a site's
server loop, a test's loop, Ray's actor loop in its own thread). This one, like 3.12's, uses the
running loop of each call. From Python 3.12 on asyncio uses pidfds itself and ``install`` does
nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, Self

log = logging.getLogger(__name__)
_installed: bool | None = None  # None: not decided yet; then whether PidfdWatcher is in use
_install_lock = threading.Lock()


class PidfdWatcher(asyncio.AbstractChildWatcher):
    """Invariants: each child is reaped exactly once, by the loop that started it (its callback runs
    on that loop, not in another thread); a child whose pidfd cannot be opened is handed to the
    threaded watcher instead. Safe for any number of loops in the process."""

    def __init__(self) -> None:
        self._fallback = asyncio.ThreadedChildWatcher()

    def add_child_handler(self, pid: int, callback: Callable[..., object], *args: Any) -> None:  # type: ignore[override]
        loop = asyncio.get_running_loop()
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError) as exc:  # no pidfds here: a thread for this child
            log.debug("pidfd_open(%d) failed (%r): watching it with a thread", pid, exc)
            self._fallback.add_child_handler(pid, callback, *args)
            return
        loop._add_reader(pidfd, self._reap, loop, pid, pidfd, callback, args)  # type: ignore[attr-defined]

    @staticmethod
    def _reap(loop: asyncio.AbstractEventLoop, pid: int, pidfd: int, callback: Callable[..., object],
              args: tuple[Any, ...]) -> None:
        loop._remove_reader(pidfd)  # type: ignore[attr-defined]
        try:
            _, status = os.waitpid(pid, 0)  # readable pidfd: the child has exited, this never blocks
        except ChildProcessError:  # reaped elsewhere (someone called waitpid(-1))
            returncode = 255
            log.warning("child process %d was reaped elsewhere: reporting exit code 255", pid)
        else:
            returncode = os.waitstatus_to_exitcode(status)
        finally:
            os.close(pidfd)
        callback(pid, returncode, *args)

    def remove_child_handler(self, pid: int) -> bool:
        return self._fallback.remove_child_handler(pid)

    def attach_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        pass  # each child is watched by the loop that started it

    def is_active(self) -> bool:
        return True

    def close(self) -> None:
        self._fallback.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def pidfds_supported() -> bool:
    """Whether this kernel (and any seccomp filter) lets us open a pidfd."""
    if not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    return True


def install() -> bool:
    """Make ``PidfdWatcher`` this process's child watcher (once; idempotent, thread-safe).

    Returns whether pidfds are in use: False on Python >= 3.12 (asyncio already uses them), or
    where the kernel has none (the default threaded watcher stays)."""
    global _installed
    if _installed is not None:
        return _installed
    with _install_lock:
        if _installed is None:
            use = sys.version_info < (3, 12) and pidfds_supported()
            if use:
                asyncio.set_child_watcher(PidfdWatcher())
            _installed = use
    return _installed


__all__ = ["PidfdWatcher", "install", "pidfds_supported"]
