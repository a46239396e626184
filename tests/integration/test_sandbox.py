"""The agent sandbox, from inside real agents on a real Ray cluster.

One Ray head and one runtime serve the module. The head is started with an operator's environment
worth stealing (a Ray token, a token file named by ``RAY_AUTH_TOKEN_PATH``, a state dir, a cloud
key), and every secret is placed inside a directory the sandbox shows read-only (``ro_paths``),
with world-readable modes: the sandbox's own hiding, not file permissions, is what is tested.
Agents' workdirs live there too, so other agents' workdirs are hidden the same way.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from godel_ray.agents import sandbox as sbx
from godel_ray.agents.cgroups import available as cgroups_available
from godel_ray.agents.runtime import AgentRuntime
from godel_ray.core.cluster_client import collect
from godel_ray.models import AgentLimits, AgentStatus, ExecResult, FederationEvent, Isolation, SpawnConfig
from godel_ray.raykit import heads, rayapi
from godel_ray.settings import LIMITS, SandboxPolicy

pytestmark = pytest.mark.ray
T = TypeVar("T")
IN_CI = os.environ.get("CI") == "true"
# What a command may see of its environment (bash adds PWD, SHLVL, _ and OLDPWD itself).
ENV_EXPECTED = {"PATH", "HOME", "LANG", "LC_ALL", "TZ", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
                "PWD", "SHLVL", "_", "OLDPWD", "GODEL_AGENT_ID", "GODEL_MODEL", "GODEL_WORKDIR", "TASK"}


class World:
    def __init__(self, loop: asyncio.AbstractEventLoop, runtime: AgentRuntime, open_: AgentRuntime,
                 exposed: Path, head: heads.RayHead, secrets_: dict[str, str]) -> None:
        self.loop, self.runtime, self.open = loop, runtime, open_
        self.exposed, self.head, self.secrets = exposed, head, secrets_

    def run(self, coro: Awaitable[T]) -> T:
        return self.loop.run_until_complete(coro)  # type: ignore[arg-type]

    def spawn(self, runtime: AgentRuntime | None = None, **config: Any) -> Any:
        config.setdefault("cpus", 0.1)
        agent, _ = self.run((runtime or self.runtime).spawn(SpawnConfig(**config)))
        return agent

    def exec(self, agent_id: str, command: str, runtime: AgentRuntime | None = None,
             timeout_s: float | None = None) -> ExecResult:
        async def go() -> ExecResult:
            stream = (runtime or self.runtime).exec_stream(agent_id, command, timeout_s=timeout_s)
            return collect([c async for c in stream])
        return self.run(go())

    def kill(self, agent_id: str, runtime: AgentRuntime | None = None) -> None:
        self.run((runtime or self.runtime).kill(agent_id))


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    exposed = tmp_path_factory.mktemp("exposed")  # shown read-only in every sandbox
    exposed.chmod(0o755)  # like /opt: anyone may look (pytest makes it 0700)
    ray_token = secrets.token_hex(16)
    found = {
        "ray_token": ray_token,
        "site_token": "site-" + secrets.token_hex(8),
        "db": "db-" + secrets.token_hex(8),
        "cloud": "cloud-" + secrets.token_hex(8),
        "operator": "operator-" + secrets.token_hex(8),
    }
    state = exposed / "state"
    _write(state / "ray_token", ray_token)
    _write(state / "godel.db", found["db"])
    _write(exposed / "ray-token-file", ray_token)
    _write(exposed / "site.token", found["site_token"])
    _write(exposed / "public.txt", "public\n")
    operator_env = {"GODEL_STATE_DIR": str(state), "RAY_AUTH_TOKEN_PATH": str(exposed / "ray-token-file"),
                    "AWS_SECRET_ACCESS_KEY": found["cloud"], "GODEL_OPERATOR_SECRET": found["operator"]}
    saved = {k: os.environ.get(k) for k in operator_env}
    os.environ.update(operator_env)  # the head, its raylet and every Ray worker inherit them
    try:
        head = heads.start_head(num_cpus=4, auth_token=ray_token)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    loop = asyncio.new_event_loop()
    policy = SandboxPolicy(isolation=Isolation.SANDBOX, ro_paths=(str(exposed),),
                           hidden_paths=(str(exposed / "site.token"),))
    runtime = open_ = None
    try:
        rayapi.init_client(head.address, head.env())
        runtime = AgentRuntime("sbx", str(exposed / "workdirs"), max_agents=8, ready_timeout_s=60.0,
                               limits=LIMITS.model_copy(update={"sandbox": policy}))
        open_ = AgentRuntime("open", str(tmp_path_factory.mktemp("open")), max_agents=2, ready_timeout_s=60.0,
                             limits=LIMITS.model_copy(update={"sandbox": SandboxPolicy(isolation=Isolation.NONE)}))
        yield World(loop, runtime, open_, exposed, head, found)
    finally:
        for rt in (runtime, open_):
            if rt is not None:
                loop.run_until_complete(rt.close())
        loop.close()
        import ray

        ray.shutdown()
        head.stop()


# --- the agent's own work still runs -----------------------------------------------------------

def test_the_agents_own_work_runs(world: World) -> None:
    agent = world.spawn(env={"TASK": "build"})
    result = world.exec(agent.id, "\n".join([
        'echo "$TASK" > notes.txt && cat notes.txt',
        "mkdir -p src && printf 'print(6 * 7)\\n' > src/main.py && python src/main.py",
        "seq 1 1000 | sort -rn | head -1",
        'echo scratch > /tmp/x && cat /tmp/x',
        'test "$HOME" = "$GODEL_WORKDIR" && test "$PWD" = "$GODEL_WORKDIR" && echo home-ok',
        f"cat {world.exposed / 'public.txt'}",
    ]))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split() == ["build", "42", "1000", "scratch", "home-ok", "public"]
    assert world.exec(agent.id, "cat notes.txt src/main.py").stdout == "build\nprint(6 * 7)\n"
    world.kill(agent.id)


def test_only_the_workdir_and_tmp_are_writable(world: World) -> None:
    agent = world.spawn()
    targets = ["/usr/godel-x", "/etc/godel-x", f"{world.exposed}/godel-x", "/godel-x"]
    result = world.exec(agent.id, "; ".join(f"touch {t} 2>/dev/null && echo wrote {t}" for t in targets)
                        + "; touch ok /tmp/ok && echo wrote-allowed")
    assert result.stdout == "wrote-allowed\n"
    assert not any(Path(t).exists() for t in targets)
    world.kill(agent.id)


# --- what must stay out of reach ---------------------------------------------------------------

def test_the_state_dir_and_every_token_are_out_of_reach(world: World) -> None:
    agent = world.spawn()
    e = world.exposed
    paths = [e / "state" / "ray_token", e / "state" / "godel.db", e / "ray-token-file", e / "site.token"]
    result = world.exec(agent.id, "; ".join(f"cat {p}" for p in paths) + f"; ls -A {e / 'state'}; "
                        f"grep -rl {world.secrets['ray_token']} {e} /tmp $HOME; echo done")
    assert result.stdout.strip() == "done", result.stdout
    for name in ("ray_token", "site_token", "db"):
        assert world.secrets[name] not in result.stdout + result.stderr
    world.kill(agent.id)


def test_other_processes_and_the_operators_environment_are_out_of_reach(world: World) -> None:
    agent = world.spawn(env={"TASK": "t"})
    result = world.exec(agent.id, "env; echo ---; cat /proc/[0-9]*/environ | tr '\\0' '\\n'; echo ---; "
                                  "ls -d /proc/[0-9]* | wc -l")
    env_part, environ_part, count = result.stdout.split("---\n")
    names = {line.split("=", 1)[0] for line in env_part.splitlines() if "=" in line}
    assert names <= ENV_EXPECTED, names - ENV_EXPECTED
    everything = result.stdout + result.stderr
    for leak in ("RAY_", world.secrets["ray_token"], world.secrets["cloud"], world.secrets["operator"],
                 "AWS_SECRET_ACCESS_KEY", "GODEL_STATE_DIR"):
        assert leak not in everything, leak
    assert "GODEL_AGENT_ID" in environ_part  # /proc works, and holds only the sandbox's own processes
    assert int(count) <= 6  # bwrap's init, bash, cat/ls... never the Ray worker or the host
    world.kill(agent.id)


def test_other_agents_workdirs_are_out_of_reach(world: World) -> None:
    first, second = world.spawn(), world.spawn()
    marker = "mine-" + secrets.token_hex(6)
    world.exec(first.id, f"echo {marker} > secret.txt")
    root = world.exposed / "workdirs"
    result = world.exec(second.id, f"cat {root / first.id / 'secret.txt'}; ls -A {root}")
    assert marker not in result.stdout
    assert result.stdout.split() == [second.id]  # only its own workdir in the workdir root
    assert (root / first.id / "secret.txt").read_text() == f"{marker}\n"  # it is there, outside
    world.kill(first.id)
    world.kill(second.id)


def test_network_is_on_by_default_and_off_on_request(world: World) -> None:
    port = world.head.address.rsplit(":", 1)[1]  # the Ray head's GCS on the host's loopback
    probe = f"(exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo reached || echo unreachable"
    online, offline = world.spawn(), world.spawn(unshare_net=True)
    assert world.exec(online.id, probe).stdout == "reached\n"
    assert world.exec(offline.id, probe).stdout == "unreachable\n"
    world.kill(online.id)
    world.kill(offline.id)


# --- limits ------------------------------------------------------------------------------------

def _still_serving(world: World) -> None:
    other = world.spawn()
    assert world.exec(other.id, "echo serving").stdout == "serving\n"
    assert world.run(world.runtime.heartbeat()).isolation == Isolation.SANDBOX
    world.kill(other.id)


def test_a_fork_bomb_is_contained(world: World) -> None:
    agent = world.spawn(limits=AgentLimits(processes=64))
    result = world.exec(agent.id, "bomb() { bomb | bomb; }; bomb", timeout_s=4.0)
    assert result.exit_code != 0
    if cgroups_available():
        assert "godel: process limit of 64 reached" in result.stderr, result.stderr[-500:]
    else:  # rlimits only: fork is refused, the command says so itself
        assert "Resource temporarily unavailable" in result.stderr
    assert world.exec(agent.id, "echo alive").stdout == "alive\n"  # the agent itself is fine
    _still_serving(world)
    world.kill(agent.id)


def test_a_memory_hog_is_contained(world: World) -> None:
    agent = world.spawn(limits=AgentLimits(memory_mb=128))
    hog = "python -c 'a = []\nwhile True: a.append(b\"x\" * (1 << 20))'"
    result = world.exec(agent.id, hog, timeout_s=60.0)
    assert result.exit_code != 0 and not result.timed_out
    if cgroups_available():
        assert result.exit_code == 137
        assert "godel: memory limit of 128 MiB reached" in result.stderr, result.stderr[-500:]
    else:  # the per-process data limit: the allocation fails
        assert "MemoryError" in result.stderr
    assert world.exec(agent.id, "echo alive").stdout == "alive\n"
    _still_serving(world)
    world.kill(agent.id)


def _reason_event(world: World, agent_id: str, since_seq: int, contains: str) -> FederationEvent:
    """The runtime's next ``agent.status`` event for ``agent_id`` whose reason holds ``contains`` (the
    watcher that emits it runs while this waits; bounded)."""
    async def first() -> FederationEvent:
        async for event in world.runtime.events(since_seq):
            if event.agent_id == agent_id and event.type == "agent.status" and contains in event.data.get("reason", ""):
                return event
        raise AssertionError("the event stream ended")
    return world.run(asyncio.wait_for(first(), 60.0))


def test_cpu_time_and_file_size_limits_end_the_command_with_the_reason(world: World) -> None:
    agent = world.spawn(limits=AgentLimits(cpu_time_s=1, workdir_mb=2))
    since = world.runtime.last_event_seq
    spin = world.exec(agent.id, "python -c 'while True: pass'", timeout_s=60.0)
    assert spin.exit_code == 152 and "godel: CPU time limit of 1 s reached" in spin.stderr
    # the agent keeps running, and says why its command ended: in its status and in an event (which
    # the balancer writes into the row that `swarmctl agent list/status` show)
    event = _reason_event(world, agent.id, since, "CPU time limit of 1 s reached")
    assert event.data["status"] == "running" and event.data["reason"].startswith("command 1 hit a limit: ")
    status = world.run(world.runtime.status(agent.id))
    assert status.status is AgentStatus.RUNNING and status.status_reason == event.data["reason"]
    big = world.exec(agent.id, "head -c 5M /dev/zero > big.bin")
    assert big.exit_code == 153 and "godel: file size limit of 2 MiB reached" in big.stderr
    assert _reason_event(world, agent.id, since, "file size limit").data["reason"].startswith("command 2 hit")
    world.kill(agent.id)


def _cgroup_dirs(world: World, agent_id: str) -> list[Path]:
    """The agent's cgroup directories, as the host sees them (read from inside a command: bwrap keeps the
    host's cgroup namespace, so /proc/self/cgroup names the full paths)."""
    lines = world.exec(agent_id, "cat /proc/self/cgroup").stdout.splitlines()
    paths = {line.split(":", 2)[2] for line in lines if line.count(":") >= 2 and "godel-sandbox" in line}
    roots = [Path("/sys/fs/cgroup"), *(p for p in Path("/sys/fs/cgroup").iterdir() if p.is_dir())]
    return [root / path.lstrip("/") for path in paths for root in roots if (root / path.lstrip("/")).is_dir()]


