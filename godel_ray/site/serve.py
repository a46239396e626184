"""The site server: ``SiteConfig`` (every ``swarmctl site serve`` option) and its lifecycle.

``serve(config)``: start a private Ray head unless ``ray_address`` is given, attach to it
(``raykit``), build the ``AgentRuntime``, and serve it through ``rpc.server.build_server`` (the gRPC
stack: services, credentials, interceptors, stream bounds). It prints ``ray head session SID``
(when it started a head) and then ``listening on HOST:PORT`` with the real bound port, once ready.

Multi-node (``workers: N``): the site starts its head plus N worker nodes on this machine, joined
with ``ray start --address`` (``heads.start_worker``: each its own ports, temp dir and session), and
serves once Ray lists all of them alive. The simulated GPUs (``num_gpus``, ``gpu_type``) go on the
first worker -- the GPU node -- and not on the head, so Ray puts GPU agents there and keeps CPU
agents off it while other nodes have room (Ray's scheduler avoids GPU nodes for CPU-only work).
Every node has ``num_cpus`` CPUs unless ``worker_cpus`` says otherwise for the workers. It prints
``ray worker session SID`` for each worker it started.

On SIGTERM/SIGINT: health goes NOT_SERVING, the server stops accepting, the runtime closes
(terminating its agents), the server stops, Ray disconnects, and the worker nodes and the head it
started (only those) are stopped. Exit code 0. A worker node that is lost meanwhile (its raylet
killed) fails the agents it hosted (their actors died with it); the site keeps serving on the rest.

Safety refusals (before anything starts): a non-loopback ``host`` without TLS unless ``insecure``;
a token file or TLS key file readable by group/others; no credential at all (neither token nor
client CA); an agent sandbox that cannot start here (``isolation: sandbox``, the default: see
docs/security.md). The token and key files are hidden from agents even where an allow-listed path
contains them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from godel_ray.errors import GodelError, InvalidArgument
from godel_ray.models import Isolation
from godel_ray.raykit import rayapi
from godel_ray.rpc.auth import read_key_file, read_token_file
from godel_ray.rpc.server import build_server, format_hostport, server_credentials
from godel_ray.settings import DEFAULT_SITE_PORT, LIMITS, Limits

log = logging.getLogger(__name__)

SITE_NAMESPACE = "godel-site"
SHUTDOWN_GRACE_S = 5.0
NODES_READY_TIMEOUT_S = 120.0  # every node started here listed alive by Ray
NODES_POLL_S = 0.2


class SiteConfig(BaseModel):
    """Every option of ``swarmctl site serve``; a ``--config`` YAML holds the same keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    port: int = Field(DEFAULT_SITE_PORT, ge=0, le=65535)
    auth_token_file: str | None = None
    host: str = "127.0.0.1"
    name: str = "site"
    region: str = "default"
    cost_per_hour: float = Field(0.0, ge=0)
    max_agents: int = Field(100, ge=1)
    warm_pool_size: int = Field(0, ge=0)  # pre-started idle agents with the default resources
    ray_address: str | None = None
    num_cpus: int | None = Field(None, ge=0)
    num_gpus: int = Field(0, ge=0)
    gpu_type: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    insecure: bool = False
    workdir_root: str | None = None  # default: a fresh temp dir, removed at shutdown
    isolation: Isolation = Isolation.SANDBOX  # none: agents run without a sandbox (only when asked)
    workers: int = Field(0, ge=0, le=16)  # worker nodes joined to the head started here (GPUs on the first)
    worker_cpus: int | None = Field(None, ge=0)  # CPUs of each worker node (default: num_cpus)

    @model_validator(mode="after")
    def _consistent(self) -> SiteConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca (mTLS) needs --tls-cert and --tls-key")
        if self.ray_address and (self.num_cpus is not None or self.num_gpus or self.gpu_type):
            raise ValueError("--ray-address attaches to an existing cluster: drop --num-cpus/--num-gpus/--gpu-type")
        if self.gpu_type and not self.num_gpus:
            raise ValueError("--gpu-type needs --num-gpus N (N >= 1)")
        if self.ray_address and (self.workers or self.worker_cpus is not None):
            raise ValueError("--workers starts nodes next to the head started here: drop --ray-address, or "
                             "add nodes to that cluster with `ray start --address`")
        if self.worker_cpus is not None and not self.workers:
            raise ValueError("--worker-cpus needs --workers N (N >= 1)")
        if not self.auth_token_file and not self.tls_client_ca:
            raise ValueError("a site needs a credential: --auth-token-file F and/or --tls-client-ca F")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, **overrides: Any) -> SiteConfig:
        """Build from a YAML file (optional) with ``overrides`` (the flags given) on top."""
        data: dict[str, Any] = {}
        if path is not None:
            try:
                loaded = yaml.safe_load(Path(path).read_text())
            except OSError as exc:
                raise InvalidArgument(f"cannot read site config {path}: {exc.strerror or exc}") from exc
            except yaml.YAMLError as exc:
                raise InvalidArgument(f"site config {path} is not valid YAML: {exc}") from exc
            if loaded is not None and not isinstance(loaded, dict):
                raise InvalidArgument(f"site config {path} must be a mapping of option: value")
            data.update(loaded or {})
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**data)
        except ValidationError as exc:
            raise InvalidArgument(_one_line(exc, path)) from exc


