"""swarmctl's tables and lines, one per kind of thing shown (clusters, agents, placements, ...).

Every cell goes through ``godel_cli.safetext`` (plain text, control characters escaped), so a value
that a user or a site wrote can neither break the table nor reach the terminal raw.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from godel_cli import render
from godel_cli.safetext import (
    CLUSTER_STATUS_STYLE,
    agent_status,
    ago,
    cluster_status,
    cost,
    grid,
    kv,
    latency,
    line,
    new_table,
    plain,
    seconds,
    size,
)
from rich.table import Table
from rich.text import Text

from godel_ray.models import (
    Agent,
    ClusterHealthState,
    ClusterInfo,
    ClusterStats,
    ClusterStatus,
    FederationEvent,
    JournalEntry,
    Migration,
    MigrationPhase,
    PlacementDecision,
)


def clusters_table(infos: Iterable[ClusterInfo]) -> Table:
    table = new_table("clusters")
    for column in ("ID", "ENDPOINT", "REGION", "STATUS", "GPUS", "AGENTS", "COST", "RTT", "LAST HEARTBEAT"):
        table.add_column(column, no_wrap=column in ("ID", "STATUS"))
    for info in infos:
        c, h = info.cluster, info.health
        gpus = ",".join(c.capabilities.gpu_types or h.capacity.gpu_types) or ("yes" if c.capabilities.gpu else "-")
        table.add_row(c.id, c.endpoint or "(this ray cluster)", c.region, cluster_status(h.status), gpus,
                      f"{info.agents}/{c.max_agents}", cost(c.cost_per_hour), latency(h.rtt_ms),
                      ago(h.last_success_at))
    return table


def health_table(states: Iterable[ClusterHealthState]) -> Table:
    table = new_table("cluster health")
    for column in ("CLUSTER", "STATUS", "RTT", "FAILS", "OKS", "LAST OK", "FREE CPUS", "FREE GPUS", "LAST ERROR"):
        table.add_column(column)
    for s in states:
        free_gpus = ",".join(f"{t}:{n:g}" for t, n in s.capacity.free_gpus.items()) or "-"
        table.add_row(s.cluster_id, cluster_status(s.status), latency(s.rtt_ms), str(s.consecutive_failures),
                      str(s.consecutive_successes), ago(s.last_success_at), f"{s.capacity.free_cpus:g}",
                      free_gpus, plain(s.last_error or "", "red"))
    return table


def stats_table(stats: Iterable[ClusterStats]) -> Table:
    table = new_table("cluster stats")
    for column in ("CLUSTER", "STATUS", "LOAD", "AGENTS", "CPUS FREE/TOTAL", "GPUS", "RTT"):
        table.add_column(column)
    for s in stats:
        load_style = "green" if s.load < 0.5 else "yellow" if s.load < 0.8 else "red"
        table.add_row(s.cluster_id, cluster_status(s.status), Text(f"{s.load:.0%}", style=load_style),
                      kv({k: str(v) for k, v in s.agents_by_status.items()}),
                      f"{s.capacity.free_cpus:g}/{s.capacity.total_cpus:g}",
                      f"{sum(s.capacity.free_gpus.values()):g}/{s.capacity.total_gpus:g}", latency(s.rtt_ms))
    return table


def agents_table(agents: Iterable[Agent]) -> Table:
    table = new_table("agents")
    for column in ("ID", "CLUSTER", "STATUS", "MODEL", "LABELS", "GPUS", "EPOCH", "CREATED"):
        table.add_column(column, no_wrap=column in ("ID", "STATUS"))
    for a in agents:
        gpus = f"{a.config.num_gpus}x{a.config.gpu_type or 'any'}" if a.config.needs_gpu else "-"
        table.add_row(a.id, a.cluster_id or "-", agent_status(a.status), a.model, kv(a.labels), gpus,
                      str(a.epoch), ago(a.created_at))
    return table


def agent_panel(agent: Agent) -> Table:
    table = grid()
    c = agent.config
    rows: list[tuple[str, str | Text]] = [
        ("id", agent.id), ("cluster", agent.cluster_id or "-"), ("status", agent_status(agent.status)),
        ("reason", agent.status_reason or "-"), ("model", c.model), ("labels", kv(c.labels)),
        ("env", ",".join(f"{k}=***" for k in c.env) or "-"),
        ("resources", f"{c.cpus:g} cpu" + (f", {c.num_gpus} gpu {c.gpu_type or ''}".rstrip() if c.needs_gpu else "")),
        ("timeout", seconds(c.timeout_s) if c.timeout_s else "none"), ("restart", c.restart_policy.value),
        ("epoch", str(agent.epoch)), ("created", ago(agent.created_at)), ("node", agent.node_id or "-"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


def placement_table(decision: PlacementDecision) -> Table:
    """SkyPilot-optimizer style: every candidate with its factor scores, the chosen one marked."""
    factors = sorted({name for c in decision.candidates for name in c.factors})
    table = new_table("placement candidates")
    table.add_column("")
    table.add_column("CLUSTER", no_wrap=True)
    for name in factors:
        table.add_column(name.upper(), justify="right")
    table.add_column("TOTAL", justify="right")
    for c in sorted(decision.candidates, key=lambda c: (-c.score, c.cluster_id)):
        chosen = c.cluster_id == decision.chosen
        table.add_row(Text("✔", style="bold green") if chosen else "",
                      plain(c.cluster_id, "bold green" if chosen else ""),
                      *(f"{c.factors[n]:.1f}" if n in c.factors else "-" for n in factors),
                      Text(f"{c.score:.1f}", style="bold" if chosen else ""))
    return table


def rejections_table(decision: PlacementDecision) -> Table:
    table = new_table("rejected")
    table.add_column("CLUSTER", no_wrap=True)
    table.add_column("REASON")
    for cluster_id, reason in sorted(decision.rejections.items()):
        table.add_row(cluster_id, plain(reason, "red"))
    return table


def regions_table(regions: dict[str, list[str]], infos: Iterable[ClusterInfo]) -> Table:
    """Clusters by region, each id coloured by its status."""
    status = {info.cluster.id: info.health.status for info in infos}
    table = new_table("regions")
    table.add_column("REGION")
    table.add_column("CLUSTERS")
    for region, ids in regions.items():
        table.add_row(region, Text(", ").join(
            plain(cid, CLUSTER_STATUS_STYLE.get(status.get(cid, ClusterStatus.OFFLINE), "")) for cid in ids))
    return table


def print_placement(decision: PlacementDecision) -> None:
    console = render.out()
    if decision.candidates:
        console.print(placement_table(decision))
    if decision.rejections:
        console.print(rejections_table(decision))
    if decision.chosen:
        console.print(line("chosen: ", (decision.chosen, "bold green"),
                           f" (rule {decision.rule or '-'}, priority {decision.priority.value})"))
    else:
        console.print(Text("no cluster fits", style="bold red"))


MIGRATION_DONE = frozenset({MigrationPhase.COMPLETED, MigrationPhase.ROLLED_BACK, MigrationPhase.FAILED})


def migration_style(phase: MigrationPhase) -> str:
    return {MigrationPhase.COMPLETED: "green", MigrationPhase.ROLLED_BACK: "yellow",
            MigrationPhase.FAILED: "red"}.get(phase, "cyan")


def migrations_table(migrations: Iterable[Migration]) -> Table:
    table = new_table("migrations")
    for column in ("ID", "FROM", "TO", "PHASE", "REASON", "EPOCH", "BYTES", "DOWNTIME", "STARTED", "ERROR"):
        table.add_column(column)
    for m in migrations:
        table.add_row(m.id, m.source, m.target, Text(m.phase.value, style=migration_style(m.phase)), m.reason,
                      f"{m.epoch_from}→{m.epoch_to}", size(m.bytes_moved), seconds(m.downtime_s),
                      ago(m.started_at), plain(m.error, "red"))
    return table


def journal_table(entries: Iterable[JournalEntry]) -> Table:
    table = new_table("journal")
    for column in ("SEQ", "STARTED", "DURATION", "EXIT", "COMMAND"):
        table.add_column(column)
    for e in entries:
        if e.timed_out:
            code = Text("timeout", style="red")
        elif e.exit_code is None:
            code = Text("running", style="cyan")
        else:
            code = Text(str(e.exit_code), style="green" if e.exit_code == 0 else "red")
        table.add_row(str(e.seq), time.strftime("%H:%M:%S", time.localtime(e.started_at)), seconds(e.duration_s),
                      code, e.command)
    return table


def event_line(event: FederationEvent) -> Text:
    stamp = time.strftime("%H:%M:%S", time.localtime(event.ts))
    style = {"cluster": "blue", "migration": "cyan", "agent": "green", "command": ""}.get(event.kind.value, "")
    parts = [event.cluster_id and f"cluster={event.cluster_id}", event.agent_id and f"agent={event.agent_id}",
             kv(event.data) if event.data else ""]
    return line((f"{event.seq:>6} ", "dim"), f"{stamp} ", (f"{event.type:<22}", style),
                " ".join(p for p in parts if p))


__all__ = ["MIGRATION_DONE", "agent_panel", "agents_table", "clusters_table", "event_line", "health_table",
           "journal_table", "migration_style", "migrations_table", "placement_table", "print_placement",
           "regions_table", "rejections_table", "stats_table"]
