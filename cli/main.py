"""swarmctl entry point: one typer sub-app per command group; rendering only, no logic."""

from __future__ import annotations

import typer

app = typer.Typer(name="swarmctl", help="Federate long-lived agents across Ray clusters.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _register() -> None:
    # Each group lives in its own module; import here so `swarmctl --help` lists them all.
    from godel_cli import agent, cluster, controlplane, demo, events, site

    controlplane.register(app)
    app.add_typer(site.app, name="site")
    app.add_typer(cluster.app, name="cluster")
    app.add_typer(agent.app, name="agent")
    events.register(app)
    demo.register(app)


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