def _one_line(exc: ValidationError, path: str | os.PathLike[str] | None) -> str:
    where = f"site config {path}: " if path else "site options: "
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return where + "; ".join(parts)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_safety(config: SiteConfig) -> str | None:
    """Refuse unsafe setups before anything starts; return the bearer token (None with mTLS only)."""
    if not _is_loopback(config.host) and not config.tls and not config.insecure:
        raise InvalidArgument(
            f"refusing to serve on non-loopback host {config.host} without TLS: pass --tls-cert/--tls-key, "
            "or --insecure if the network is private")
    for label, path in (("--tls-cert", config.tls_cert), ("--tls-key", config.tls_key),
                        ("--tls-client-ca", config.tls_client_ca)):
        if path is not None and not Path(path).is_file():
            raise InvalidArgument(f"{label} {path}: no such file")
    if config.tls_key is not None:
        read_key_file(config.tls_key)  # refuses a key that group or others can read
    return read_token_file(config.auth_token_file) if config.auth_token_file else None


def agent_limits(config: SiteConfig) -> Limits:
    """The site's limits: its isolation, and its secrets (token, TLS key) hidden from every agent."""
    secrets_ = tuple(os.path.abspath(p) for p in (config.auth_token_file, config.tls_key) if p)
    sandbox = LIMITS.sandbox.model_copy(update={
        "isolation": config.isolation, "hidden_paths": (*LIMITS.sandbox.hidden_paths, *secrets_)})
    return LIMITS.model_copy(update={"sandbox": sandbox})


def _server_credentials(config: SiteConfig) -> grpc.ServerCredentials:
    assert config.tls_cert and config.tls_key  # checked by SiteConfig
    return server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)


def _say(line: str) -> None:
    print(line, flush=True)


async def serve(config: SiteConfig) -> None:
    """Run the site until SIGTERM/SIGINT (see the module docstring)."""
    from godel_ray.agents import sandbox
    from godel_ray.raykit import heads

    token = check_safety(config)
    credentials = _server_credentials(config) if config.tls else None
    limits = agent_limits(config)
    head: heads.RayHead | None = None
    workers: list[heads.RayWorkerNode] = []
    workdir_root = config.workdir_root
    own_workdir = workdir_root is None
    if workdir_root is None:
        workdir_root = tempfile.mkdtemp(prefix=f"godel-site-{config.name}-")
    try:
        await asyncio.to_thread(sandbox.probe, limits.sandbox, workdir_root)
    except BaseException:
        if own_workdir:
            shutil.rmtree(workdir_root, ignore_errors=True)
        raise
    if config.isolation == Isolation.NONE:
        print(f"warning: {sandbox.describe(limits.sandbox)}", file=sys.stderr, flush=True)
    runtime: Any = None
    server: grpc.aio.Server | None = None
    try:
        address = config.ray_address
        if address is None:
            head_gpus = 0 if config.workers else config.num_gpus
            head = await asyncio.to_thread(
                heads.start_head, config.num_cpus, head_gpus, config.gpu_type if head_gpus else None,
                auth_token=secrets.token_hex(16))
            _say(f"ray head session {head.pid}")
            for i in range(config.workers):
                workers.append(await asyncio.to_thread(
                    heads.start_worker, head,
                    config.worker_cpus if config.worker_cpus is not None else config.num_cpus,
                    config.num_gpus if i == 0 else 0, config.gpu_type if i == 0 else None))
                _say(f"ray worker session {workers[-1].pid}")
            os.environ.update(head.env())
            address = head.address
        # Ray reads its auth settings from the environment when it is first imported: nothing here
        # imports it before this point, after head.env() is in place.
        rayapi.attach(address, SITE_NAMESPACE)
        if workers:
            await _wait_for_nodes(1 + len(workers))
        from godel_ray.agents.runtime import AgentRuntime

        runtime = AgentRuntime(config.name, workdir_root, region=config.region,
                               cost_per_hour=config.cost_per_hour, max_agents=config.max_agents,
                               warm_pool_size=config.warm_pool_size, limits=limits)
        runtime.pool.start()
        server, port, health = await build_server(runtime, token=token, host=config.host, port=config.port,
                                                  credentials=credentials, cluster_id=config.name)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        _say(f"listening on {format_hostport(config.host, port)}")
        await stop.wait()
        _say("shutting down")
        await health.enter_graceful_shutdown()
        stopping = asyncio.create_task(server.stop(SHUTDOWN_GRACE_S))  # stops accepting at once
        runtime, closing = None, runtime
        await closing.close()
        await stopping
        server = None
    finally:
        if server is not None:
            await server.stop(None)
        if runtime is not None:
            await runtime.close()
        rayapi.detach()
        for worker in workers:
            await asyncio.to_thread(worker.stop)
        if head is not None:
            await asyncio.to_thread(head.stop)
        if own_workdir:
            shutil.rmtree(workdir_root, ignore_errors=True)


async def _wait_for_nodes(count: int, timeout_s: float = NODES_READY_TIMEOUT_S) -> None:
    """Wait until Ray lists ``count`` alive nodes (the head and the workers started here)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        with rayapi.mapped("ray cluster"):
            alive = len(await asyncio.to_thread(rayapi.alive_node_resources))
        if alive >= count:
            return
        if loop.time() > deadline:
            raise GodelError(f"only {alive} of the {count} Ray nodes started here joined within {timeout_s:g} s")
        await asyncio.sleep(NODES_POLL_S)


def run(config: SiteConfig) -> int:
    """Sync entry point for the CLI: serve until a signal; return the exit code (0)."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(serve(config))
    return 0


__all__ = ["SiteConfig", "agent_limits", "check_safety", "run", "serve"]
