"""Starting and stopping a private Ray head on this machine, and worker nodes joined to it: the one way
godel-ray does it.

Several Ray clusters share one machine (the control plane, each site, tests), so each head gets its
own block of ports and its own temp dir, and is started with ``ray start --block`` as the leader of a
new session. Stopping signals every process of that session (gcs_server, raylet, agents, workers:
they are reparented to init, but keep their session id), waits, then SIGKILLs what is left. Never
``ray stop``: it kills every Ray process on the machine.

``start_worker`` joins a worker node to a head with ``ray start --address`` the same way: its own
block of ports, its own socket names, its own session (so it stops, or is lost, on its own), and its
own resources -- several raylets on one machine, as Ray's ``cluster_utils`` tests multi-node
behaviour. It shares the head's session directory (Ray's rule for nodes of one cluster on one
machine), so ``RayHead.stop`` removes it; stop the workers first.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from godel_ray.core.gpu import gpu_type_resource
from godel_ray.errors import GodelError

READY_TIMEOUT_S = 120.0  # generous: a loaded 2-core machine took over 60 s
STOP_GRACE_S = 2.0
PORT_BLOCK = 480  # 12 fixed ports, then a range for worker processes
FIXED_PORTS = ("gcs", "node_manager", "object_manager", "metrics", "dashboard", "client_server",
               "dashboard_agent_listen", "dashboard_agent_grpc", "runtime_env_agent")


@dataclass
class RayHead:
    """A running Ray head we started. Serialisable so ``swarmctl down`` can stop it later."""

    address: str
    pid: int
    base_port: int
    temp_dir: str
    log_file: str
    dashboard_url: str = ""
    metrics_port: int = 0
    auth_token: str | None = None
    resources: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RayHead:
        return cls(**json.loads(text))

    def env(self) -> dict[str, str]:
        """Environment a client of this head needs (address, and Ray's token auth when enabled)."""
        out = {"RAY_ADDRESS": self.address}
        if self.auth_token:
            out.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.auth_token)
        return out

    def alive(self) -> bool:
        return bool(session_pids(self.pid))

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        stop_session(self.pid, grace_s)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def allocate_port_block(size: int = PORT_BLOCK, attempts: int = 200) -> int:
    """A base port such that ``base .. base+size`` looks free (checked on the fixed ports)."""
    rng = random.Random()
    for _ in range(attempts):
        base = rng.randrange(20000, 60000 - size, 10)
        if all(_port_free(base + i) for i in range(len(FIXED_PORTS))):
            return base
    raise GodelError("could not find a free block of ports for a Ray head; free some ports and retry")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_head(
    num_cpus: float | None = None,
    num_gpus: int = 0,
    gpu_type: str | None = None,
    resources: dict[str, float] | None = None,
    dashboard: bool = False,
    auth_token: str | None = None,
    object_store_bytes: int = 200 * 1024 * 1024,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> RayHead:
    """Start a Ray head on loopback with its own ports and temp dir; wait until it is ready.

    ``gpu_type`` adds the logical resource ``accelerator_type:<gpu_type>`` (one unit per GPU),
    which is what Ray schedules ``accelerator_type`` requests on: GPUs are simulated exactly.
    """
    base = allocate_port_block()
    ports = {name: base + i for i, name in enumerate(FIXED_PORTS)}
    temp_dir = tempfile.mkdtemp(prefix="godel-ray-", dir="/tmp")  # short: unix socket paths
    res = _with_gpu_type(resources, num_gpus, gpu_type)
    cmd = [
        sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
        "--port", str(ports["gcs"]),
        "--ray-client-server-port", str(ports["client_server"]),
        "--temp-dir", temp_dir,
        "--include-dashboard", "true" if dashboard else "false",
        # Ray runs a minimal dashboard process even without the UI: give it this head's own port too,
        # or every head on the machine reaches for the default 8265.
        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(ports["dashboard"]),
        *_node_args(base, ports, num_cpus, num_gpus, res, object_store_bytes),
    ]
    log_file = os.path.join(temp_dir, "ray-start.log")
    proc = _launch(cmd, log_file, auth_token)
    head = RayHead(
        address=f"127.0.0.1:{ports['gcs']}", pid=proc.pid, base_port=base, temp_dir=temp_dir,
        log_file=log_file, dashboard_url=f"http://127.0.0.1:{ports['dashboard']}" if dashboard else "",
        metrics_port=ports["metrics"], auth_token=auth_token, resources=res,
    )
    _wait_started(proc, log_file, ready_timeout_s, head.stop, "Ray head")
    return head


def _with_gpu_type(resources: dict[str, float] | None, num_gpus: int, gpu_type: str | None) -> dict[str, float]:
    res = dict(resources or {})
    if gpu_type and num_gpus:
        res[gpu_type_resource(gpu_type)] = float(num_gpus)
    return res


def _node_args(base: int, ports: dict[str, int], num_cpus: float | None, num_gpus: int,
               resources: dict[str, float], object_store_bytes: int) -> list[str]:
    """``ray start`` flags every node needs on a shared machine: its own ports, its resources."""
    args = [
        "--node-ip-address", "127.0.0.1",
        "--node-manager-port", str(ports["node_manager"]),
        "--object-manager-port", str(ports["object_manager"]),
        "--metrics-export-port", str(ports["metrics"]),
        "--dashboard-agent-listen-port", str(ports["dashboard_agent_listen"]),
        "--dashboard-agent-grpc-port", str(ports["dashboard_agent_grpc"]),
        "--runtime-env-agent-port", str(ports["runtime_env_agent"]),
        "--min-worker-port", str(base + 20), "--max-worker-port", str(base + PORT_BLOCK - 1),
        "--num-gpus", str(num_gpus),
        "--object-store-memory", str(object_store_bytes),
        "--disable-usage-stats",
    ]
    if num_cpus is not None:
        args += ["--num-cpus", str(num_cpus)]
    if resources:
        args += ["--resources", json.dumps(resources)]
    return args


def _launch(cmd: list[str], log_file: str, auth_token: str | None) -> subprocess.Popen[bytes]:
    """Run ``cmd`` (a ``ray start --block``) as the leader of a new session, output to ``log_file``."""
    env = dict(os.environ)
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        env.pop(key, None)
    if auth_token:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=auth_token)
    with open(log_file, "w") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)


