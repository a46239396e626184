"""Fault injection against real site processes: kill, freeze, partition, starve.

Used by the failover bench (``bench.failover_bench``) and the chaos tests. Every fault acts on a
site's two sessions (the ``swarmctl site serve`` process and the Ray head it started, with the
head's workers: the site's agents), found by session id, never by process name; every fault is
undone (or its processes gone) when its context ends, whatever happened inside.

- ``kill(site)``: SIGKILL, the site's process is gone (connections refused);
- ``frozen(site)``: SIGSTOP every process of the site until the context ends, then SIGCONT (a
  frozen machine: nothing answers, not even TCP keepalive);
- ``Island``: a site in its own network namespace behind a veth pair; ``island.link(up=False)``
  partitions it: packets to it are dropped, silently (Linux, root: ``ip netns``);
- ``starved(site, cpu_fraction)``: the site's processes in a cgroup with a CPU quota (cgroup v1
  ``cpu`` or v2 ``cpu.max``), else, where cgroups cannot be written, busy processes on every core
  (then the whole machine is starved, control plane included: the report says which).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from godel_ray.raykit.heads import session_pids
from godel_ray.site.launcher import SiteProcess, start_site

IP_TIMEOUT_S = 10.0
CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")
CGROUP_V2 = Path("/sys/fs/cgroup")
CFS_PERIOD_US = 100_000


def site_pids(site: SiteProcess) -> list[int]:
    """Every process of the site: its server's session and its Ray head's."""
    pids = session_pids(site.proc.pid)
    if site.head_sid:
        pids += session_pids(site.head_sid)
    return sorted(set(pids))


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def kill(site: SiteProcess) -> None:
    """SIGKILL the site's server and its Ray head (with its workers): the site's death."""
    site.kill()


@contextlib.contextmanager
def frozen(site: SiteProcess) -> Iterator[list[int]]:
    """SIGSTOP every process of the site for the duration of the context; SIGCONT after, always."""
    pids = site_pids(site)
    _signal_all(pids, signal.SIGSTOP)
    try:
        yield pids
    finally:
        _signal_all(pids, signal.SIGCONT)


# --- partition ---------------------------------------------------------------------------------------

def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=check)


def netns_unavailable() -> str | None:
    """Why a network namespace cannot be made here (None when it can)."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    name = f"godel-probe-{uuid.uuid4().hex[:8]}"
    probe = ip("netns", "add", name, check=False)
    if probe.returncode != 0:
        return f"network namespaces are not permitted here: `ip netns add` said {probe.stderr.strip()!r}"
    ip("netns", "del", name, check=False)
    return None


@dataclass
class Island:
    """A network namespace with a veth to the host (10.213.N.0/30) and a site serving inside it."""

    namespace: str
    host_veth: str
    peer_veth: str
    host_address: str
    site_address: str
    site: SiteProcess | None = None

    @classmethod
    def create(cls, tmp_dir: Path, name: str, tag: int, *, num_cpus: float = 2,
               extra: list[str] | None = None) -> Island:
        """Make the namespace and the veth pair, start the site inside. ``tag`` (0-249) picks the
        namespace, the interfaces and the subnet: use one per island alive at once."""
        subnet = f"10.213.{tag % 250}"
        island = cls(namespace=f"godel-{name}-{tag}", host_veth=f"gh{tag}{os.getpid() % 10000}",
                     peer_veth=f"gp{tag}{os.getpid() % 10000}", host_address=f"{subnet}.1",
                     site_address=f"{subnet}.2")
        ip("netns", "add", island.namespace)
        try:
            peer = island.peer_veth
            ip("link", "add", island.host_veth, "type", "veth", "peer", "name", peer)
            ip("link", "set", peer, "netns", island.namespace)
            ip("addr", "add", f"{island.host_address}/30", "dev", island.host_veth)
            ip("link", "set", island.host_veth, "up")
            inside = ("netns", "exec", island.namespace, "ip")
            ip(*inside, "addr", "add", f"{island.site_address}/30", "dev", peer)
            ip(*inside, "link", "set", peer, "up")
            ip(*inside, "link", "set", "lo", "up")  # the site's own Ray head runs on the namespace's loopback
            island.site = start_site(tmp_dir, name, num_cpus=num_cpus, host=island.site_address, extra=extra,
                                     prefix_cmd=["ip", "netns", "exec", island.namespace])
        except BaseException:
            island.close()
            raise
        return island

    def link(self, up: bool) -> None:
        """Partition (``up=False``) or heal: the namespace's end of the veth goes down or up.

        Packets to the site then go nowhere, silently, as in a real partition (the host keeps its
        route, so nothing else answers for the site). Taking the *host's* end down instead removes
        the route, and packets leave by the default route, where a gateway may answer for the
        site with a TCP reset: that reads as "connection refused", which is not a partition.
        """
        ip("netns", "exec", self.namespace, "ip", "link", "set", self.peer_veth, "up" if up else "down")

    def close(self) -> None:
        if self.site is not None:
            self.site.terminate(timeout_s=20)
        ip("link", "del", self.host_veth, check=False)
        ip("netns", "del", self.namespace, check=False)


# --- CPU starvation ----------------------------------------------------------------------------------

def _cgroup_dir() -> tuple[Path, str] | None:
    """(parent directory, "v1" or "v2") of a writable CPU cgroup hierarchy, or None."""
    if (CGROUP_V1_CPU / "cpu.cfs_quota_us").exists() and os.access(CGROUP_V1_CPU, os.W_OK):
        return CGROUP_V1_CPU, "v1"
    controllers = CGROUP_V2 / "cgroup.controllers"
    if controllers.exists() and os.access(CGROUP_V2, os.W_OK) and "cpu" in controllers.read_text().split():
        return CGROUP_V2, "v2"
    return None


@contextlib.contextmanager
def starved(site: SiteProcess, cpu_fraction: float) -> Iterator[str]:
    """Hold the site's processes to ``cpu_fraction`` of one core for the duration of the context.

    Yields how: ``"cgroup"`` (only the site starves) or ``"busy"`` (no writable cgroup: busy loops on
    every core starve the whole machine). Everything is undone at the end, always.
    """
    found = _cgroup_dir()
    if found is None:
        with _busy_everywhere():
            yield "busy"
        return
    parent, version = found
    group = parent / f"godel-starve-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    quota = max(1000, int(CFS_PERIOD_US * cpu_fraction))
    moved: list[int] = []
    try:
        if version == "v1":
            (group / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            (group / "cpu.max").write_text(f"{quota} {CFS_PERIOD_US}")
        for pid in site_pids(site):
            with contextlib.suppress(OSError):  # exited meanwhile
                (group / "cgroup.procs").write_text(str(pid))
                moved.append(pid)
        yield "cgroup"
    finally:
        for pid in _cgroup_procs(group) or moved:
            with contextlib.suppress(OSError):
                (parent / "cgroup.procs").write_text(str(pid))
        with contextlib.suppress(OSError):
            group.rmdir()


def _cgroup_procs(group: Path) -> list[int]:
    try:
        return [int(x) for x in (group / "cgroup.procs").read_text().split()]
    except OSError:
        return []


@contextlib.contextmanager
def _busy_everywhere() -> Iterator[None]:
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
             for _ in range(2 * (os.cpu_count() or 1))]
    try:
        yield
    finally:
        for proc in loops:
            proc.kill()
        for proc in loops:
            proc.wait(10)


__all__ = ["Island", "frozen", "ip", "kill", "netns_unavailable", "site_pids", "starved"]
