"""Moving a busy agent on real sites (issue 14): the freeze waits for the agent to be idle while it
keeps serving commands; the busy timeout rolls back with nothing frozen; ``--interrupt`` stops the
command, says so in the journal and to the command's caller, and the agent runs on the target;
a drain of a cluster with one busy and one idle agent shows who waits for idle; an agent drained
away fails back home, once home is active, without interrupting its running command.

Site ``west`` runs commands without the sandbox so that a command can wait on a file this test
creates (no timing anywhere); ``east`` runs them in the sandbox, as sites do by default.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from godel_ray.client.proxy import TransparentClusterProxy
from godel_ray.control.failback import COOLDOWN_ENV as FAIL_BACK_COOLDOWN_ENV
from godel_ray.control.failback import HYSTERESIS_ENV
from godel_ray.errors import CommandInterrupted, GodelError
from godel_ray.models import AgentStatus, BusyPolicy, ExecResult, JournalEntry, MigrationPhase, SpawnConfig
from godel_ray.settings import SANDBOX_RO_PATHS_ENV
from tests.e2e.migration_helpers import control_plane, finished, live_copies, register, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]


@dataclass
class Plane:
    state_dir: Path
    flags: Path
    proxy: TransparentClusterProxy
    sites: dict[str, Any]


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory, site_factory: Any) -> Iterator[Plane]:
    state_dir = tmp_path_factory.mktemp("godel-busy")
    flags = tmp_path_factory.mktemp("flags")
    flags.chmod(0o777)  # the site may run an agent's commands as another user
    # Sandboxed commands see the flags (read-only); fail-back after 1 s of home being active, no cooldown.
    env = {SANDBOX_RO_PATHS_ENV: str(flags), HYSTERESIS_ENV: "1", FAIL_BACK_COOLDOWN_ENV: "0"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # the sites and the control plane's Ray head inherit them
    try:
        sites = {"west": site_factory("west", num_cpus=2, extra=["--isolation", "none"]),
                 "east": site_factory("east", num_cpus=2)}
        with control_plane(state_dir) as proxy:
            for site in sites.values():
                register(proxy, site)
            yield Plane(state_dir=state_dir, flags=flags, proxy=proxy, sites=sites)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def blocked(plane: Plane, name: str) -> str:
    """A command that says it started (a file), then runs until the test creates ``release-<name>``."""
    started, release = plane.flags / f"started-{name}", plane.flags / f"release-{name}"
    return f"touch {started}; while [ ! -e {release} ]; do sleep 0.05; done; echo long-done"


def in_background(proxy: TransparentClusterProxy, agent_id: str, command: str
                  ) -> tuple[threading.Thread, list[ExecResult | GodelError]]:
    out: list[ExecResult | GodelError] = []

    def run() -> None:
        try:
            out.append(proxy.exec(agent_id, command))
        except GodelError as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def reached_the_site(proxy: TransparentClusterProxy, agent_id: str, command: str) -> bool:
    return any(e.type == "command.started" and e.agent_id == agent_id and e.data.get("command") == command
               for e in proxy.events())


def test_a_busy_agent_keeps_serving_commands_and_freezes_when_idle(plane: Plane) -> None:
    proxy = plane.proxy
    agent = proxy.spawn(SpawnConfig(model="m", cluster="west"))
    west_pwd = proxy.exec(agent.id, "pwd").stdout.strip()
    long_thread, long_out = in_background(proxy, agent.id, blocked(plane, "wait"))
    wait_for(lambda: (plane.flags / "started-wait").exists(), "the long command to start")

    started = proxy.migrate(agent.id, "east", wait=False, busy_timeout_s=300)
    assert started.busy is BusyPolicy.WAIT and started.busy_timeout_s == 300
    wait_for(lambda: proxy.migrations(agent.id)[-1].phase is MigrationPhase.FREEZING, "the move to ask for the freeze")
    meanwhile = "echo served-meanwhile; pwd"
    sent_thread, sent_out = in_background(proxy, agent.id, meanwhile)
    wait_for(lambda: reached_the_site(proxy, agent.id, meanwhile), "the new command to reach the agent")
    waiting = proxy.migrations(agent.id)[-1]
    assert waiting.phase is MigrationPhase.FREEZING and waiting.frozen_at is None  # busy: not frozen
    assert proxy.status(agent.id).status is AgentStatus.RUNNING  # the agent still serves
    (plane.flags / "release-wait").touch()

    done = wait_for(lambda: finished(proxy, started.id), "the move to finish")
    long_thread.join(60)
    sent_thread.join(60)
    assert done.phase is MigrationPhase.COMPLETED, done.error
    [long_result], [sent_result] = long_out, sent_out
    assert isinstance(long_result, ExecResult) and long_result.stdout == "long-done\n"
    # the command sent during the move was served by the source, before the freeze: it never waited on the move
    assert isinstance(sent_result, ExecResult) and sent_result.stdout.splitlines() == ["served-meanwhile", west_pwd]
    # the freeze started only once the agent was idle: after the long command had ended
    requested_at = next(s.at for s in done.phases if s.phase is MigrationPhase.FREEZING)
    long_command = blocked(plane, "wait")

    def both_in_journal() -> list[JournalEntry] | None:
        entries = proxy.journal(agent.id)
        return entries if {long_command, meanwhile} <= {e.command for e in entries} else None

    journal = wait_for(both_in_journal, "the journal (mirrored from the sites' events) to hold both commands")
    long_entry = next(e for e in journal if e.command == long_command)
    long_ended_at = long_entry.started_at + long_entry.duration_s
    assert done.frozen_at is not None and requested_at < long_ended_at <= done.frozen_at
    assert [e.command for e in journal].index(meanwhile) > [e.command for e in journal].index(long_entry.command)
    assert done.downtime_s is not None and not any(e.interrupted for e in journal)
    moved = proxy.status(agent.id)
    assert (moved.cluster_id, moved.status) == ("east", AgentStatus.RUNNING)
    assert proxy.exec(agent.id, "echo on-east").stdout == "on-east\n"
    assert live_copies(plane.sites["west"], agent.id) == []
    proxy.kill(agent.id)  # the next tests need the capacity


def test_the_busy_timeout_rolls_back_with_nothing_frozen(plane: Plane) -> None:
    proxy = plane.proxy
    agent = proxy.spawn(SpawnConfig(model="m", cluster="west"))
    long_thread, long_out = in_background(proxy, agent.id, blocked(plane, "timeout"))
    wait_for(lambda: (plane.flags / "started-timeout").exists(), "the long command to start")

    done = proxy.migrate(agent.id, "east", busy_timeout_s=1.0)

    assert done.phase is MigrationPhase.ROLLED_BACK and done.frozen_at is None
    assert "AgentBusy" in done.error and "nothing was frozen" in done.error
    phases = [s.phase for s in done.phases]
    assert MigrationPhase.FREEZING in phases and MigrationPhase.DELTA not in phases  # nothing past the freeze
    here = proxy.status(agent.id)
    assert (here.cluster_id, here.status, here.epoch) == ("west", AgentStatus.RUNNING, agent.epoch)
    assert live_copies(plane.sites["east"], agent.id) == []
    # nothing was frozen: a command sent now queues behind the long one only, and runs on west
    after_thread, after_out = in_background(proxy, agent.id, "echo still-here")
    (plane.flags / "release-timeout").touch()
    long_thread.join(60)
    after_thread.join(60)
    assert [r.stdout for r in long_out if isinstance(r, ExecResult)] == ["long-done\n"]
    assert [r.stdout for r in after_out if isinstance(r, ExecResult)] == ["still-here\n"]
    proxy.kill(agent.id)


def test_interrupt_stops_the_command_and_the_agent_runs_on_the_target(plane: Plane) -> None:
    proxy = plane.proxy
    agent = proxy.spawn(SpawnConfig(model="m", cluster="east"))  # sandboxed commands
    assert proxy.exec(agent.id, "echo kept > notes.txt").exit_code == 0
    command = "echo begun; sleep 600"
    long_thread, long_out = in_background(proxy, agent.id, command)
    wait_for(lambda: reached_the_site(proxy, agent.id, command), "the long command to start")

    done = proxy.migrate(agent.id, "west", interrupt=True)

    assert done.phase is MigrationPhase.COMPLETED, done.error
    assert done.busy is BusyPolicy.INTERRUPT and done.interrupted_seq == 2
    long_thread.join(60)
    [err] = long_out
    assert isinstance(err, CommandInterrupted), err
    assert err.cluster_id == "west" and err.seq == 2 and "interrupted" in str(err) and "west" in str(err)
    entry = wait_for(lambda: next((e for e in proxy.journal(agent.id) if e.command == command and e.exit_code is not None),
                                  None), "the interrupted command's journal entry (mirrored from east's events)")
    assert entry.interrupted and entry.exit_code == err.exit_code and entry.exit_code not in (None, 0)
    moved = proxy.status(agent.id)
    assert (moved.cluster_id, moved.status, moved.epoch) == ("west", AgentStatus.RUNNING, agent.epoch + 1)
    assert proxy.exec(agent.id, "cat notes.txt").stdout == "kept\n"
    assert live_copies(plane.sites["east"], agent.id) == []
    proxy.kill(agent.id)


def test_drain_of_a_cluster_with_one_busy_and_one_idle_agent(plane: Plane) -> None:
    proxy = plane.proxy
    busy = proxy.spawn(SpawnConfig(model="m", cluster="west", labels={"drain": "busy"}))
    idle = proxy.spawn(SpawnConfig(model="m", cluster="west", labels={"drain": "idle"}))
    long_thread, long_out = in_background(proxy, busy.id, blocked(plane, "drain"))
    wait_for(lambda: (plane.flags / "started-drain").exists(), "the busy agent's command to start")

    env = dict(os.environ, GODEL_STATE_DIR=str(plane.state_dir), NO_COLOR="1", COLUMNS="200",
               PYTHONUNBUFFERED="1")
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "GODEL_DEBUG"):
        env.pop(key, None)
    drain = subprocess.Popen([sys.executable, "-m", "godel_cli.main", "cluster", "drain", "west", "--wait",
                              "--busy", "wait", "--busy-timeout", "300"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(drain.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        # the idle agent leaves at once; the busy one's move waits for it, and the progress says so
        idle_move = wait_for(lambda: next((m for m in proxy.migrations(idle.id) if m.finished_at), None),
                             "the idle agent's move")
        assert idle_move.phase is MigrationPhase.COMPLETED and idle_move.reason == "drain", idle_move.error
        # (each progress line lists the moves still waiting for their agent to freeze; the idle one's is done)
        wait_for(lambda: any(line.strip().startswith("waiting for idle:") and busy.id in line and idle.id not in line
                             for line in lines), "the drain's progress to list the busy agent alone")
        busy_move = proxy.migrations(busy.id)[-1]
        assert busy_move.phase is MigrationPhase.FREEZING and busy_move.frozen_at is None
        assert proxy.status(busy.id).cluster_id == "west"
        (plane.flags / "release-drain").touch()
        assert drain.wait(300) == 0, "".join(lines)
    finally:
        if drain.poll() is None:
            drain.kill()
            drain.wait()
    reader.join(10)
    long_thread.join(60)
    assert [r.stdout for r in long_out if isinstance(r, ExecResult)] == ["long-done\n"]
    out = "".join(lines)
    assert "west is in maintenance; 2 moving, 0 unmovable" in out
    for agent in (busy, idle):
        moved = proxy.status(agent.id)
        assert moved.cluster_id in ("east", "local") and moved.status is AgentStatus.RUNNING
        assert live_copies(plane.sites["west"], agent.id) == []
    last = proxy.migrations(busy.id)[-1]
    assert last.phase is MigrationPhase.COMPLETED and last.frozen_at is not None



def test_fail_back_home_waits_for_the_running_command(plane: Plane) -> None:
    """After the drain above, ``west`` comes back: an agent drained away with ``fail_back: auto`` goes
    home live once west is active, and the move waits for its running command (never interrupts it)."""
    proxy = plane.proxy
    proxy.registry.maintenance("west", False)
    agent = proxy.spawn(SpawnConfig(model="m", cluster="west", fail_back="auto"))
    report = proxy.registry.drain("west", wait=True)  # west in maintenance again, the agent elsewhere
    assert [m.phase for m in report.migrations if m.agent_id == agent.id] == [MigrationPhase.COMPLETED]
    away = proxy.status(agent.id)
    assert away.cluster_id in ("east", "local") and away.home_cluster_id == "west"

    release = plane.flags / "release-failback"
    chunks: list[Any] = []
    first_chunk = threading.Event()

    def stream() -> None:
        for chunk in proxy.exec_stream(agent.id, f"echo begun; while [ ! -e {release} ]; do sleep 0.05; done; "
                                                 "echo long-done"):
            chunks.append(chunk)
            first_chunk.set()

    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    assert first_chunk.wait(120), "the command never started"

    proxy.registry.maintenance("west", False)  # home is back: fail-back after the (1 s) hysteresis
    move = wait_for(lambda: next((m for m in proxy.migrations(agent.id) if m.reason == "fail_back"), None),
                    "the fail-back move to start")
    assert move.busy is BusyPolicy.WAIT and move.target == "west"
    waiting = wait_for(lambda: next(m for m in proxy.migrations(agent.id) if m.id == move.id), "the move's record")
    assert waiting.finished_at is None and waiting.frozen_at is None  # it waits for the command
    assert streamer.is_alive() and all(c.result is None for c in chunks)
    release.touch()

    done = wait_for(lambda: finished(proxy, move.id), "the fail-back move to finish")
    streamer.join(60)
    assert done.phase is MigrationPhase.COMPLETED, done.error
    assert chunks[-1].result is not None and chunks[-1].result.exit_code == 0
    assert "".join(c.data for c in chunks if c.result is None) == "begun\nlong-done\n"
    assert done.frozen_at is not None
    home = proxy.status(agent.id)
    assert (home.cluster_id, home.status, home.home_cluster_id) == ("west", AgentStatus.RUNNING, "")
    assert proxy.exec(agent.id, "echo home").stdout == "home\n"
    assert any(e.type == "agent.fail_back" and e.agent_id == agent.id for e in proxy.events())