def _wait_started(proc: subprocess.Popen[bytes], log_file: str, ready_timeout_s: float,
                  stop: Callable[[], None], what: str) -> None:
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        text = Path(log_file).read_text(errors="replace")
        if "Ray runtime started" in text:
            return
        if proc.poll() is not None:
            stop()
            raise GodelError(f"ray start ({what}) exited with code {proc.returncode}: {text.strip()[-600:]}")
        time.sleep(0.1)
    stop()
    raise GodelError(f"{what} did not start within {ready_timeout_s:.0f}s (log: {log_file})")


@dataclass
class RayWorkerNode:
    """A worker node we joined to a head on this machine (its own session: stopped, or lost, alone)."""

    head_address: str
    pid: int
    base_port: int
    node_dir: str  # its temp dir: its session's logs and unix sockets
    log_file: str
    num_cpus: float | None = None
    num_gpus: int = 0
    resources: dict[str, float] = field(default_factory=dict)

    def alive(self) -> bool:
        return bool(session_pids(self.pid))

    def raylet_pid(self) -> int | None:
        """The pid of this node's raylet (None once it is gone)."""
        return raylet_pid(self.pid)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        stop_session(self.pid, grace_s)
        shutil.rmtree(self.node_dir, ignore_errors=True)


def start_worker(
    head: RayHead,
    num_cpus: float | None = None,
    num_gpus: int = 0,
    gpu_type: str | None = None,
    resources: dict[str, float] | None = None,
    object_store_bytes: int = 200 * 1024 * 1024,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> RayWorkerNode:
    """Join a worker node to ``head`` (``ray start --address``) with its own ports, sockets and resources.

    ``gpu_type`` adds ``accelerator_type:<gpu_type>`` as ``start_head`` does. Returns once its
    ``ray start`` reports the node started; the caller waits for Ray to list it (``rayapi``).
    """
    base = allocate_port_block()
    ports = {name: base + i for i, name in enumerate(FIXED_PORTS)}
    node_dir = tempfile.mkdtemp(prefix="godel-node-", dir="/tmp")  # short: unix socket paths
    res = _with_gpu_type(resources, num_gpus, gpu_type)
    cmd = [
        sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--address", head.address,
        "--temp-dir", node_dir,
        *_node_args(base, ports, num_cpus, num_gpus, res, object_store_bytes),
    ]
    log_file = os.path.join(node_dir, "ray-start.log")
    proc = _launch(cmd, log_file, head.auth_token)
    node = RayWorkerNode(head_address=head.address, pid=proc.pid, base_port=base, node_dir=node_dir,
                         log_file=log_file, num_cpus=num_cpus, num_gpus=num_gpus, resources=res)
    _wait_started(proc, log_file, ready_timeout_s, node.stop, "Ray worker node")
    return node


def session_pids(sid: int) -> list[int]:
    """Every live process whose session id is ``sid`` (the head's processes and workers)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[3]) == sid:
            out.append(int(entry))
    return out


def raylet_pid(sid: int) -> int | None:
    """The pid of the raylet in session ``sid`` (a node we started), or None."""
    for pid in session_pids(sid):
        try:
            exe = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
        except OSError:
            continue
        if exe.endswith(b"/raylet"):
            return pid
    return None


def stop_session(sid: int, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM every process of the session, wait up to ``grace_s``, then SIGKILL the rest.

    ``grace_s <= 0`` is a hard kill: SIGKILL only. A SIGTERM with no time to act on it would still
    start a graceful shutdown (a site answering its streams, ending its agents) in the moment before
    the SIGKILL lands: not what a caller asking for no grace means (a kill -9 fault, say).
    """
    for sig in (signal.SIGKILL,) if grace_s <= 0 else (signal.SIGTERM, signal.SIGKILL):
        pids = session_pids(sid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline and session_pids(sid):
            time.sleep(0.05)
    _reap(sid)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
