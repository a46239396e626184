"""`swarmctl demo`: the whole federation story on this machine (logic in godel_ray.demo)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        keep: bool = typer.Option(False, "--keep", help="Leave the control plane and sites running."),
        state_dir: str = typer.Option(None, "--state-dir", help="State dir (default: a fresh temp dir)."),
    ) -> None:
        """Start a control plane and two sites here, show placement, streaming, migration and
        failover with real operations, then clean up."""
        from godel_ray.demo import run_demo

        raise typer.Exit(run_demo(keep=keep, state_dir=state_dir))
