"""``swarmctl events [--follow] [--since N]``: the federation's event log, read from the state store.

No Ray: ``--follow`` polls the store (the balancer writes every event before it answers).
"""

from __future__ import annotations

from typing import Annotated

import typer
from godel_cli import render, tables
from godel_cli.render import JsonOption, StateDirOption


def register(app: typer.Typer) -> None:
    app.command("events")(events)


@render.guarded
def events(follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events until Ctrl-C.")] = False,
           since: Annotated[int, typer.Option("--since", min=0, help="Only events after this sequence number.")] = 0,
           state_dir: StateDirOption = None, json_out: JsonOption = False) -> None:
    """Cluster, agent, command and migration events (JSON: an array; with --follow, one object per line)."""
    from godel_ray.client.reader import StateReader

    log = StateReader(state_dir).tail(since, follow=follow)
    if json_out and not follow:
        render.emit_json(list(log))
        return
    for event in log:
        if json_out:
            render.emit_json(event, compact=True)
        else:
            render.out().print(tables.event_line(event))