def test_the_agents_cgroup_is_removed_when_it_ends(world: World) -> None:
    if not cgroups_available():
        pytest.skip("this process cannot make cgroups here (no write access or no delegation): "
                    "commands run with rlimits only, so there is no cgroup to remove")
    agent = world.spawn(limits=AgentLimits(processes=32))
    world.exec(agent.id, "sleep 60 >/dev/null 2>&1 &")  # a process left behind: the end must reap it before the rmdir
    dirs = _cgroup_dirs(world, agent.id)
    if not dirs:
        pytest.skip("the agent's cgroup is not visible under /sys/fs/cgroup from this process")
    world.kill(agent.id)
    assert [d for d in dirs if d.exists()] == []


def test_a_workdir_over_its_limit_is_reported(world: World) -> None:
    agent = world.spawn(limits=AgentLimits(workdir_mb=3))
    result = world.exec(agent.id, "for i in 1 2 3 4; do head -c 1M /dev/urandom > f$i; done")
    assert result.exit_code == 0  # every file is under the per-file limit: the total is what is over
    assert "godel: the workdir holds over 3 MiB" in result.stderr
    world.kill(agent.id)


# --- isolation none ----------------------------------------------------------------------------

def test_isolation_none_runs_plain_commands_and_says_so(world: World) -> None:
    assert world.run(world.open.heartbeat()).isolation == Isolation.NONE
    agent = world.spawn(runtime=world.open)
    result = world.exec(agent.id, "env", runtime=world.open)
    assert world.secrets["operator"] in result.stdout  # the operator's environment, as asked for
    assert "RAY_AUTH_TOKEN" not in result.stdout  # but never Ray's credential
    world.kill(agent.id, runtime=world.open)


