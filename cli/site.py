"""``swarmctl site``: run a site server on this machine. Rendering and parsing only."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Run a site: a Ray cluster plus the gRPC server the federation talks to.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@app.command()
def serve(
    port: Optional[int] = typer.Option(None, "--port", help="Port to bind (0: any free port). Default 50051."),
    auth_token_file: Optional[Path] = typer.Option(
        None, "--auth-token-file", help="File holding the bearer token (mode 600)."),
    host: Optional[str] = typer.Option(None, "--host", help="Address to bind. Default 127.0.0.1."),
    name: Optional[str] = typer.Option(None, "--name", help="Site name (reported in heartbeats)."),
    region: Optional[str] = typer.Option(None, "--region", help="Region reported to the federation."),
    cost: Optional[float] = typer.Option(None, "--cost", help="Cost in USD per hour."),
    max_agents: Optional[int] = typer.Option(None, "--max-agents", help="Most agents hosted at once."),
    ray_address: Optional[str] = typer.Option(
        None, "--ray-address", help="Attach to this Ray cluster instead of starting one."),
    num_cpus: Optional[float] = typer.Option(None, "--num-cpus", help="CPUs of the Ray head started here."),
    num_gpus: Optional[int] = typer.Option(None, "--num-gpus", help="GPUs of the Ray head started here."),
    gpu_type: Optional[str] = typer.Option(None, "--gpu-type", help="GPU type, e.g. nvidia-a100."),
    tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="Server certificate (PEM)."),
    tls_key: Optional[Path] = typer.Option(None, "--tls-key", help="Server private key (PEM)."),
    tls_client_ca: Optional[Path] = typer.Option(
        None, "--tls-client-ca", help="CA for client certificates: require mTLS."),
    config: Optional[Path] = typer.Option(None, "--config", help="Site config YAML; flags override it."),
    insecure: bool = typer.Option(False, "--insecure", help="Allow a non-loopback bind without TLS."),
) -> None:
    """Serve agents on a Ray cluster; prints 'listening on HOST:PORT' once ready; stops on SIGTERM."""
    from godel_ray.errors import GodelError
    from godel_ray.rpc.server import SiteConfig, run

    def s(p: Optional[Path]) -> Optional[str]:
        return None if p is None else str(p)

    try:
        site_config = SiteConfig.load(
            config, port=port, auth_token_file=s(auth_token_file), host=host, name=name, region=region,
            cost_per_hour=cost, max_agents=max_agents, ray_address=ray_address, num_cpus=num_cpus,
            num_gpus=num_gpus, gpu_type=gpu_type, tls_cert=s(tls_cert), tls_key=s(tls_key),
            tls_client_ca=s(tls_client_ca), insecure=insecure or None)
        code = run(site_config)
    except GodelError as exc:
        _fail(str(exc))
    raise typer.Exit(code)
