"""The real `swarmctl` binary, end to end: a control plane (`swarmctl up`) and two real sites (one with
two simulated nvidia-a100 GPUs), driven only through the CLI in subprocesses.

Covers registration (and refusals that leave nothing registered), placement (local, spill-over, GPU),
exec output and exit codes, list filters, a site dying and coming back (health transitions seen in
`cluster health` and the event log, GPU spawns refused with the reason), and `down` + `up` keeping
every cluster and agent.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SiteProcess, start_site, write_token

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

CLI_TIMEOUT_S = 180.0
DEADLINE_S = 90.0
GPU_TYPE = "nvidia-a100"
GPU_HEARTBEAT = ["--heartbeat-interval", "0.5", "--heartbeat-timeout", "0.4"]


def swarmctl_argv() -> list[str]:
    exe = shutil.which("swarmctl")
    return [exe] if exe else [sys.executable, "-m", "godel_cli.main"]


@dataclass
class Cli:
    state_dir: Path

    def run(self, *args: str, timeout_s: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, GODEL_STATE_DIR=str(self.state_dir), NO_COLOR="1")
        for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "GODEL_DEBUG"):
            env.pop(key, None)
        return subprocess.run([*swarmctl_argv(), *args], capture_output=True, text=True, env=env,
                              timeout=timeout_s, check=False)

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = self.run(*args)
        assert proc.returncode == 0, f"swarmctl {' '.join(args)} -> {proc.returncode}\n{proc.stderr}"
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json").stdout)

    def fails(self, *args: str) -> str:
        """Run a command that must fail: non-zero, ONE `error:` line on stderr, no traceback."""
        proc = self.run(*args)
        assert proc.returncode != 0, f"swarmctl {' '.join(args)} succeeded:\n{proc.stdout}"
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        assert "Traceback" not in proc.stderr
        return lines[0]

    def cluster_ids(self) -> set[str]:
        return {info["cluster"]["id"] for info in self.json("cluster", "list")}

    def health(self, cluster_id: str) -> dict[str, Any]:
        return next(h for h in self.json("cluster", "health") if h["cluster_id"] == cluster_id)


def poll(what: str, check: Callable[[], Any], deadline_s: float = DEADLINE_S, every_s: float = 0.2) -> Any:
    deadline = time.monotonic() + deadline_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def read_line(proc: subprocess.Popen[str], timeout_s: float = DEADLINE_S) -> str:
    """The next line ``proc`` writes on stdout, waiting at most ``timeout_s`` (a reader thread: a bare
    ``readline()`` would hang the test if the line never came)."""
    assert proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue(maxsize=1)
    stdout = proc.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=timeout_s)
    except queue.Empty:
        raise AssertionError(f"no line on stdout within {timeout_s:g} s") from None
    assert line, f"stdout closed without a line (exit code {proc.poll()})"
    return line


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Federation:
    cli: Cli
    cpu: SiteProcess
    gpu: SiteProcess
    base: Path


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory, site_factory: Any) -> Iterator[Federation]:
    base = tmp_path_factory.mktemp("cli")
    cli = Cli(base / "state")
    cpu = site_factory("cpu", num_cpus=4)
    gpu = site_factory("gpu", num_cpus=4, num_gpus=2, gpu_type=GPU_TYPE)
    try:
        cli.ok("up", "--num-cpus", "2")
        cli.ok("cluster", "add", "cpu", cpu.endpoint, "--auth-token-file", str(cpu.token_file),
               "--region", "eu", "--cost", "0.5")
        cli.ok("cluster", "add", "gpu", gpu.endpoint, "--auth-token-file", str(gpu.token_file),
               "--region", "us", "--gpu-types", GPU_TYPE, "--cost", "3", *GPU_HEARTBEAT)
        yield Federation(cli=cli, cpu=cpu, gpu=gpu, base=base)
    finally:
        cli.run("down")


def test_registration_and_refusals(federation: Federation) -> None:
    cli = federation.cli
    infos = {i["cluster"]["id"]: i for i in cli.json("cluster", "list")}
    assert set(infos) == {"local", "cpu", "gpu"}
    assert infos["gpu"]["cluster"]["capabilities"] == {"gpu": True, "gpu_types": [GPU_TYPE], "flags": []}
    assert infos["gpu"]["cluster"]["health"]["heartbeat_interval_s"] == 0.5
    assert cli.json("cluster", "regions")["eu"] == ["cpu"]

    token = federation.cpu.token_file
    cli.fails("cluster", "add", "cpu", federation.cpu.endpoint, "--auth-token-file", str(token))  # duplicate
    cli.fails("cluster", "add", "ghost", f"127.0.0.1:{free_port()}", "--auth-token-file", str(token))
    wrong = federation.base / "wrong.token"
    write_token(wrong, "not-the-token")
    cli.fails("cluster", "add", "impostor", federation.cpu.endpoint, "--auth-token-file", str(wrong))
    assert "--cost" in cli.fails("cluster", "add", "neg", federation.cpu.endpoint, "--cost", "-1",
                                 "--auth-token-file", str(token))
    cli.fails("cluster", "remove", "no-such-cluster")
    cli.fails("agent", "spawn", "--cluster", "no-such-cluster")
    assert "label" in cli.fails("agent", "spawn", "--label", "not-a-pair")
    assert cli.cluster_ids() == {"local", "cpu", "gpu"}, "a refused registration leaves nothing behind"

    follow = subprocess.Popen([*swarmctl_argv(), "events", "--follow", "--json"], stdout=subprocess.PIPE,
                              text=True, env=dict(os.environ, GODEL_STATE_DIR=str(cli.state_dir)))
    try:
        first = json.loads(read_line(follow))  # JSON lines: one event per line, as they come
        assert first["seq"] >= 1 and first["type"]
    finally:
        follow.terminate()
        follow.wait(timeout=30)

    plan = cli.json("cluster", "plan", "--gpu-type", GPU_TYPE)
    assert plan["chosen"] == "gpu" and {"local", "cpu"} <= set(plan["rejections"])
    assert "gpu" in cli.ok("cluster", "plan", "--gpu-type", GPU_TYPE).stdout


def test_placement_exec_and_filters(federation: Federation) -> None:
    cli = federation.cli
    env_file = federation.base / "agent.env"
    env_file.write_text("# from a file: out of `ps`\nFROM_FILE=filed value\nSECRET=overridden-by---env\n")
    env_file.chmod(0o600)
    first = cli.json("agent", "spawn", "--cpus", "2", "--label", "team=a", "--env-file", str(env_file),
                     "--env", "SECRET=hunter2")
    assert first["cluster_id"] == "local"
    assert first["config"]["env"] == {"FROM_FILE": "***", "SECRET": "***"}
    assert "hunter2" not in json.dumps(first) and "filed" not in json.dumps(first)
    decision = cli.json("agent", "explain", first["id"])
    assert decision["chosen"] == "local" and decision["rule"]

    # local's CPUs are all taken: once its capacity says so, the next CPU agent spills over
    poll("local capacity to show no free CPU", lambda: cli.health("local")["capacity"]["free_cpus"] < 1)
    second = cli.json("agent", "spawn", "--label", "team=b")
    assert second["cluster_id"] in {"cpu", "gpu"}, second

    gpu_agent = cli.json("agent", "spawn", "--gpu-type", GPU_TYPE, "--label", "team=a")
    assert gpu_agent["cluster_id"] == "gpu"
    human = cli.ok("agent", "spawn", "--cluster", "cpu", "--model", "m-1").stdout
    assert human.startswith("spawned ag-") and " on cpu" in human

    for agent in (first, second, gpu_agent):
        proc = cli.run("agent", "exec", agent["id"], "--", "echo out-$GODEL_MODEL; echo err >&2; exit 3")
        assert proc.returncode == 3, proc.stderr
        assert proc.stdout == "out-default\n" and proc.stderr == "err\n"
    result = cli.run("agent", "exec", second["id"], "--json", "--", "printf", "hi")
    assert result.returncode == 0 and json.loads(result.stdout)["stdout"] == "hi"
    # several arguments keep their argv (kubectl/docker): `sh -c "a; b"` is sh with two arguments;
    # the agent's env comes from --env-file, with --env winning
    argv = cli.run("agent", "exec", first["id"], "--", "sh", "-c", 'echo "$FROM_FILE|$SECRET"; echo b')
    assert argv.returncode == 0 and argv.stdout == "filed value|hunter2\nb\n", argv.stderr
    line = cli.run("agent", "exec", first["id"], "--", "printf '%s|' 'a b' && echo $((1 + 1))")
    assert line.returncode == 0 and line.stdout == "a b|2\n", line.stderr  # one argument: a shell line

    on_gpu = cli.json("agent", "list", "--cluster", "gpu")
    assert [a["id"] for a in on_gpu] == [gpu_agent["id"]]
    team_a = {a["id"] for a in cli.json("agent", "list", "--label", "team=a")}
    assert team_a == {first["id"], gpu_agent["id"]}
    by_model = cli.json("agent", "list", "--model", "m-1")
    assert len(by_model) == 1 and by_model[0]["model"] == "m-1" and by_model[0]["cluster_id"] == "cpu"
    status = cli.json("agent", "status", gpu_agent["id"])
    assert status["cluster_id"] == "gpu" and status["migrations"] == []


def test_maintenance_and_guarded_removal(federation: Federation) -> None:
    cli = federation.cli
    assert cli.json("cluster", "maintenance", "cpu", "on")["health"]["status"] == "maintenance"
    assert cli.health("cpu")["status"] == "maintenance"
    assert "cpu" in cli.fails("agent", "spawn", "--cluster", "cpu")
    cli.ok("cluster", "maintenance", "cpu", "off")
    poll("cpu active after maintenance", lambda: cli.health("cpu")["status"] == "active")
    pinned = cli.json("agent", "spawn", "--cluster", "cpu")
    assert "--force" in cli.fails("cluster", "remove", "cpu"), "agents live there"
    assert cli.json("agent", "kill", pinned["id"])["status"] == "terminated"
    assert "cpu" in cli.cluster_ids()


def test_migrate_with_progress(federation: Federation) -> None:
    cli = federation.cli
    agent = cli.json("agent", "spawn", "--cluster", "cpu", "--label", "move=me")
    cli.ok("agent", "exec", agent["id"], "--", "echo kept > state.txt")
    proc = cli.ok("cluster", "migrate", agent["id"], "gpu", "--wait")
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"migrating {agent['id']}: cpu → gpu")
    assert any("precopying" in line for line in lines) and any("activating" in line for line in lines)
    assert lines[-1].startswith(f"migrated {agent['id']} cpu → gpu") and "downtime" in lines[-1]
    status = cli.json("agent", "status", agent["id"])
    assert status["cluster_id"] == "gpu" and status["epoch"] == agent["epoch"] + 1
    assert [m["phase"] for m in status["migrations"]] == ["completed"]
    assert cli.ok("agent", "exec", agent["id"], "--", "cat state.txt").stdout == "kept\n"
    cli.fails("cluster", "migrate", agent["id"], "gpu")  # refused: it is already there
    cli.json("agent", "kill", agent["id"])


def test_site_death_and_return(federation: Federation, tmp_path_factory: pytest.TempPathFactory) -> None:
    cli = federation.cli
    since = max((e["seq"] for e in cli.json("events")), default=0)
    old = federation.gpu
    port = int(old.endpoint.rsplit(":", 1)[1])
    old.kill()

    poll("gpu offline", lambda: cli.health("gpu")["status"] == "offline")
    transitions = [e["data"]["to"] for e in cli.json("events", "--since", str(since))
                   if e["type"] == "cluster.status" and e["cluster_id"] == "gpu"]
    assert transitions[:2] == ["degraded", "offline"], transitions
    assert "offline" in cli.ok("cluster", "health").stdout

    refusal = cli.fails("agent", "spawn", "--gpu-type", GPU_TYPE)
    assert "gpu" in refusal and ("offline" in refusal or "not active" in refusal), refusal

    back = start_site(tmp_path_factory.mktemp("gpu-again"), "gpu", num_cpus=4, num_gpus=2, gpu_type=GPU_TYPE,
                      port=port, token=old.token)
    try:
        poll("gpu active again", lambda: cli.health("gpu")["status"] == "active")
        again = cli.json("agent", "spawn", "--gpu-type", GPU_TYPE)
        assert again["cluster_id"] == "gpu"
    finally:
        back.terminate(timeout_s=20)


def test_down_up_keeps_clusters_and_agents(federation: Federation) -> None:
    cli = federation.cli
    remote = cli.json("agent", "spawn", "--cluster", "cpu", "--label", "keep=yes")
    before_clusters = cli.cluster_ids()
    before_agents = {a["id"] for a in cli.json("agent", "list")}
    assert cli.json("down") == {"stopped": True}
    assert cli.json("status")["running"] is False
    cli.fails("agent", "spawn")  # no control plane: says so in one line
    cli.ok("up", "--num-cpus", "2")
    assert cli.cluster_ids() == before_clusters
    assert {a["id"] for a in cli.json("agent", "list")} == before_agents, "every agent kept, none added"
    proc = cli.run("agent", "exec", remote["id"], "--", "echo still-here")
    assert proc.returncode == 0 and proc.stdout == "still-here\n", proc.stderr
    assert cli.json("status")["running"] is True