# --- the sandbox without root: a user namespace -------------------------------------------------

NOBODY = 65534


@pytest.fixture
def unprivileged_workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a command as another, unprivileged user")
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="godel-nonroot-", dir="/tmp"))
    base.chmod(0o755)
    workdir = base / "ag-nonroot"
    workdir.mkdir()
    os.chown(workdir, NOBODY, NOBODY)
    workdir.chmod(0o700)
    try:
        yield workdir
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def _run_unprivileged(workdir: Path, command: str, limits: AgentLimits, timeout_s: float = 60.0) -> Any:
    import subprocess

    policy = SandboxPolicy()
    sandbox = sbx.build_sandbox("ag-nonroot", str(workdir), limits, policy)
    # what a site running as an ordinary user builds: no uid of its own, a user namespace instead;
    # only what that user may read is allow-listed (here, not the Python under /root)
    sandbox = sbx.Sandbox(bwrap=sandbox.bwrap, workdir=sandbox.workdir, limits=sandbox.limits, uid=None,
                          ro_paths=tuple(p for p in sandbox.ro_paths if not p.startswith("/root")),
                          links=sandbox.links)
    env = sbx.command_env({"PATH": "/usr/bin:/bin"}, {}, {}, Isolation.SANDBOX, home=str(workdir))
    startup = sbx.startup_pipe(sandbox.startup_script(env))
    try:
        return subprocess.run(sandbox.argv(command, startup_fd=startup), env=sandbox.run_env(),
                              pass_fds=(startup,), user=NOBODY, group=NOBODY, extra_groups=[],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s,
                              check=False)
    finally:
        os.close(startup)


