"""``start_site`` waits for a site's ``listening on`` line with a deadline, never a blocking read.

No Ray and no site here: ``prefix_cmd`` runs a stand-in (``sh -c ...``) in place of the server,
so these check the waiting itself: a silent process that never exits, one that exits without the
line, and one that prints it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from godel_ray.site import launcher


def _stand_in(script: str) -> list[str]:
    return ["sh", "-c", script, "stand-in"]  # the site's own argv follows, as $1...: ignored


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_silent_site_is_given_up_at_the_deadline_and_stopped(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher, "SITE_READY_TIMEOUT_S", 1.0)
    started: list[int] = []
    real_popen = launcher.subprocess.Popen

    def popen(*args: object, **kwargs: object) -> object:
        proc = real_popen(*args, **kwargs)  # type: ignore[call-overload]
        started.append(proc.pid)
        return proc

    monkeypatch.setattr(launcher.subprocess, "Popen", popen)
    with pytest.raises(RuntimeError, match="did not start within 1 s"):
        launcher.start_site(tmp_path, "silent", prefix_cmd=_stand_in("exec sleep 600"))
    assert started and _gone(started[0])


def test_a_site_that_exits_without_listening_fails_with_its_output(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="(?s)did not start.*error: port in use"):
        launcher.start_site(tmp_path, "broken", prefix_cmd=_stand_in("echo 'error: port in use'; exit 1"))


def test_the_listening_line_is_found(tmp_path: Path) -> None:
    site = launcher.start_site(tmp_path, "ok", prefix_cmd=_stand_in(
        "echo 'ray head session 4242'; echo 'listening on 127.0.0.1:5555'; exec sleep 600"))
    try:
        assert (site.endpoint, site.head_sid) == ("127.0.0.1:5555", 4242)
    finally:
        site.head_sid = None  # a stand-in: there is no such session to stop
        site.kill()
