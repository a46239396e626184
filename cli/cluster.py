"""``swarmctl cluster ...``: register, inspect, drain and move work between clusters.

Read-only commands (list, health, stats, regions) read the state store through ``StateReader``
and never load Ray; commands that change something go through ``connect()``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from godel_cli import render, safetext, tables
from godel_cli.render import JsonOption, StateDirOption
from rich.live import Live

from godel_ray.core.migration import freeze_wait_s
from godel_ray.models import Cluster, DrainReport, Migration

if TYPE_CHECKING:
    from godel_ray.client.proxy import TransparentClusterProxy
    from godel_ray.client.reader import StateReader

app = typer.Typer(help="Register and inspect clusters; move agents between them.", no_args_is_help=True)

WATCH_REFRESH_S = 1.0
MIGRATION_POLL_S = 0.2
MIGRATION_WAIT_S = 900.0  # past the move's own busy timeout (added)
WAITING_REPORT_S = 5.0  # how often a move still waiting for its busy agent is said again
BusyOption = Annotated[str, typer.Option(
    "--busy", help="A running command: wait (freeze at the first idle moment, serving commands until then) "
                   "or interrupt (SIGTERM, a grace, SIGKILL).")]
BusyTimeoutOption = Annotated[float | None, typer.Option(
    "--busy-timeout", help="Seconds a move waits for a busy agent to be idle before it rolls back "
                           "(default: $GODEL_MIGRATION_BUSY_TIMEOUT_S or 600).")]


@app.command("add")
@render.guarded
def add(name: Annotated[str | None, typer.Argument(help="Cluster id, e.g. gpu-east.")] = None,
        endpoint: Annotated[str | None, typer.Argument(
            help="host:port, grpc://host:port, grpcs://host:port or https://host:port.")] = None,
        file: Annotated[Path | None, typer.Option("--file", "-f", help="YAML file with one or more clusters.")] = None,
        auth_token_file: Annotated[str | None, typer.Option("--auth-token-file", help="File holding the bearer token.")] = None,
        region: Annotated[str, typer.Option("--region")] = "default",
        gpu: Annotated[bool, typer.Option("--gpu", help="The cluster has GPUs.")] = False,
        gpu_types: Annotated[str | None, typer.Option("--gpu-types", help="Comma-separated GPU types (implies --gpu).")] = None,
        max_agents: Annotated[int, typer.Option("--max-agents")] = 100,
        cost: Annotated[float, typer.Option("--cost", help="USD per hour.")] = 0.0,
        tls_ca: Annotated[str | None, typer.Option("--tls-ca", help="CA bundle to verify the site's certificate.")] = None,
        tls_cert: Annotated[str | None, typer.Option("--tls-cert", help="Client certificate (mTLS).")] = None,
        tls_key: Annotated[str | None, typer.Option("--tls-key", help="Client key (mTLS).")] = None,
        flag: Annotated[list[str] | None, typer.Option("--flag", help="Capability flag (repeatable).")] = None,
        heartbeat_interval: Annotated[float | None, typer.Option("--heartbeat-interval", help="Seconds.")] = None,
        heartbeat_timeout: Annotated[float | None, typer.Option("--heartbeat-timeout", help="Seconds.")] = None,
        grace_period: Annotated[float | None, typer.Option(
            "--grace-period", help="Seconds offline (silent: frozen, partitioned) before failover.")] = None,
        dead_grace_period: Annotated[float | None, typer.Option(
            "--dead-grace-period", help="Seconds offline (connections refused: the site is gone) before failover.")] = None,
        state_dir: StateDirOption = None, json_out: JsonOption = False) -> None:
    """Register a remote cluster (probed with a heartbeat first: nothing is registered if it fails)."""
    from godel_ray import inputs
    from godel_ray.errors import InvalidArgument

    if file is not None:
        if name or endpoint:
            raise InvalidArgument("give either NAME ENDPOINT or -f FILE, not both")
        clusters = inputs.load_cluster_file(file)
    else:
        if not name or not endpoint:
            raise InvalidArgument("missing NAME and ENDPOINT (or -f FILE): "
                                  "swarmctl cluster add gpu-east grpc://10.0.0.5:50051 --auth-token-file F")
        reg = inputs.registration(
            name=name, endpoint=endpoint, auth_token_file=auth_token_file, region=region,
            gpu=gpu, gpu_types=inputs.parse_csv(gpu_types), flags=flag or [], max_agents=max_agents,
            cost_per_hour=cost, tls_ca_file=tls_ca, tls_cert_file=tls_cert, tls_key_file=tls_key,
            heartbeat_interval_s=heartbeat_interval, heartbeat_timeout_s=heartbeat_timeout,
            grace_period_s=grace_period, dead_grace_period_s=dead_grace_period)
        clusters = [reg.to_cluster()]
    registry = _connect(state_dir).registry
    infos = []
    for cluster in clusters:
        info = registry.register(cluster)
        infos.append(info)
        if not json_out:
            _print_registered(cluster, info.health.rtt_ms)
    if json_out:
        render.emit_json(infos[0] if file is None else infos)


def _print_registered(cluster: Cluster, rtt_ms: float | None) -> None:
    caps = ",".join(cluster.capabilities.gpu_types) or ("gpu" if cluster.capabilities.gpu else "cpu")
    render.say("registered ", (cluster.id, "bold"), f" at {cluster.endpoint} ",
               f"(region {cluster.region}, {caps}, rtt ", safetext.latency(rtt_ms), ")")


@app.command("list")
@render.guarded
def list_(state_dir: StateDirOption = None, json_out: JsonOption = False) -> None:
    """Registered clusters with their status, capacity, cost and latency (no Ray)."""
    infos = _reader(state_dir).clusters()
    if json_out:
        render.emit_json(infos)
    else:
        render.out().print(tables.clusters_table(infos))


@app.command("remove")
@render.guarded
def remove(cluster_id: Annotated[str, typer.Argument(metavar="ID")],
           force: Annotated[bool, typer.Option("--force", help="Remove even with agents on it.")] = False,
           state_dir: StateDirOption = None, json_out: JsonOption = False) -> None:
    """Unregister a cluster (refused while agents live there, unless --force)."""
    _connect(state_dir).registry.unregister(cluster_id, force=force)
    if json_out:
        render.emit_json({"removed": cluster_id})
    else:
        render.say(f"removed {cluster_id}")


@app.command("health")
@render.guarded
def health(watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh every second until Ctrl-C.")] = False,
           state_dir: StateDirOption = None, json_out: JsonOption = False) -> None:
    """Heartbeat health of every cluster (no Ray)."""
    reader = _reader(state_dir)
    if not watch:
        states = reader.health()
        render.emit_json(states) if json_out else render.out().print(tables.health_table(states))
        return
    if json_out or not render.interactive():
        while True:  # one document per refresh: JSON lines, or one plain table each time
            states = reader.health()
            if json_out:
                render.emit_json(states, compact=True)
            else:
                render.out().print(tables.health_table(states))
            time.sleep(WATCH_REFRESH_S)
    with Live(tables.health_table(reader.health()), console=render.out(), auto_refresh=False) as live:
        while True:
            time.sleep(WATCH_REFRESH_S)
            live.update(tables.health_table(reader.health()), refresh=True)


@app.command("stats")
@render.guarded
def stats(state_dir: StateDirOption = None, json_out: JsonOption = False) -> None:
    """Load, agents by status and free capacity per cluster (no Ray)."""
    rows = _reader(state_dir).stats()
    render.emit_json(rows) if json_out else render.out().print(tables.stats_table(rows))


@app.command("regions")
@render.guarded
def regions(state_dir: StateDirOption = None, json_out: JsonOption = False) -> None:
    """Clusters grouped by region (no Ray)."""
    reader = _reader(state_dir)
    by_region = reader.regions()
    if json_out:
        render.emit_json(by_region)
    else:
        render.out().print(tables.regions_table(by_region, reader.clusters()))


@app.command("plan")
@render.guarded
def plan(gpu: Annotated[bool, typer.Option("--gpu")] = False,
         gpu_type: Annotated[str | None, typer.Option("--gpu-type")] = None,
         gpu_count: Annotated[int | None, typer.Option("--gpu-count")] = None,
         cpus: Annotated[float | None, typer.Option("--cpus")] = None,
         priority: Annotated[str | None, typer.Option("--priority", help="latency|cost|availability|gpu")] = None,
         region: Annotated[str | None, typer.Option("--region", help="Preferred region.")] = None,
         state_dir: StateDirOption = None, json_out: JsonOption = False) -> None:
    """Where an agent with these needs would go, and why (nothing is spawned)."""
    from godel_ray.inputs import build_spawn_config

    spawn_config = build_spawn_config(requires_gpu=gpu, gpu_type=gpu_type, gpu_count=gpu_count, cpus=cpus,
                                      priority=priority, preferred_region=region)
    decision = _connect(state_dir).registry.plan(spawn_config)
    render.emit_json(decision) if json_out else tables.print_placement(decision)


@app.command("maintenance")
@render.guarded
def maintenance(cluster_id: Annotated[str, typer.Argument(metavar="ID")],
                mode: Annotated[str, typer.Argument(metavar="on|off")],
                state_dir: StateDirOption = None, json_out: JsonOption = False) -> None:
    """Take a cluster out of placement (on) or put it back (off). Heartbeats never clear it."""
    from godel_ray.errors import InvalidArgument

    if mode not in ("on", "off"):
        raise InvalidArgument(f"maintenance mode must be 'on' or 'off', not {mode!r}")
    info = _connect(state_dir).registry.maintenance(cluster_id, mode == "on")
    if json_out:
        render.emit_json(info)
    else:
        render.say(f"{cluster_id} is now ", safetext.cluster_status(info.health.status))


@app.command("drain")
@render.guarded
def drain(cluster_id: Annotated[str, typer.Argument(metavar="ID")],
          wait: Annotated[bool, typer.Option("--wait", help="Wait until every move has ended.")] = False,
          busy: BusyOption = "wait", busy_timeout: BusyTimeoutOption = None,
          state_dir: StateDirOption = None, json_out: JsonOption = False) -> None:
    """Move every agent off a cluster live, then leave it in maintenance (like kubectl drain).

    Each agent is placed by the normal rules (GPU needs honoured); one that cannot be placed stays
    and is listed with the reason (exit code 1). A busy agent (a command running) moves at its
    first idle moment (--busy wait, up to --busy-timeout) or at once (--busy interrupt); with
    --wait the progress shows which agents wait for idle, and for how long."""
    report = _connect(state_dir).registry.drain(cluster_id, wait=False, busy=busy, busy_timeout_s=busy_timeout)
    if wait:
        report = _follow_drain(report, state_dir, show=not json_out)
    if json_out:
        render.emit_json(report)
    else:
        for m in report.migrations:
            render.say(f"{m.agent_id}: {m.source} → {m.target} ({m.phase.value})"
                       + (f": {m.error}" if m.error and wait else ""))
        for agent_id, why in sorted(report.unmovable.items()):
            render.say(f"{agent_id}: stays on {cluster_id}: {why}")
        render.say(f"{cluster_id} is in maintenance; {len(report.migrations)} moving, "
                   f"{len(report.unmovable)} unmovable")
    if report.unmovable or (wait and not report.complete):
        render.fail(f"drain of {cluster_id} is incomplete: {len(report.unmovable)} agent(s) could not be moved")


@app.command("migrate")
@render.guarded
def migrate(agent_id: Annotated[str, typer.Argument(metavar="AGENT_ID")],
            target: Annotated[str, typer.Argument(metavar="TO_CLUSTER")],
            wait: Annotated[bool, typer.Option("--wait", help="Follow the phases until it finishes.")] = False,
            interrupt: Annotated[bool, typer.Option(
                "--interrupt", help="Stop a running command (SIGTERM, a grace, SIGKILL) instead of waiting for "
                                    "the agent to be idle; its caller gets an error naming the new cluster.")] = False,
            busy_timeout: BusyTimeoutOption = None,
            live_process: Annotated[bool, typer.Option(
                "--live-process", help="Move a running command along (CRIU; opt-in): refused with the reason "
                                       "where `criu check` fails or CRIU is missing.")] = False,
            state_dir: StateDirOption = None, json_out: JsonOption = False) -> None:
    """Move a running agent to another cluster; its id and every handle stay valid.

    A busy agent keeps serving commands and is frozen at its first idle moment; past --busy-timeout
    the move rolls back (nothing frozen). --interrupt stops the running command instead."""
    from godel_ray.inputs import move_policy

    move_policy(interrupt=interrupt, live_process=live_process)  # refused before anything starts
    migration = _connect(state_dir).migrate(agent_id, target, wait=False, interrupt=interrupt,
                                            busy_timeout_s=busy_timeout, live_process=live_process)
    if wait:
        migration = _follow_migration(migration, state_dir, show=not json_out)
    if json_out:
        render.emit_json(migration)
    elif not wait:
        render.say(f"migration {migration.id} of {agent_id}: {migration.source} → {migration.target} "
                   f"({migration.phase.value}); follow with `swarmctl agent status {agent_id}`")
    if migration.phase in tables.MIGRATION_DONE and migration.phase.value != "completed":
        render.fail(f"migration {migration.id} {migration.phase.value}: {migration.error or 'no reason recorded'}")


def _follow_migration(migration: Migration, state_dir: str | None, *, show: bool) -> Migration:
    """Poll the state store (no Ray) and print each phase as it is reached, then a summary."""
    reader = _reader(state_dir)
    seen = 0
    said_waiting = -WAITING_REPORT_S
    deadline = time.monotonic() + MIGRATION_WAIT_S + migration.busy_timeout_s
    if show:
        render.say(f"migrating {migration.agent_id}: {migration.source} → {migration.target} ({migration.id})")
    while True:
        current = reader.migration(migration.id) or migration
        if show:
            for stamp in current.phases[seen:]:
                offset = stamp.at - current.started_at
                render.say("  ", (f"{stamp.phase.value:<13}", tables.migration_style(stamp.phase)),
                           f" +{offset:6.2f} s   {safetext.size(current.bytes_moved)}")
            seen = len(current.phases)
            waited = freeze_wait_s(current, time.time())
            if waited is not None and waited - said_waiting >= WAITING_REPORT_S:
                said_waiting = waited
                render.say(f"  waiting for {current.agent_id} to be idle: {safetext.seconds(waited)} "
                           f"(a command runs; new ones are served meanwhile)")
        if current.phase in tables.MIGRATION_DONE:
            break
        if time.monotonic() > deadline:
            render.fail(f"migration {migration.id} still {current.phase.value} after {MIGRATION_WAIT_S:.0f} s; "
                        f"check `swarmctl agent status {migration.agent_id}`")
        time.sleep(MIGRATION_POLL_S)
    if show and current.phase.value == "completed":
        took = (current.finished_at or time.time()) - current.started_at
        render.say(("migrated ", "bold green"), f"{current.agent_id} {current.source} → "
                   f"{current.target}: {safetext.size(current.bytes_moved)} in {took:.2f} s, "
                   f"downtime {safetext.seconds(current.downtime_s)}, "
                   f"epoch {current.epoch_from}→{current.epoch_to}")
    return current


def _follow_drain(report: DrainReport, state_dir: str | None, *, show: bool) -> DrainReport:
    """Poll the state store (no Ray) until every move of the drain ended; say each phase change and,
    every few seconds, the agents whose move still waits for them to be idle."""
    reader = _reader(state_dir)
    deadline = time.monotonic() + MIGRATION_WAIT_S + max((m.busy_timeout_s for m in report.migrations), default=0.0)
    phases: dict[str, str] = {}
    said_waiting = time.monotonic() - WAITING_REPORT_S
    while True:
        now = time.time()
        current = [reader.migration(m.id) or m for m in report.migrations]
        waiting = {m.agent_id: s for m in current if (s := freeze_wait_s(m, now)) is not None}
        if show:
            for m in current:
                if phases.get(m.id) != m.phase.value:
                    phases[m.id] = m.phase.value
                    render.say(f"  {m.agent_id}: ", (m.phase.value, tables.migration_style(m.phase)))
            if waiting and time.monotonic() - said_waiting >= WAITING_REPORT_S:
                said_waiting = time.monotonic()
                render.say("  waiting for idle: " + ", ".join(
                    f"{agent_id} {safetext.seconds(s)}" for agent_id, s in sorted(waiting.items())))
        if all(m.phase in tables.MIGRATION_DONE for m in current):
            return report.model_copy(update={"migrations": current, "waiting_for_idle": waiting})
        if time.monotonic() > deadline:
            running = sorted(m.agent_id for m in current if m.phase not in tables.MIGRATION_DONE)
            render.fail(f"drain of {report.cluster_id}: the moves of {', '.join(running)} have not ended yet; "
                        "check `swarmctl agent status AGENT_ID`")
        time.sleep(MIGRATION_POLL_S)


def _reader(state_dir: str | None) -> StateReader:
    from godel_ray.client.reader import StateReader

    return StateReader(state_dir)


def _connect(state_dir: str | None) -> TransparentClusterProxy:
    from godel_ray.client.proxy import connect

    return connect(state_dir)