def test_without_root_a_user_namespace_holds_the_command_and_its_limits(unprivileged_workdir: Path) -> None:
    probe = _run_unprivileged(unprivileged_workdir, "true", AgentLimits())
    if probe.returncode != 0:
        if IN_CI:
            pytest.fail(f"unprivileged user namespaces are refused here: {probe.stderr}")
        pytest.skip(f"unprivileged user namespaces are refused here: {probe.stderr.strip()}")
    work = _run_unprivileged(unprivileged_workdir, "echo hi > f && cat f && id -u && ls /proc | grep -c '^[0-9]'"
                             " && ulimit -u && ls /root 2>&1 | head -1", AgentLimits(processes=32))
    lines = work.stdout.split("\n")
    assert work.returncode == 0, work.stderr
    assert lines[0] == "hi" and lines[1] == str(NOBODY) and int(lines[2]) <= 5 and lines[3] == "32"
    # RLIMIT_NPROC counts per user namespace: set inside, it bounds this sandbox's processes only
    # Builtins only once the bomb runs (it takes every process slot); the shell exits after counting,
    # and its PID namespace, the bomb with it, goes.
    bomb = _run_unprivileged(unprivileged_workdir, "bomb() { bomb | bomb; }; bomb & "
                             "while (( SECONDS < 2 )); do :; done; n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; "
                             "echo $n", AgentLimits(processes=32))
    assert int(bomb.stdout.split()[0]) <= 32 + 2, bomb.stdout  # + bwrap's init and this shell
    assert "Resource temporarily unavailable" in bomb.stderr


