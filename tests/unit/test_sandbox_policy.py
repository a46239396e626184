"""The sandbox's pure parts: its command line, the environment allow-list, limits on the wire,
isolation per site, and how a breach is named. No Ray, no processes."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from godel_ray.agents import sandbox as sbx
from godel_ray.agents.cgroups import _mounts, _own
from godel_ray.errors import InvalidArgument
from godel_ray.models import AgentLimits, Isolation, SiteCapacity, SpawnConfig
from godel_ray.rpc import convert
from godel_ray.rpc.gen import federation_pb2 as pb
from godel_ray.settings import ISOLATION_ENV, SandboxPolicy, isolation_from_env

LIMITS = sbx.ResolvedLimits(memory_mb=512, processes=64, cpu_time_s=30, open_files=256, workdir_mb=100, tmp_mb=16)


def _sandbox(**kw: object) -> sbx.Sandbox:
    base: dict[str, object] = {"bwrap": "/bwrap", "workdir": "/srv/work/ag-1", "limits": LIMITS, "name": "ag-1",
                               "ro_paths": ("/usr", "/etc", "/srv"), "links": (("/bin", "usr/bin"),),
                               "hidden_dirs": ("/srv/work",), "hidden_files": ("/srv/site.token",)}
    base.update(kw)
    return sbx.Sandbox(**base)  # type: ignore[arg-type]


def _pairs(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_as_root_the_command_drops_to_the_agents_uid_with_no_capabilities() -> None:
    argv = _sandbox(uid=2_000_000_123, setpriv="/usr/bin/setpriv").argv("make test", startup_fd=7)
    assert argv[:5] == ["/bwrap", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent"]
    assert "--unshare-user" not in argv and _pairs(argv, "--cap-drop") == ["ALL"]
    assert _pairs(argv, "--cap-add") == ["CAP_SETUID", "CAP_SETGID"]
    tail = argv[argv.index("/usr/bin/setpriv"):]
    assert tail == ["/usr/bin/setpriv", "--reuid=2000000123", "--regid=2000000123", "--clear-groups",
                    "--inh-caps=-all", "--", "bash", "-c", "make test"]


def test_without_root_a_user_namespace_and_no_nested_ones() -> None:
    argv = _sandbox(uid=None).argv("true", startup_fd=7)
    assert "--unshare-user" in argv and "--disable-userns" in argv and "--cap-add" not in argv
    assert argv[-3:] == ["bash", "-c", "true"] and "setpriv" not in " ".join(argv)


def test_mounts_allow_list_hide_secrets_and_bind_only_the_workdir_writable() -> None:
    argv = _sandbox().argv("true", startup_fd=7)
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--ro-bind"] == \
        ["/usr", "/etc", "/srv", "/dev/null"]  # the allow-list, then /dev/null over the token
    assert _pairs(argv, "--bind") == ["/srv/work/ag-1"]  # the one writable bind
    assert argv[argv.index("/srv/site.token") - 1] == "/dev/null"
    tmpfs = _pairs(argv, "--tmpfs")
    assert tmpfs == ["/tmp", "/dev/shm", "/srv/work"]  # the workdir root hidden, own workdir bound over it
    assert argv.index("/srv/work") < argv.index("--bind")
    assert _pairs(argv, "--size") == [str(16 * 1024 * 1024)] * 2
    assert _pairs(argv, "--proc") == ["/proc"] and "--remount-ro" in argv and "--unshare-net" not in argv
    assert "--unshare-net" in _sandbox(network=False).argv("true", startup_fd=7)


def test_ancestors_outside_the_allow_list_are_made_traversable() -> None:
    argv = _sandbox(ro_paths=("/root/.pyenv/versions/3.11",), hidden_dirs=(), hidden_files=(),
                    workdir="/tmp/w/ag-1").argv("true", startup_fd=7)
    assert _pairs(argv, "--dir") == ["/root", "/root/.pyenv", "/root/.pyenv/versions", "/tmp/w"]
    dirs = [i for i, a in enumerate(argv) if a == "--dir"]
    assert all(argv[i - 2:i] == ["--perms", "0755"] for i in dirs)  # bwrap would make them 0700


def test_the_startup_script_exports_the_env_enters_the_workdir_and_sets_every_limit() -> None:
    env = {"TASK": "it's $x", "LD_PRELOAD": "/w/evil.so", "BASH_ENV": "/w/evil", "bad name": "x"}
    script = _sandbox(workdir="/srv/work/it's").startup_script(env)
    lines = script.splitlines()
    assert lines[:3] == ["export TASK='it'\"'\"'s $x'", "export LD_PRELOAD=/w/evil.so", "unset BASH_ENV"]
    assert lines[3].startswith("cd -- '/srv/work/it'\"'\"'s' && ulimit -c 0 -d 524288 -u 64 -n 256 -f 102400")
    assert "ulimit -t 31 && ulimit -S -t 30" in script and f"exit {sbx.WRAPPER_FAILED_EXIT}" in script
    assert "-d 1048576 -u 80" in _sandbox().startup_script({}, cgroup=True)  # backstops above the cgroup's


def test_privileged_steps_see_none_of_the_agents_environment() -> None:
    # bwrap and setpriv (uid 0 until it drops) run with this only; LD_PRELOAD & co. come later, as the agent
    assert _sandbox(uid=2_000_000_001).run_env() == {"PATH": sbx.DEFAULT_PATH, "BASH_ENV": sbx.STARTUP_FILE}


def test_a_large_environment_fits_the_startup_pipe() -> None:
    import os

    script = _sandbox().startup_script({"BIG": "x" * 200_000})
    fd = sbx.startup_pipe(script)
    try:
        got = b""
        while chunk := os.read(fd, 1 << 16):
            got += chunk
    finally:
        os.close(fd)
    assert got.decode() == script


def test_the_environment_is_an_allow_list() -> None:
    base = {"PATH": "/usr/bin", "LANG": "C.UTF-8", "RAY_AUTH_TOKEN": "t", "RAY_AUTH_TOKEN_PATH": "/t",
            "AWS_SECRET_ACCESS_KEY": "k", "HOME": "/root", "CUDA_VISIBLE_DEVICES": "1"}
    env = sbx.command_env(base, {"TASK": "x"}, {"GODEL_AGENT_ID": "ag-1"}, Isolation.SANDBOX, home="/w")
    assert set(env) == {"PATH", "LANG", "CUDA_VISIBLE_DEVICES", "HOME", "TASK", "GODEL_AGENT_ID"}
    assert env["HOME"] == "/w" and env["PATH"].startswith("/usr/bin")
    plain = sbx.command_env(base, {}, {"GODEL_AGENT_ID": "ag-1"}, Isolation.NONE)
    assert "RAY_AUTH_TOKEN" not in plain and "RAY_AUTH_TOKEN_PATH" not in plain
    assert plain["AWS_SECRET_ACCESS_KEY"] == "k"  # isolation none: the operator's environment, knowingly


@pytest.mark.parametrize(("code", "reason"), [
    (152, "CPU time limit of 30 s reached"), (153, "file size limit of 100 MiB reached"),
    (125, "could not set the agent's limits"), (0, ""), (1, ""), (137, "")])
def test_a_breach_is_named_from_the_exit_status(code: int, reason: str) -> None:
    described = sbx.describe_breach(code, LIMITS)
    assert (reason in described) if reason else described == ""


def test_the_agent_uid_is_stable_and_in_its_range() -> None:
    policy = SandboxPolicy()
    uid = sbx.agent_uid("ag-123", policy)
    assert uid == sbx.agent_uid("ag-123", policy) != sbx.agent_uid("ag-124", policy)
    assert policy.uid_base <= uid < policy.uid_base + policy.uid_span


def test_limits_and_isolation_cross_the_wire() -> None:
    config = SpawnConfig(limits=AgentLimits(memory_mb=256, processes=32, cpu_time_s=9.5, open_files=64,
                                            workdir_mb=10), unshare_net=True)
    back = convert.spec_from_pb(pb.AgentSpec.FromString(convert.spec_to_pb(config).SerializeToString()))
    assert back.limits == config.limits and back.unshare_net
    assert convert.spec_from_pb(convert.spec_to_pb(SpawnConfig())).limits == AgentLimits()
    for isolation in (Isolation.SANDBOX, Isolation.NONE, None):
        cap = SiteCapacity(name="s", isolation=isolation)
        assert convert.capacity_from_pb(convert.capacity_to_pb(cap)).isolation == isolation
    assert convert.capacity_from_pb(pb.SiteCapacity(isolation=99)).isolation is None  # newer than us


@pytest.mark.parametrize("field", ["memory_mb", "processes", "open_files", "workdir_mb"])
def test_negative_limits_are_refused_on_the_wire(field: str) -> None:
    with pytest.raises(InvalidArgument, match=f"limits.{field}"):
        convert.limits_from_pb(pb.AgentLimits(**{field: -1}))


@pytest.mark.parametrize("value", [math.inf, math.nan, -1.0])
def test_non_finite_cpu_time_is_refused(value: float) -> None:
    with pytest.raises(InvalidArgument, match="limits.cpu_time_s"):
        convert.limits_from_pb(pb.AgentLimits(cpu_time_s=value))
    with pytest.raises(ValidationError):
        AgentLimits(cpu_time_s=value)


def test_isolation_none_only_when_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    for raw, expected in (("", Isolation.SANDBOX), ("none", Isolation.NONE), ("NONE", Isolation.NONE),
                          ("nonee", Isolation.SANDBOX), ("sandbox", Isolation.SANDBOX)):
        monkeypatch.setenv(ISOLATION_ENV, raw)
        assert isolation_from_env() == expected
    monkeypatch.delenv(ISOLATION_ENV)
    assert SandboxPolicy().isolation == Isolation.SANDBOX


def test_a_site_hides_its_token_and_key_from_agents(tmp_path: object) -> None:
    from godel_ray.site.serve import SiteConfig, agent_limits

    config = SiteConfig(auth_token_file="/etc/godel/site.token", tls_cert="/etc/godel/c.pem",
                        tls_key="/etc/godel/k.pem")
    limits = agent_limits(config)
    assert limits.sandbox.isolation == Isolation.SANDBOX
    assert {"/etc/godel/site.token", "/etc/godel/k.pem"} <= set(limits.sandbox.hidden_paths)
    assert "/etc/godel/c.pem" not in limits.sandbox.hidden_paths
    opened = agent_limits(SiteConfig(auth_token_file="/t", isolation="none"))  # type: ignore[arg-type]
    assert opened.sandbox.isolation == Isolation.NONE


def test_cluster_list_shows_isolation_none_as_a_warning() -> None:
    from godel_cli import safetext

    assert safetext.isolation(Isolation.NONE).style == "bold red" and "none" in str(safetext.isolation(Isolation.NONE))
    assert str(safetext.isolation(Isolation.SANDBOX)) == "sandbox" and str(safetext.isolation(None)) == "-"


def test_cgroup_paths_are_read_from_mountinfo_and_proc_cgroup() -> None:
    mountinfo = ("35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
                 "39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n"
                 "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n")
    v1, v2 = _mounts(mountinfo)
    assert v1 == {"memory": ("/sys/fs/cgroup/memory", "/"), "pids": ("/sys/fs/cgroup/pids", "/")}
    assert v2 == ("/sys/fs/cgroup/unified", "/")
    own_v1, own_v2 = _own("8:pids:/\n4:memory:/process_api/abc\n0::/\n")
    assert own_v1 == {"pids": "/", "memory": "/process_api/abc"} and own_v2 == "/"
