"""``swarmctl up | down | status | env``: start, stop and describe the control plane.

Rendering only: the work is ``godel_ray.control.controlplane`` (imported inside each command, so
``swarmctl --help`` and the read-only commands never load Ray).
"""

from __future__ import annotations

import shlex
from typing import Annotated

import typer
from godel_cli import render, safetext
from godel_cli.render import JsonOption, StateDirOption
from rich.text import Text


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("down")(down)
    app.command("status")(status)
    app.command("env")(env)


@render.guarded
def up(state_dir: StateDirOption = None,
       num_cpus: Annotated[int | None, typer.Option("--num-cpus", min=0, help="CPUs of the local Ray cluster.")] = None,
       num_gpus: Annotated[int, typer.Option("--num-gpus", min=0, help="GPUs of the local Ray cluster.")] = 0,
       gpu_type: Annotated[str | None, typer.Option("--gpu-type", help="Accelerator type of those GPUs.")] = None,
       json_out: JsonOption = False) -> None:
    """Start the control plane (or attach to the one already running)."""
    from godel_ray.control import controlplane

    if json_out:
        info = controlplane.up(state_dir, num_cpus=num_cpus, num_gpus=num_gpus, gpu_type=gpu_type)
        render.emit_json(info)
        return
    if render.interactive():
        with render.err().status("starting the control plane (Ray head + balancer)..."):
            info = controlplane.up(state_dir, num_cpus=num_cpus, num_gpus=num_gpus, gpu_type=gpu_type)
    else:
        info = controlplane.up(state_dir, num_cpus=num_cpus, num_gpus=num_gpus, gpu_type=gpu_type)
    verb = "started" if info.started else "already running"
    render.say("control plane ", (verb, "bold green"), f" at {info.address}")
    _print_info(info)


@render.guarded
def down(state_dir: StateDirOption = None, json_out: JsonOption = False) -> None:
    """Stop the control plane that `swarmctl up` started. State stays on disk for the next `up`."""
    from godel_ray.control import controlplane

    stopped = controlplane.down(state_dir)
    if json_out:
        render.emit_json({"stopped": stopped})
    else:
        render.say("control plane stopped" if stopped else "no control plane was running")


@render.guarded
def status(state_dir: StateDirOption = None, json_out: JsonOption = False) -> None:
    """Whether the control plane runs, where, and how many clusters and agents it holds (no Ray)."""
    from godel_ray.control import controlplane

    info = controlplane.status(state_dir)
    if json_out:
        render.emit_json(info)
        return
    state = Text("running", style="bold green") if info.running else Text("not running", style="bold red")
    render.say("control plane ", state)
    _print_info(info)


@render.guarded
def env(state_dir: StateDirOption = None, json_out: JsonOption = False) -> None:
    """Print the environment a `ray job submit` needs: eval "$(swarmctl env)"."""
    from godel_ray.control import controlplane

    values = controlplane.env_for_clients(state_dir)
    if json_out:
        render.emit_json(values)
        return
    for key, value in values.items():
        print(f"export {key}={shlex.quote(value)}")


def _print_info(info: object) -> None:
    table = safetext.grid()
    for key in ("state_dir", "address", "dashboard_url", "ray_pid", "clusters", "agents"):
        value = getattr(info, key, "")
        if value not in ("", 0, None) or key in ("clusters", "agents"):
            table.add_row(key.replace("_", " "), str(value))
    render.out().print(table)