# --- a site chooses its isolation ----------------------------------------------------------------

def test_a_site_without_a_working_sandbox_refuses_to_start(tmp_path: Path) -> None:
    import subprocess
    import sys

    from godel_ray.site.launcher import write_token

    token = tmp_path / "site.token"
    write_token(token)
    env = dict(os.environ, GODEL_BWRAP=str(tmp_path / "no-such-bwrap"))
    done = subprocess.run([sys.executable, "-m", "godel_cli.main", "site", "serve", "--port", "0",
                           "--auth-token-file", str(token)], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode != 0 and "listening on" not in done.stdout
    assert "the agent sandbox cannot start on this machine" in done.stderr
    assert "GODEL_BWRAP" in done.stderr and "--isolation none" in done.stderr


def test_a_site_with_isolation_none_says_so_in_its_heartbeat(site_factory: Any) -> None:
    from godel_ray.rpc.client import GrpcClusterClient

    site = site_factory("open-site", num_cpus=1, extra=["--isolation", "none"])

    async def heartbeat() -> Any:
        client = GrpcClusterClient(site.endpoint, token=site.token, cluster_id="open-site")
        try:
            return await client.heartbeat()
        finally:
            await client.close()

    loop = asyncio.new_event_loop()
    try:
        capacity = loop.run_until_complete(heartbeat())
    finally:
        loop.close()
    assert capacity.isolation == Isolation.NONE
    assert any("warning: isolation none" in line for line in site.output), site.output
