"""A cgroup per agent, where this process may make one: memory and processes bounded for each of
its commands as a whole, and a record of which limit a command hit. Optional; no ray here.

rlimits (``godel_ray.agents.sandbox``) bound each process; a cgroup bounds the sum (a hundred
processes of 1 GiB each) and, unlike an rlimit, leaves a trace: ``oom_kill`` in the memory
controller, ``max`` in ``pids.events``. That trace (its change over one command: an agent runs one command at
a time) is how a command's result can say "memory limit of 256 MiB reached" rather than "killed".
The cgroup is made once per agent process and reused by every command: making and removing a
memory cgroup per command costs the kernel more than the move of one process into it.

Both hierarchies are handled: cgroup v1 (``memory`` and ``pids`` controllers mounted separately)
and v2 (one tree; the cgroup this process is in must be able to delegate ``memory`` and ``pids``
to a child). ``AgentCgroup.create`` returns ``None`` where neither works (no write access, a
read-only cgroupfs, v2 without delegation): the commands then run with rlimits only.

Invariants: a cgroup is created under this process's own cgroup, in ``godel-sandbox/``, named
``<agent id>-<pid of the agent's process>``; the agent's end removes it (``AgentActor.terminate``,
through ``process.release_agent_cgroup``), and ``sweep`` removes those whose process is gone (an
agent's process is killed when the agent ends), so none outlives its agent for long.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PARENT = "godel-sandbox"
SANDBOX_INIT = 1  # bwrap's init in the sandbox is in the cgroup too: it does not count against the agent
REMOVE_ATTEMPTS = 50
REMOVE_PAUSE_S = 0.02  # between rmdir attempts while the command's last processes exit
_UNAVAILABLE: list[str] = []  # set once creation failed in this process: don't try every command


def _mounts(mountinfo: str) -> tuple[dict[str, tuple[str, str]], tuple[str, str] | None]:
    """From /proc/self/mountinfo: v1 controller -> (mountpoint, mount root), and the v2 mount."""
    v1: dict[str, tuple[str, str]] = {}
    v2: tuple[str, str] | None = None
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        root, mountpoint, fstype = fields[3], fields[4], rfields[0]
        if fstype == "cgroup2" and v2 is None:
            v2 = (mountpoint, root)
        elif fstype == "cgroup":
            for option in rfields[2].split(","):
                if option in ("memory", "pids"):
                    v1.setdefault(option, (mountpoint, root))
    return v1, v2


def _own(proc_cgroup: str) -> tuple[dict[str, str], str | None]:
    """From /proc/self/cgroup: v1 controller -> our path, and our v2 path."""
    v1: dict[str, str] = {}
    v2: str | None = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        for name in controllers.split(","):
            if name in ("memory", "pids"):
                v1[name] = path
    return v1, v2


def _join(mountpoint: str, mount_root: str, path: str) -> Path:
    rel = path[len(mount_root):] if mount_root != "/" and path.startswith(mount_root) else path
    return Path(mountpoint) / rel.lstrip("/")


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def _read_counter(path: Path, key: str) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    return 0


@dataclass
class AgentCgroup:
    """One agent's cgroup(s): ``dirs`` are the v1 memory and pids directories, or the one v2 directory."""

    dirs: tuple[Path, ...]
    version: int
    memory_mb: int
    processes: int

    @classmethod
    def create(cls, name: str, memory_mb: int, processes: int) -> AgentCgroup | None:
        """Make and configure the cgroup; ``None`` (and a debug log) where this process cannot."""
        if _UNAVAILABLE:
            return None
        try:
            mounts_v1, mount_v2 = _mounts(Path("/proc/self/mountinfo").read_text())
            own_v1, own_v2 = _own(Path("/proc/self/cgroup").read_text())
            if "memory" in mounts_v1 and "pids" in mounts_v1 and "memory" in own_v1 and "pids" in own_v1:
                return cls._create_v1(name, memory_mb, processes, mounts_v1, own_v1)
            if mount_v2 is not None and own_v2 is not None and not mounts_v1:
                return cls._create_v2(name, memory_mb, processes, mount_v2, own_v2)
            raise OSError("no memory and pids controllers found")
        except OSError as exc:
            log.debug("no cgroup for sandboxed commands here (%s): rlimits only", exc)
            _UNAVAILABLE.append(str(exc))
            return None

    @classmethod
    def _create_v1(cls, name: str, memory_mb: int, processes: int,
                   mounts: dict[str, tuple[str, str]], own: dict[str, str]) -> AgentCgroup:
        made: list[Path] = []
        try:
            for controller in ("memory", "pids"):
                mountpoint, root = mounts[controller]
                directory = _join(mountpoint, root, own[controller]) / PARENT / name
                directory.mkdir(parents=True, exist_ok=True)
                made.append(directory)
            memory, pids = made
            limit = str(memory_mb * 1024 * 1024)
            _write(memory / "memory.limit_in_bytes", limit)
            if (memory / "memory.memsw.limit_in_bytes").exists():  # swap must not be a way round
                with contextlib.suppress(OSError):
                    _write(memory / "memory.memsw.limit_in_bytes", limit)
            _write(pids / "pids.max", str(processes + SANDBOX_INIT))
        except OSError:
            for directory in made:
                with contextlib.suppress(OSError):
                    directory.rmdir()
            raise
        return cls(dirs=(memory, pids), version=1, memory_mb=memory_mb, processes=processes)

    @classmethod
    def _create_v2(cls, name: str, memory_mb: int, processes: int, mount: tuple[str, str],
                   own: str) -> AgentCgroup:
        parent = _join(mount[0], mount[1], own) / PARENT
        parent.mkdir(exist_ok=True)
        # Our own cgroup holds processes (us), so it cannot delegate; ``godel-sandbox`` holds none.
        _write(parent.parent / "cgroup.subtree_control", "+memory +pids")
        _write(parent / "cgroup.subtree_control", "+memory +pids")
        directory = parent / name
        directory.mkdir(exist_ok=True)
        try:
            _write(directory / "memory.max", str(memory_mb * 1024 * 1024))
            with contextlib.suppress(OSError):
                _write(directory / "memory.swap.max", "0")
            _write(directory / "pids.max", str(processes + SANDBOX_INIT))
        except OSError:
            with contextlib.suppress(OSError):
                directory.rmdir()
            raise
        return cls(dirs=(directory,), version=2, memory_mb=memory_mb, processes=processes)

    def add(self, pid: int) -> None:
        """Move ``pid`` in (every hierarchy); its later children start inside."""
        for directory in self.dirs:
            _write(directory / "cgroup.procs", str(pid))

    def counters(self) -> tuple[int, int]:
        """(processes the kernel killed for memory, forks it refused), since the cgroup was made."""
        if self.version == 1:
            memory, pids = self.dirs
            return (_read_counter(memory / "memory.oom_control", "oom_kill"),
                    _read_counter(pids / "pids.events", "max"))
        (directory,) = self.dirs
        return _read_counter(directory / "memory.events", "oom_kill"), _read_counter(directory / "pids.events", "max")

    def breaches(self, since: tuple[int, int] = (0, 0)) -> list[str]:
        """The limits hit after ``since`` (``counters()`` before the command), as sentences."""
        now = self.counters()
        oom_kills, refused = now[0] - since[0], now[1] - since[1]
        out: list[str] = []
        if oom_kills > 0:
            out.append(f"memory limit of {self.memory_mb} MiB reached: the kernel killed "
                       f"{oom_kills} process{'es' if oom_kills > 1 else ''} (out of memory)")
        if refused > 0:
            out.append(f"process limit of {self.processes} reached: {refused} new "
                       f"process{'es were' if refused > 1 else ' was'} refused")
        return out

    def exists(self) -> bool:
        return all(directory.is_dir() for directory in self.dirs)

    def try_remove(self) -> bool:
        """One attempt: True when every directory is gone."""
        left = []
        for directory in self.dirs:
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                left.append(directory)
        self.dirs = tuple(left)
        return not left

    def remove(self) -> None:
        """Remove the cgroup once its processes are gone (bounded retries; logged if it stays)."""
        for directory in self.dirs:
            for _ in range(REMOVE_ATTEMPTS):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(REMOVE_PAUSE_S)  # the last processes are still exiting
            else:
                log.warning("cgroup %s still busy; left in place", directory)


def sweep(parent_dirs: tuple[Path, ...]) -> int:
    """Remove the cgroups in ``parent_dirs`` (``godel-sandbox/`` directories) whose agent process is gone."""
    removed = 0
    for parent in parent_dirs:
        with contextlib.suppress(OSError):
            for child in parent.iterdir():
                _, _, pid = child.name.rpartition("-")
                if child.is_dir() and pid.isdigit() and not Path(f"/proc/{pid}").exists():
                    with contextlib.suppress(OSError):  # busy or gone: a later sweep
                        child.rmdir()
                        removed += 1
    return removed


def available() -> bool:
    """Whether this process can give commands a cgroup (tries once, by making and removing one)."""
    probe = AgentCgroup.create(f"probe-{os.getpid()}", 64, 64)
    if probe is None:
        return False
    probe.remove()
    return True


__all__ = ["AgentCgroup", "available", "sweep"]
