"""Launching site servers (`swarmctl site serve`) as separate local processes: for the demo and tests.

Each site runs in its own session, with the Ray head it starts in another (and each worker node it
starts, with ``--workers``, in one more); all are stopped by session id (SIGTERM, wait, SIGKILL),
never with ``ray stop``. A background thread collects each site's output for
its whole life, so waiting for the ``listening on`` line is bounded by a deadline even when the site
prints nothing at all.
"""

from __future__ import annotations

import asyncio
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

from godel_ray.models import Agent
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
    worker_sids: list[int] = field(default_factory=list)  # with --workers: each worker node's session
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
        """Hard kill: SIGKILL the server's session, its worker nodes' and its Ray head's."""
        heads.stop_session(self.proc.pid, grace_s=0.0)
        for sid in self.worker_sids:
            heads.stop_session(sid, grace_s=0.0)
        if self.head_sid:
            heads.stop_session(self.head_sid, grace_s=0.0)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def list_agents(self) -> list[Agent]:
        """The site's own ``ListAgents`` over gRPC, not through a control plane: what it runs now."""
        from godel_ray.rpc.client import GrpcClusterClient

        async def listing() -> list[Agent]:
            client = GrpcClusterClient(self.endpoint, token=self.token, cluster_id=self.name)
            try:
                return await client.list_agents()
            finally:
                await client.close()

        return asyncio.run(listing())


def start_site(tmp_dir: Path, name: str, *, num_cpus: float = 4, num_gpus: int = 0,
               gpu_type: str | None = None, extra: list[str] | None = None,
               token: str | None = None, port: int = 0, host: str | None = None,
               prefix_cmd: list[str] | None = None, workers: int = 0) -> SiteProcess:
    """Start ``swarmctl site serve`` and wait for its ``listening on`` line.

    ``host`` binds a non-loopback address (with ``--insecure``: tests only); ``prefix_cmd`` runs the
    server under a wrapper, e.g. ``["ip", "netns", "exec", NS]`` to put it in a network namespace.
    ``workers`` starts that many Ray worker nodes next to the site's head (the GPUs on the first).
    """
    tmp_dir.mkdir(parents=True, exist_ok=True)
    token_file = tmp_dir / f"{name}.token"
    token = write_token(token_file, token)
    args = [sys.executable, "-m", "godel_cli.main", "site", "serve", "--port", str(port),
            "--auth-token-file", str(token_file), "--name", name, "--num-cpus", str(num_cpus),
            "--num-gpus", str(num_gpus)]
    if gpu_type:
        args += ["--gpu-type", gpu_type]
    if workers:
        args += ["--workers", str(workers)]
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
    lines = _pump_output(site)
    deadline = time.monotonic() + SITE_READY_TIMEOUT_S
    seen = 0
    with lines:
        while True:
            while seen < len(site.output):
                line = site.output[seen]
                seen += 1
                if m := re.search(r"ray head session (\d+)", line):
                    site.head_sid = int(m.group(1))
                if m := re.search(r"ray worker session (\d+)", line):
                    site.worker_sids.append(int(m.group(1)))
                if m := re.search(r"listening on (\S+:\d+)", line):
                    site.endpoint = m.group(1)
                    return site
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not lines.open:
                break
            lines.wait(remaining)  # woken by each new line and at the end of the output
    site.kill()
    raise RuntimeError(f"site {name} did not start within {SITE_READY_TIMEOUT_S:g} s:\n"
                       f"{''.join(site.output)[-3000:]}")


class _Lines(threading.Condition):
    """Signals each line a site printed; ``open`` until its output ends."""

    def __init__(self) -> None:
        super().__init__()
        self.open = True


def _pump_output(site: SiteProcess) -> _Lines:
    """Collect the site's output into ``site.output`` in a background thread, for its whole life:
    a line read never blocks the caller, which waits on the returned condition with a deadline."""
    lines = _Lines()

    def pump() -> None:
        assert site.proc.stdout is not None
        for line in site.proc.stdout:
            with lines:
                site.output.append(line)
                lines.notify_all()
        with lines:
            lines.open = False
            lines.notify_all()

    threading.Thread(target=pump, daemon=True, name=f"site-{site.name}-output").start()
    return lines
