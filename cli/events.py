"""``swarmctl events [--follow] [--since N]``: the federation's event log, read from the state store.

No Ray: ``--follow`` polls the store (the balancer writes every event before it answers).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer
from godel_cli import render
from godel_cli.render import JsonOption, StateDirOption

from godel_ray.models import FederationEvent

if TYPE_CHECKING:
    from godel_ray.client.proxy import StateReader

FOLLOW_POLL_S = 0.5
PAGE = 1000


def register(app: typer.Typer) -> None:
    app.command("events")(events)


@render.guarded
def events(follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events until Ctrl-C.")] = False,
           since: Annotated[int, typer.Option("--since", min=0, help="Only events after this sequence number.")] = 0,
           state_dir: StateDirOption = None, json_out: JsonOption = False) -> None:
    """Cluster, agent, command and migration events (JSON: an array; with --follow, one object per line)."""
    from godel_ray.client.proxy import StateReader

    reader = StateReader(state_dir)
    if not follow:
        batch = _all_since(reader, since)
        if json_out:
            render.emit_json(batch)
        else:
            for event in batch:
                render.out().print(render.event_line(event))
        return
    cursor = since
    while True:
        batch = reader.events(cursor, limit=PAGE)
        for event in batch:
            if json_out:
                render.emit_json(event, compact=True)
            else:
                render.out().print(render.event_line(event))
            cursor = max(cursor, event.seq)
        if len(batch) < PAGE:
            time.sleep(FOLLOW_POLL_S)


def _all_since(reader: StateReader, since: int) -> list[FederationEvent]:
    out: list[FederationEvent] = []
    cursor = since
    while True:
        batch = reader.events(cursor, limit=PAGE)
        out.extend(batch)
        if len(batch) < PAGE:
            return out
        cursor = batch[-1].seq
