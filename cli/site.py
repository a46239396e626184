"""``swarmctl site``: run a site server on this machine. Parsing and rendering only."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from godel_cli.render import fail

app = typer.Typer(help="Run a site: a Ray cluster plus the gRPC server the federation talks to.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


@app.command()
def serve(
    port: Annotated[int | None, typer.Option("--port", help="Port to bind (0: any free port). Default 50051.")] = None,
    auth_token_file: Annotated[Path | None, typer.Option(
        "--auth-token-file", help="File holding the bearer token (mode 600).")] = None,
    host: Annotated[str | None, typer.Option("--host", help="Address to bind. Default 127.0.0.1.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Site name (reported in heartbeats).")] = None,
    region: Annotated[str | None, typer.Option("--region", help="Region reported to the federation.")] = None,
    cost: Annotated[float | None, typer.Option("--cost", help="Cost in USD per hour.")] = None,
    max_agents: Annotated[int | None, typer.Option("--max-agents", help="Most agents hosted at once.")] = None,
    warm_pool_size: Annotated[int | None, typer.Option(
        "--warm-pool-size", help="Idle pre-started agents kept ready (default resources).")] = None,
    ray_address: Annotated[str | None, typer.Option(
        "--ray-address", help="Attach to this Ray cluster instead of starting one.")] = None,
    num_cpus: Annotated[int | None, typer.Option("--num-cpus", help="CPUs of the Ray head started here.")] = None,
    num_gpus: Annotated[int | None, typer.Option("--num-gpus", help="GPUs of the Ray head started here.")] = None,
    gpu_type: Annotated[str | None, typer.Option("--gpu-type", help="GPU type, e.g. nvidia-a100.")] = None,
    workers: Annotated[int | None, typer.Option(
        "--workers", help="Also start N Ray worker nodes here, joined to the head; the GPUs go on the first.")] = None,
    worker_cpus: Annotated[int | None, typer.Option(
        "--worker-cpus", help="CPUs of each worker node (default: --num-cpus).")] = None,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="Server certificate (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="Server private key (PEM).")] = None,
    tls_client_ca: Annotated[Path | None, typer.Option(
        "--tls-client-ca", help="CA of client certificates: require mTLS.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="Site config YAML; flags override it.")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Allow a non-loopback bind without TLS.")] = False,
    isolation: Annotated[str | None, typer.Option(
        "--isolation", help="sandbox (default): each command in a bubblewrap sandbox with limits; none: "
        "agents run as this user with its files and environment (docs/security.md).")] = None,
) -> None:
    """Serve agents on a Ray cluster; prints 'listening on HOST:PORT' once ready; stops on SIGTERM."""
    from godel_ray.errors import GodelError
    from godel_ray.site.serve import SiteConfig, run

    try:
        site_config = SiteConfig.load(
            config, port=port, auth_token_file=_str(auth_token_file), host=host, name=name, region=region,
            cost_per_hour=cost, max_agents=max_agents, warm_pool_size=warm_pool_size,
            ray_address=ray_address, num_cpus=num_cpus,
            num_gpus=num_gpus, gpu_type=gpu_type, workers=workers, worker_cpus=worker_cpus,
            tls_cert=_str(tls_cert), tls_key=_str(tls_key), tls_client_ca=_str(tls_client_ca),
            insecure=insecure or None, isolation=isolation)
        code = run(site_config)
    except GodelError as exc:
        fail(str(exc))
    raise typer.Exit(code)
