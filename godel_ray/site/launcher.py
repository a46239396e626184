"""Launching site servers (`swarmctl site serve`) as separate local processes: for the demo and tests.

Each site runs in its own session, with the Ray head it starts in another; both are stopped by session id
(SIGTERM, wait, SIGKILL), never with ``ray stop``.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from godel_ray.raykit import heads

SITE_READY_TIMEOUT_S = 120.0


def write_token(path: Path, token: str | None = None) -> str:
    """Write a fresh bearer token to ``path`` with mode 0600 and return it."""
    token = token or secrets.token_urlsafe(24)
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token


@dataclass
class SiteProcess:
    """A `swarmctl site serve` process (and the Ray head it started), stopped by session id."""

    name: str
    proc: subprocess.Popen[str]
    endpoint: str
    token: str
    token_file: Path
    args: list[str]
    head_sid: int | None = None
    output: list[str] = field(default_factory=list)

    def terminate(self, timeout_s: float = 30.0) -> int | None:
        """Graceful stop (SIGTERM); then make sure nothing of it is left."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        """Hard kill: SIGKILL the server's session and its Ray head's session."""
        heads.stop_session(self.proc.pid, grace_s=0.0)
        if self.head_sid:
            heads.stop_session(self.head_sid, grace_s=0.0)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def start_site(tmp_dir: Path, name: str, *, num_cpus: float = 4, num_gpus: int = 0,
               gpu_type: str | None = None, extra: list[str] | None = None,
               token: str | None = None, port: int = 0, host: str | None = None,
               prefix_cmd: list[str] | None = None) -> SiteProcess:
    """Start ``swarmctl site serve`` and wait for its ``listening on`` line.

    ``host`` binds a non-loopback address (with ``--insecure``: tests only); ``prefix_cmd`` runs the
    server under a wrapper, e.g. ``["ip", "netns", "exec", NS]`` to put it in a network namespace.
    """
    tmp_dir.mkdir(parents=True, exist_ok=True)
    token_file = tmp_dir / f"{name}.token"
    token = write_token(token_file, token)
    args = [sys.executable, "-m", "godel_cli.main", "site", "serve", "--port", str(port),
            "--auth-token-file", str(token_file), "--name", name, "--num-cpus", str(num_cpus),
            "--num-gpus", str(num_gpus)]
    if gpu_type:
        args += ["--gpu-type", gpu_type]
    if host:
        args += ["--host", host, "--insecure"]
    args += extra or []
    args = [*(prefix_cmd or []), *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        env.pop(key, None)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)
    site = SiteProcess(name=name, proc=proc, endpoint="", token=token, token_file=token_file, args=args)
    deadline = time.monotonic() + SITE_READY_TIMEOUT_S
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        site.output.append(line)
        if m := re.search(r"ray head session (\d+)", line):
            site.head_sid = int(m.group(1))
        if m := re.search(r"listening on (\S+:\d+)", line):
            site.endpoint = m.group(1)
            _drain_in_background(site)
            return site
    site.kill()
    raise RuntimeError(f"site {name} did not start:\n{''.join(site.output)[-3000:]}")


def _drain_in_background(site: SiteProcess) -> None:
    def drain() -> None:
        assert site.proc.stdout is not None
        for line in site.proc.stdout:
            site.output.append(line)

    threading.Thread(target=drain, daemon=True).start()


