"""``swarmctl demo``: the whole federation story on this one machine, with real operations.

A control plane (its own Ray cluster) and two sites (each its own Ray cluster and site server
process, on loopback): ``gpu-cloud`` with simulated nvidia-a100 GPUs and ``cpu-cheap``. Each step
prints what happened; everything started here is stopped at the end unless ``keep`` is set.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from godel_ray.models import (
    LOCAL_CLUSTER_ID,
    Agent,
    Cluster,
    ClusterCapabilities,
    HealthSettings,
    Migration,
    PlacementDecision,
    RestartPolicy,
    SpawnConfig,
)

RESTORE_TIMEOUT_S = 90.0
# The drain step moves an agent the migration step moved a moment before: no cooldown between moves.
DEMO_MIGRATION_COOLDOWN_S = "0"
# Fail-back in a demo: home again 2 s after it is back in service (the defaults wait minutes).
DEMO_FAIL_BACK = {"GODEL_FAIL_BACK_HYSTERESIS_S": "2", "GODEL_FAIL_BACK_COOLDOWN_S": "0"}
FAIL_BACK_TIMEOUT_S = 90.0
POLL_S = 0.25
# Short health settings so the failover step fits in a demo: offline after ~3 s, restored ~3 s later.
DEMO_HEALTH = HealthSettings(heartbeat_interval_s=1.0, heartbeat_timeout_s=1.0, degraded_after=2,
                             offline_after=3, recover_after=2, grace_period_s=3.0)


@dataclass
class DemoRun:
    state_dir: Path
    keep: bool
    console: Console
    owns_state_dir: bool  # a temp dir we made (removed at the end), not one the user gave
    sites: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def _wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(POLL_S)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")


@contextmanager
def _step(run: DemoRun, title: str) -> Iterator[None]:
    run.console.rule(f"[bold]{title}")
    start = time.monotonic()
    yield
    run.timings[title] = time.monotonic() - start
    run.console.print(f"[dim]({run.timings[title]:.1f}s)[/dim]")


def placement_table(decision: PlacementDecision) -> Table:
    table = Table(title=f"placement: rule={decision.rule}, chosen={decision.chosen}")
    table.add_column("cluster")
    table.add_column("score", justify="right")
    table.add_column("factors")
    table.add_column("verdict")
    for cand in decision.candidates:
        mark = "[green]chosen[/green]" if cand.cluster_id == decision.chosen else "candidate"
        factors = ", ".join(f"{k}={v:.0f}" for k, v in cand.factors.items())
        table.add_row(cand.cluster_id, f"{cand.score:.1f}", factors, mark)
    for cluster_id, reason in decision.rejections.items():
        table.add_row(cluster_id, "-", "", f"[red]rejected[/red]: {reason}")
    return table


def _spawn(run: DemoRun, proxy: Any, config: SpawnConfig, why: str) -> Agent:
    agent: Agent = proxy.spawn(config)
    run.console.print(f"spawned [bold]{agent.id}[/bold] ({why}) on [cyan]{agent.cluster_id}[/cyan]")
    return agent


def _start_sites(run: DemoRun) -> None:
    from godel_ray.site.launcher import start_site

    base = run.state_dir / "sites"
    specs: dict[str, dict[str, Any]] = {
        "gpu-cloud": {"num_cpus": 4, "num_gpus": 2, "gpu_type": "nvidia-a100",
                      "extra": ["--region", "us-east", "--cost", "3.20"]},
        "cpu-cheap": {"num_cpus": 4, "extra": ["--region", "eu-west", "--cost", "0.40"]},
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(start_site, base, name, **spec) for name, spec in specs.items()}
        for name, fut in futures.items():
            run.sites[name] = fut.result()
            run.console.print(f"site [cyan]{name}[/cyan] listening on {run.sites[name].endpoint}")


def _register(run: DemoRun, proxy: Any) -> None:
    gpu = run.sites["gpu-cloud"]
    cheap = run.sites["cpu-cheap"]
    proxy.registry.register(Cluster(
        id="gpu-cloud", endpoint=gpu.endpoint, region="us-east", cost_per_hour=3.20,
        capabilities=ClusterCapabilities(gpu=True, gpu_types=["nvidia-a100"]),
        auth_token_file=str(gpu.token_file), health=DEMO_HEALTH))
    proxy.registry.register(Cluster(
        id="cpu-cheap", endpoint=cheap.endpoint, region="eu-west", cost_per_hour=0.40,
        auth_token_file=str(cheap.token_file), health=DEMO_HEALTH))
    table = Table(title="registered clusters")
    for col in ("cluster", "status", "region", "cost $/h", "gpu types", "max agents"):
        table.add_column(col)
    for info in proxy.registry.list():
        c = info.cluster
        table.add_row(c.id, info.health.status.value, c.region, f"{c.cost_per_hour:.2f}",
                      ",".join(c.capabilities.gpu_types) or "-", str(c.max_agents))
    run.console.print(table)


def _stream(run: DemoRun, proxy: Any, agent_id: str, command: str) -> int:
    run.console.print(f"[dim]$ {command}[/dim]")
    code = 0
    for chunk in proxy.exec_stream(agent_id, command):
        if chunk.result is not None:
            code = chunk.result.exit_code
        elif chunk.data:
            run.console.print(chunk.data, end="", markup=False, highlight=False)
    run.console.print(f"[dim]exit {code}[/dim]")
    return code


def _show_migration(run: DemoRun, mig: Migration) -> None:
    start = mig.phases[0].at if mig.phases else mig.started_at
    for stamp in mig.phases:
        run.console.print(f"  {stamp.phase.value:<13} +{stamp.at - start:6.3f}s")
    downtime = f"{mig.downtime_s * 1000:.0f} ms" if mig.downtime_s is not None else "n/a"
    run.console.print(f"migration {mig.id}: {mig.phase.value}, {mig.bytes_moved} bytes moved, "
                      f"downtime {downtime}")


def run_demo(keep: bool = False, state_dir: str | None = None, console: Console | None = None) -> int:
    """Run the story; return the process exit code."""
    from godel_ray.client.proxy import connect
    from godel_ray.control import controlplane
    from godel_ray.control.migrator import COOLDOWN_ENV

    run = DemoRun(state_dir=Path(state_dir or tempfile.mkdtemp(prefix="godel-demo-")), keep=keep,
                  console=console or Console(), owns_state_dir=state_dir is None)
    ok = False
    try:
        with _step(run, "1. control plane and two sites, each its own Ray cluster"):
            # The control plane's actors read it from the environment that `up` hands its Ray head.
            os.environ.setdefault(COOLDOWN_ENV, DEMO_MIGRATION_COOLDOWN_S)
            for name, value in DEMO_FAIL_BACK.items():
                os.environ.setdefault(name, value)
            info = controlplane.up(run.state_dir, num_cpus=4)
            run.console.print(f"control plane: Ray at {info.address}, state in {run.state_dir}")
            _start_sites(run)
            proxy = connect(run.state_dir)
            _register(run, proxy)

        with _step(run, "2. CPU agents stay local while local is below its threshold"):
            # A small laptop: room for 4 agents, spill over at half load.
            proxy.registry.update(LOCAL_CLUSTER_ID, max_agents=4, load_threshold=0.5)
            first = _spawn(run, proxy, SpawnConfig(model="claude-sonnet-4", labels={"task": "docs"},
                                                   fail_back="auto"), "local load 0/4")
            second = _spawn(run, proxy, SpawnConfig(model="claude-sonnet-4", labels={"task": "lint"}),
                            "local load 1/4")

        with _step(run, "3. local is at its threshold: the next agent spills over"):
            spilled = _spawn(run, proxy, SpawnConfig(model="claude-sonnet-4", labels={"task": "tests"}),
                             "local load 2/4 >= 0.5")
            run.console.print(placement_table(proxy.explain(spilled.id)))

        with _step(run, "4. GPU work goes to the cluster with that GPU"):
            gpu_agent = _spawn(run, proxy, SpawnConfig(model="llama-train", requires_gpu=True,
                                                        gpu_type="nvidia-a100", cpus=0.5), "nvidia-a100")
            _stream(run, proxy, gpu_agent.id, 'echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES on $(hostname)"')

        with _step(run, "5. commands stream their output as it is produced"):
            _stream(run, proxy, first.id,
                    "for i in 1 2 3; do echo \"epoch $i\"; sleep 0.3; done; echo notes > NOTES.md")

        with _step(run, "6. live migration: local -> cpu-cheap, same id, files intact"):
            mig = proxy.migrate(first.id, "cpu-cheap", wait=True)
            _show_migration(run, mig)
            moved = proxy.status(first.id)
            run.console.print(f"{moved.id} now on [cyan]{moved.cluster_id}[/cyan] (epoch {moved.epoch})")
            _stream(run, proxy, first.id, "cat NOTES.md")

        with _step(run, "7. every command runs in a sandbox: the control plane's secrets are out of reach"):
            _stream(run, proxy, second.id, f"cat {run.state_dir}/ray_token 2>&1 | sed 's/^/    /'; "
                                           "echo \"RAY_AUTH_TOKEN=${RAY_AUTH_TOKEN:-unset}\"; "
                                           "echo \"processes visible: $(ls /proc | grep -c '^[0-9]')\"; "
                                           "echo work > mine.txt && echo \"own workdir writable: $(cat mine.txt)\"")

        with _step(run, "8. drain: every agent leaves cpu-cheap live; back in service, fail-back brings one home"):
            report = proxy.registry.drain("cpu-cheap", wait=True)
            for mig in report.migrations:
                run.console.print(f"  {mig.agent_id}: {mig.source} -> {mig.target} ({mig.phase.value})")
            for agent_id, why in report.unmovable.items():
                run.console.print(f"  {agent_id} stays: {why}")
            for mig in report.migrations:
                drained = proxy.status(mig.agent_id)
                run.console.print(f"{drained.id} drained to [cyan]{drained.cluster_id}[/cyan] "
                                  f"(epoch {drained.epoch}, home {drained.home_cluster_id})")
            _stream(run, proxy, first.id, "cat NOTES.md")
            proxy.registry.maintenance("cpu-cheap", False)
            run.console.print(f"cpu-cheap back in service (maintenance off); {first.id} has fail_back=auto")
            home = _wait_for(lambda: _fail_back(proxy, first.id), FAIL_BACK_TIMEOUT_S, "the fail-back move")
            _show_migration(run, home)
            run.console.print(f"{first.id} back home on [cyan]{proxy.status(first.id).cluster_id}[/cyan] "
                              f"(reason {home.reason})")
            _stream(run, proxy, first.id, "cat NOTES.md")

        with _step(run, "9. a site dies: its checkpointed agent is restored elsewhere"):
            durable = _spawn(run, proxy, SpawnConfig(
                model="claude-sonnet-4", cluster="cpu-cheap", restart_policy=RestartPolicy.CHECKPOINT,
                checkpoint_interval_s=1.0, labels={"task": "long-run"}), "checkpointed, pinned to cpu-cheap")
            _stream(run, proxy, durable.id, "echo 'state before the crash' > progress.txt")
            _wait_for(lambda: _checkpointed(proxy, durable.id), 30, "a checkpoint holding progress.txt")
            run.console.print("killing the cpu-cheap site process (SIGKILL) ...")
            run.sites["cpu-cheap"].kill()
            restored = _wait_for(lambda: _restored(proxy, durable.id), RESTORE_TIMEOUT_S,
                                 "the checkpointed agent to be restored")
            run.console.print(f"{restored.id} restored on [cyan]{restored.cluster_id}[/cyan] "
                              f"(epoch {restored.epoch}): {restored.status_reason}")
            _stream(run, proxy, durable.id, "cat progress.txt")
        ok = True
    finally:
        if keep and ok:
            run.console.print(f"left running. Use it with: export GODEL_STATE_DIR={run.state_dir}; "
                              "swarmctl cluster list; swarmctl agent list. "
                              f"Stop with: swarmctl down --state-dir {run.state_dir}")
        else:
            _teardown(run)
    total = sum(run.timings.values())
    run.console.print(f"[bold green]demo finished[/bold green] in {total:.0f}s" if ok else "[red]demo failed")
    return 0 if ok else 1


def _checkpointed(proxy: Any, agent_id: str) -> bool:
    """A checkpoint of the agent holds its first command (and so the file it wrote) by now."""
    return any(e.type == "agent.checkpointed" and e.agent_id == agent_id and int(e.data.get("journal", "0")) >= 1
               for e in proxy.events())


def _fail_back(proxy: Any, agent_id: str) -> Migration | None:
    """The agent's completed fail-back move, once it is home."""
    return next((m for m in proxy.migrations(agent_id)
                 if m.reason == "fail_back" and m.phase.value == "completed"), None)


def _restored(proxy: Any, agent_id: str) -> Agent | None:
    agent: Agent = proxy.status(agent_id)
    if agent.cluster_id != "cpu-cheap" and agent.status.value == "running":
        return agent
    return None


def _teardown(run: DemoRun) -> None:
    from godel_ray.control import controlplane

    run.console.rule("[bold]cleaning up")
    try:
        controlplane.down(run.state_dir)
    finally:
        for site in run.sites.values():
            site.terminate(timeout_s=20)
        if run.owns_state_dir:
            shutil.rmtree(run.state_dir, ignore_errors=True)
    run.console.print("control plane and sites stopped; nothing left running")
