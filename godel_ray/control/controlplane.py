"""Starting, attaching to, stopping and describing the control plane (``swarmctl up/down/status``).

``up`` starts a private Ray head (dashboard on, Ray token auth with a fresh token kept in
``<state_dir>/ray_token``, mode 0600), writes ``<state_dir>/control.json`` (the ``RayHead``), attaches
this process as a Ray driver and creates the balancer, then waits until it answers (it reloads and
reconciles the state store first). ``down`` checkpoints local agents, detaches and stops the head by
its session. ``status`` reads files only: it never needs Ray.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

from pydantic import BaseModel

from godel_ray import settings
from godel_ray.control.store import open_store
from godel_ray.errors import ControlPlaneNotRunning, GodelError
from godel_ray.raykit import heads, rayapi

CONTROL_FILE = "control.json"
TOKEN_FILE = "ray_token"
BALANCER_READY_TIMEOUT_S = 180.0  # first start: a worker process, imports, reconciliation
SHUTDOWN_CHECKPOINT_TIMEOUT_S = 120.0


class ControlPlaneInfo(BaseModel):
    running: bool
    state_dir: str
    address: str = ""
    dashboard_url: str = ""
    ray_pid: int = 0
    clusters: int = 0
    agents: int = 0
    started: bool = False  # True if this call started it


def _dir(state_dir: str | os.PathLike[str] | None) -> Path:
    return settings.state_dir(state_dir)


def read_head(state_dir: str | os.PathLike[str] | None = None) -> heads.RayHead | None:
    """The running head described by ``control.json``, or None (no file, or the head is gone)."""
    path = _dir(state_dir) / CONTROL_FILE
    try:
        head = heads.RayHead.from_json(path.read_text())
    except (OSError, ValueError, TypeError):
        return None
    return head if head.alive() else None


def env_for_clients(state_dir: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """RAY_ADDRESS and Ray token auth for ``ray job submit`` and other clients of the control plane."""
    head = read_head(state_dir)
    if head is None:
        raise ControlPlaneNotRunning(f"no control plane at {_dir(state_dir)}: run `swarmctl up` first")
    # `ray job submit` reads the job server (the dashboard) from RAY_API_SERVER_ADDRESS before RAY_ADDRESS.
    return {**head.env(), **({"RAY_API_SERVER_ADDRESS": head.dashboard_url} if head.dashboard_url else {})}


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def _counts(root: Path) -> tuple[int, int]:
    try:
        store = open_store(root, readonly=True)
    except ControlPlaneNotRunning:
        return 0, 0
    try:
        return len(store.clusters()), sum(store.active_counts().values())
    finally:
        store.close()


def _wait_for_balancer(root: Path) -> None:
    from godel_ray.control import factory
    from godel_ray.raykit.gateway import BalancerGateway

    balancer = BalancerGateway(factory.balancer(str(root)))
    deadline = time.monotonic() + BALANCER_READY_TIMEOUT_S
    while True:
        try:
            balancer.ping().get(timeout_s=max(1.0, deadline - time.monotonic()))
            return
        except ControlPlaneNotRunning:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def up(state_dir: str | os.PathLike[str] | None = None, *, num_cpus: float | None = None, num_gpus: int = 0,
       gpu_type: str | None = None) -> ControlPlaneInfo:
    """Start the control plane (or attach to the running one) and wait until the balancer answers."""
    root = _dir(state_dir)
    if not root.exists():
        root.mkdir(mode=0o700, parents=True)  # holds the Ray token
    head = read_head(root)
    started = head is None
    if head is None:
        token = secrets.token_hex(32)
        _write_private(root / TOKEN_FILE, token)
        head = heads.start_head(num_cpus=num_cpus, num_gpus=num_gpus, gpu_type=gpu_type, dashboard=True,
                                     auth_token=token)
        _write_private(root / CONTROL_FILE, head.to_json())
    try:
        rayapi.init_client(head.address, head.env())
        _wait_for_balancer(root)
    except BaseException:
        if started:
            _stop(root, head)
        raise
    return _info(root, head, started=started)


def _stop(root: Path, head: heads.RayHead) -> None:
    rayapi.detach()
    head.stop()
    (root / CONTROL_FILE).unlink(missing_ok=True)


def down(state_dir: str | os.PathLike[str] | None = None) -> bool:
    """Checkpoint local agents, stop what ``up`` started. False if nothing was running."""
    root = _dir(state_dir)
    head = read_head(root)
    if head is None:
        (root / CONTROL_FILE).unlink(missing_ok=True)
        return False
    try:
        from godel_ray.control import factory

        rayapi.init_client(head.address, head.env())
        factory.balancer_gateway().prepare_shutdown().get(timeout_s=SHUTDOWN_CHECKPOINT_TIMEOUT_S)
    except GodelError:
        pass  # stop anyway: a balancer that cannot answer cannot checkpoint either
    _stop(root, head)
    return True


def _info(root: Path, head: heads.RayHead | None, *, started: bool = False) -> ControlPlaneInfo:
    clusters, agents = _counts(root)
    if head is None:
        return ControlPlaneInfo(running=False, state_dir=str(root), clusters=clusters, agents=agents)
    return ControlPlaneInfo(running=True, state_dir=str(root), address=head.address,
                            dashboard_url=head.dashboard_url, ray_pid=head.pid, clusters=clusters, agents=agents,
                            started=started)


def status(state_dir: str | os.PathLike[str] | None = None) -> ControlPlaneInfo:
    """Running or not, where, and what it holds: from files only (no Ray)."""
    root = _dir(state_dir)
    return _info(root, read_head(root))


def control_file(state_dir: str | os.PathLike[str] | None = None) -> Path:
    return _dir(state_dir) / CONTROL_FILE


__all__ = [
    "CONTROL_FILE",
    "TOKEN_FILE",
    "ControlPlaneInfo",
    "control_file",
    "down",
    "env_for_clients",
    "read_head",
    "status",
    "up",
]
