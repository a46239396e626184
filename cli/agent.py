"""``swarmctl agent ...``: spawn agents, run commands in them, and look at them.

Read-only commands (list, status, explain) read the state store through ``StateReader`` and never
load Ray; spawn, exec, kill and logs go through ``connect()``.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from godel_cli import render, safetext, tables
from godel_cli.render import JsonOption, StateDirOption

from godel_ray.models import OutputStream

if TYPE_CHECKING:
    from godel_ray.client.proxy import TransparentClusterProxy
    from godel_ray.client.reader import StateReader

TIMED_OUT_EXIT_CODE = 124  # as timeout(1)

app = typer.Typer(help="Spawn agents, run commands in them, inspect them.", no_args_is_help=True)


@app.command("spawn")
@render.guarded
def spawn(model: Annotated[str | None, typer.Option("--model", help="Model name handed to the agent.")] = None,
          label: Annotated[list[str] | None, typer.Option("--label", "-l", help="key=value (repeatable).")] = None,
          env: Annotated[list[str] | None, typer.Option(
              "--env", "-e", help="NAME=value (repeatable). Visible in `ps`: use --env-file for secrets.")] = None,
          env_file: Annotated[list[Path] | None, typer.Option(
              "--env-file", help="File of NAME=value lines (# comments and blank lines skipped; values "
              "literal, as docker's --env-file; repeatable; --env wins). Refused if group or others can "
              "access it: chmod 600.")] = None,
          timeout: Annotated[float | None, typer.Option("--timeout", help="Lifetime in seconds.")] = None,
          gpu: Annotated[bool, typer.Option("--gpu", help="Needs a GPU.")] = False,
          gpu_type: Annotated[str | None, typer.Option("--gpu-type", help="e.g. nvidia-a100 (implies --gpu).")] = None,
          gpu_count: Annotated[int | None, typer.Option("--gpu-count")] = None,
          cpus: Annotated[float | None, typer.Option("--cpus")] = None,
          cluster: Annotated[str | None, typer.Option("--cluster", help="Pin to this cluster id.")] = None,
          idempotency_key: Annotated[str | None, typer.Option("--idempotency-key")] = None,
          restart_policy: Annotated[str | None, typer.Option("--restart-policy", help="never|checkpoint")] = None,
          checkpoint_interval: Annotated[float | None, typer.Option("--checkpoint-interval", help="Seconds.")] = None,
          priority: Annotated[str | None, typer.Option("--priority", help="latency|cost|availability|gpu")] = None,
          region: Annotated[str | None, typer.Option("--region", help="Preferred region.")] = None,
          unshare_net: Annotated[bool, typer.Option(
              "--unshare-net", help="No network for the agent's commands (sandbox only).")] = False,
          memory_mb: Annotated[int | None, typer.Option("--memory-mb", help="Memory limit (MiB).")] = None,
          max_processes: Annotated[int | None, typer.Option(
              "--max-processes", help="Processes and threads at once.")] = None,
          cpu_time: Annotated[float | None, typer.Option("--cpu-time", help="CPU seconds per process.")] = None,
          max_open_files: Annotated[int | None, typer.Option("--max-open-files")] = None,
          workdir_mb: Annotated[int | None, typer.Option("--workdir-mb", help="Workdir size limit (MiB).")] = None,
          state_dir: StateDirOption = None, json_out: JsonOption = False) -> None:
    """Spawn an agent; the balancer places it (see `swarmctl agent explain ID`).

    Limits not given take the cluster's defaults (docs/security.md).
    """
    from godel_cli.envfile import read_env_file

    from godel_ray import inputs
    from godel_ray.errors import GodelError

    env_items = [item for path in env_file or [] for item in read_env_file(path)] + (env or [])
    limits = {k: v for k, v in (("memory_mb", memory_mb), ("processes", max_processes), ("cpu_time_s", cpu_time),
                                ("open_files", max_open_files), ("workdir_mb", workdir_mb)) if v is not None}
    spawn_config = inputs.build_spawn_config(
        model=model, labels=inputs.parse_labels(label), env=inputs.parse_env(env_items), timeout_s=timeout,
        requires_gpu=gpu, gpu_type=gpu_type, gpu_count=gpu_count, cpus=cpus, cluster=cluster,
        idempotency_key=idempotency_key, restart_policy=restart_policy, checkpoint_interval_s=checkpoint_interval,
        priority=priority, preferred_region=region, limits=limits or None, unshare_net=unshare_net or None)
    proxy = _connect(state_dir)
    agent = proxy.spawn(spawn_config)
    if json_out:
        render.emit_json(agent)
        return
    try:
        rule = proxy.explain(agent.id).rule
    except GodelError:  # the rule is a courtesy; the spawn itself succeeded
        rule = ""
    render.say("spawned ", (agent.id, "bold"), " on ", (agent.cluster_id, "bold green"), f" ({rule})" if rule else "")


@app.command("exec")
@render.guarded
def exec_(agent_id: Annotated[str, typer.Argument(metavar="AGENT_ID")],
          command: Annotated[list[str], typer.Argument(
              metavar="-- CMD...", help="One argument: a shell line. Several: a command and its arguments.")],
          timeout: Annotated[float | None, typer.Option("--timeout", help="Command timeout in seconds.")] = None,
          state_dir: StateDirOption = None, json_out: JsonOption = False) -> None:
    """Run a shell command in the agent's directory; stream its output; exit with its exit code.

    As kubectl exec and docker exec: several arguments after `--` are a command and its arguments,
    each passed as it is (quoted for the agent's shell), so `-- sh -c "a; b"` runs `sh` with the two
    arguments `-c` and `a; b`. One argument is a shell line, so `-- 'make test && ls'` uses the
    shell's `&&`, pipes, globs and $VARS.
    """
    text = shell_line(command)
    proxy = _connect(state_dir)
    if json_out:
        result = proxy.exec(agent_id, text, timeout_s=timeout)
        render.emit_json(result)
        raise typer.Exit(_shell_status(result.exit_code))
    exit_code = 1
    for chunk in proxy.exec_stream(agent_id, text, timeout_s=timeout):
        if chunk.data:
            stream = sys.stderr if chunk.stream == OutputStream.STDERR else sys.stdout
            stream.write(chunk.data)
            stream.flush()
        if chunk.result is not None:
            exit_code = _shell_status(chunk.result.exit_code)
            if chunk.result.timed_out:
                render.fail(f"command timed out in {agent_id}", TIMED_OUT_EXIT_CODE)
            if chunk.result.truncated:
                sys.stderr.write(f"warning: output of the command in {safetext.clean(agent_id)} was truncated\n")
    raise typer.Exit(exit_code)


def shell_line(argv: list[str]) -> str:
    """What the agent's shell runs for ``exec -- ARGV``: one argument as it is (a shell line), several
    quoted (``shlex.join``) so that each reaches the command as one argument."""
    return argv[0] if len(argv) == 1 else shlex.join(argv)


def _shell_status(exit_code: int) -> int:
    """A command killed by signal N reports -N; a shell reports 128+N."""
    return 128 - exit_code if exit_code < 0 else exit_code


@app.command("list")
@render.guarded
def list_(status: Annotated[str | None, typer.Option("--status", help="pending|running|migrating|...")] = None,
          label: Annotated[list[str] | None, typer.Option("--label", "-l", help="key=value (repeatable, all must match).")] = None,
          cluster: Annotated[str | None, typer.Option("--cluster")] = None,
          model: Annotated[str | None, typer.Option("--model")] = None,
          state_dir: StateDirOption = None, json_out: JsonOption = False) -> None:
    """Agents the federation knows, filtered (no Ray)."""
    from godel_ray.errors import InvalidArgument
    from godel_ray.inputs import parse_labels
    from godel_ray.models import AgentStatus

    if status is not None and status not in {s.value for s in AgentStatus}:
        raise InvalidArgument(f"unknown status {status!r}: use one of {', '.join(s.value for s in AgentStatus)}")
    agents = _reader(state_dir).agents(status=status, labels=parse_labels(label) or None, cluster=cluster,
                                       model=model)
    render.emit_json(agents) if json_out else render.out().print(tables.agents_table(agents))


@app.command("status")
@render.guarded
def status(agent_id: Annotated[str, typer.Argument(metavar="ID")],
           state_dir: StateDirOption = None, json_out: JsonOption = False) -> None:
    """One agent: where it runs, its state, and its migration history (no Ray)."""
    reader = _reader(state_dir)
    agent = reader.agent(agent_id)
    migrations = reader.migrations(agent_id)
    if json_out:
        data = render.jsonable(agent)
        data["migrations"] = render.jsonable(migrations)
        render.emit_json(data)
        return
    render.out().print(tables.agent_panel(agent))
    if migrations:
        render.out().print(tables.migrations_table(migrations))


@app.command("kill")
@render.guarded
def kill(agent_id: Annotated[str, typer.Argument(metavar="ID")],
         state_dir: StateDirOption = None, json_out: JsonOption = False) -> None:
    """Stop an agent and free its resources."""
    agent = _connect(state_dir).kill(agent_id)
    if json_out:
        render.emit_json(agent)
    else:
        render.say(f"{agent.id} ", safetext.agent_status(agent.status))


@app.command("explain")
@render.guarded
def explain(agent_id: Annotated[str, typer.Argument(metavar="ID")],
            state_dir: StateDirOption = None, json_out: JsonOption = False) -> None:
    """Why the agent went where it went: every candidate's factor scores and every rejection, then
    every move since with its reason (manual, drain, failover, fail_back) and its home (no Ray)."""
    reader = _reader(state_dir)
    decision = reader.decision(agent_id)
    if json_out:
        render.emit_json(decision)
        return
    tables.print_placement(decision)
    for m in reader.migrations(agent_id):
        render.say(f"moved {m.source} → {m.target}: {m.reason}, {m.phase.value}"
                   + (f" ({m.error})" if m.error else ""))
    agent = reader.agent(agent_id)
    if agent.home_cluster_id:
        render.say(f"home: {agent.home_cluster_id} (fail_back {agent.config.fail_back or 'as its home cluster says'})")


@app.command("logs")
@render.guarded
def logs(agent_id: Annotated[str, typer.Argument(metavar="ID")],
         state_dir: StateDirOption = None, json_out: JsonOption = False) -> None:
    """The agent's command journal: every command it ran, with exit code and duration."""
    entries = _connect(state_dir).journal(agent_id)
    render.emit_json(entries) if json_out else render.out().print(tables.journal_table(entries))


def _reader(state_dir: str | None) -> StateReader:
    from godel_ray.client.reader import StateReader

    return StateReader(state_dir)


def _connect(state_dir: str | None) -> TransparentClusterProxy:
    from godel_ray.client.proxy import connect

    return connect(state_dir)
