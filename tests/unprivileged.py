"""Running a test scenario as an unprivileged user, for tests about file permissions.

Root ignores directory permissions, so a test of "files under a read-only directory" proves nothing
when the suite runs as root (as in a container): there, the scenario runs in a forked child that
drops to ``nobody`` first and reports its traceback back through a pipe.
"""

from __future__ import annotations

import concurrent.futures.thread  # noqa: F401 - loaded before a child drops to a user who cannot read /root
import os
import shutil
import tempfile
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

NOBODY = 65534


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A directory the (possibly unprivileged) scenario owns, outside root's private tmp; removed after."""
    path = Path(tempfile.mkdtemp(prefix="godel-perm-"))
    if os.geteuid() == 0:
        os.chown(path, NOBODY, NOBODY)
    try:
        yield path
    finally:
        if os.geteuid() == 0:
            shutil.rmtree(path, ignore_errors=True)  # root: permissions do not stop it
        else:
            from godel_ray.agents.workdir import remove_tree

            remove_tree(path)


def unprivileged(scenario: Callable[[], None]) -> None:
    """Run ``scenario`` as an unprivileged user: in a forked child when we are root, else here."""
    if os.geteuid() != 0:
        scenario()
        return
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 0
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            scenario()
        except BaseException:  # noqa: BLE001 - reported to the parent
            os.write(write_end, traceback.format_exc().encode())
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, report
