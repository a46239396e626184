"""``python -m bench --only failover``: failover under injected faults, on real sites, default settings.

Every site here is registered with the default ``HealthSettings`` (what a user gets) and holds agents
with ``restart_policy=checkpoint`` that wrote a file and were checkpointed. Faults (``bench.faults``):

- **kill**: a fresh site is SIGKILLed (server and Ray head). Detection: until the federation's
  ``cluster.status`` event to offline (with the detector's evidence). Recovery: until every
  checkpointed agent answers ``exec`` elsewhere, with its file. Goal: recovery p99 <= 15 s.
- **stop**: the steady site is SIGSTOPped for 1-3 s, then SIGCONT;
- **partition**: the island site (own network namespace) loses its link for 1-3 s;
- **starve**: the steady site's processes get a few percent of one core for 5-10 s;
- **long partition**: the island loses its link until its agents were restored elsewhere (silence,
  then the grace period), then the link comes back: its stale copies must be removed.

For the transient faults (stop, partition, starve) nothing may fail over: every agent must stay
where it was, at its epoch, and answer again ("back": from the end of the fault until the cluster is
active and every agent answered). For all: duplicates (an agent with two live copies) and lost
agents (not answering within the deadline, or failed) must be 0. The short default runs a few trials
of each; ``--failover-transient N`` (N of each transient kind) and ``--failover-kills N`` make the long
run (>= 1,000 transient faults by hand: ``--failover-transient 334``).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import faults
from bench.stats import Row, Target
from godel_ray.errors import GodelError
from godel_ray.models import Agent, Cluster, ClusterStatus, FederationEvent, RestartPolicy, SpawnConfig
from godel_ray.site.launcher import SiteProcess, start_site

AGENTS_PER_SITE = 3
AGENT_CPUS = 0.01
CHECKPOINT_INTERVAL_S = 2.0
SITE_CPUS = 2
RECOVERY_GOAL_S = 15.0
DEADLINE_S = 120.0  # for anything to happen; past it, the agents count as lost
POLL_S = 0.1
EXEC_TIMEOUT_S = 30.0
PAUSE_S = (1.0, 3.0)
STARVE_S = (5.0, 10.0)
STARVE_CPU_FRACTION = 0.05


@dataclass
class FailoverOptions:
    kills: int = 3
    transient: int = 3  # trials of each transient kind
    long_partitions: int = 1
    seed: int = 0


@dataclass
class Tally:
    detection_s: dict[str, list[float]] = field(default_factory=dict)
    recovery_s: dict[str, list[float]] = field(default_factory=dict)
    back_s: dict[str, list[float]] = field(default_factory=dict)
    faults: Counter[str] = field(default_factory=Counter)
    spurious: Counter[str] = field(default_factory=Counter)
    offline_seen: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    lost: int = 0
    evidence: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def add(self, table: dict[str, list[float]], kind: str, value: float) -> None:
        table.setdefault(kind, []).append(value)


def wait_until(probe: Callable[[], Any], deadline_s: float = DEADLINE_S) -> Any:
    """``probe()``'s first truthy value (a GodelError counts as not yet), or None at the deadline."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        with contextlib.suppress(GodelError):
            value = probe()
            if value:
                return value
        time.sleep(POLL_S)
    return None


class Lab:
    """The bench's federation plus the sites this bench starts; it knows every site's token, so it
    can ask each cluster directly what it really hosts (not the federation's table)."""

    def __init__(self, fed: Any, root: Path) -> None:
        self.fed = fed
        self.proxy = fed.proxy
        self.root = root
        self.sites: dict[str, SiteProcess] = {s.name: s for s in fed.sites}

    # --- sites ------------------------------------------------------------------------------------

    def start(self, name: str) -> SiteProcess:
        return self.register(start_site(self.root, name, num_cpus=SITE_CPUS))

    def register(self, site: SiteProcess) -> SiteProcess:
        self.sites[site.name] = site
        self.proxy.registry.register(Cluster(id=site.name, endpoint=site.endpoint, region="failover",
                                             auth_token_file=str(site.token_file)))  # default health
        self.wait_status(site.name, ClusterStatus.ACTIVE)
        return site

    def drop(self, site: SiteProcess) -> None:
        with contextlib.suppress(GodelError):
            self.proxy.registry.unregister(site.name, force=True)
        site.terminate(timeout_s=20)
        self.sites.pop(site.name, None)

    def status_of(self, cluster_id: str) -> ClusterStatus | None:
        return next((h.status for h in self.proxy.registry.health() if h.cluster_id == cluster_id), None)

    def wait_status(self, cluster_id: str, status: ClusterStatus) -> bool:
        return bool(wait_until(lambda: self.status_of(cluster_id) is status))

    # --- agents -----------------------------------------------------------------------------------

    def spawn_checkpointed(self, cluster_id: str, n: int = AGENTS_PER_SITE) -> dict[str, str]:
        """``n`` checkpointed agents on ``cluster_id``, each with a file; returns id -> file content,
        once every one has a checkpoint holding its file."""
        agents: dict[str, str] = {}
        for _ in range(n):
            agent = self.proxy.spawn(SpawnConfig(cluster=cluster_id, cpus=AGENT_CPUS, labels={"bench": "failover"},
                                                 restart_policy=RestartPolicy.CHECKPOINT,
                                                 checkpoint_interval_s=CHECKPOINT_INTERVAL_S))
            self.proxy.exec(agent.id, f"echo {agent.id} > notes.txt", timeout_s=EXEC_TIMEOUT_S)
            agents[agent.id] = f"{agent.id}\n"
        seq = 0

        def checkpointed() -> bool:
            nonlocal seq
            for event in self.proxy.events(seq):
                seq = event.seq
                if (event.type == "agent.checkpointed" and event.agent_id in pending
                        and int(event.data.get("journal", "0")) >= 1):
                    pending.discard(event.agent_id)
            return not pending

        pending = set(agents)
        if not wait_until(checkpointed):
            raise RuntimeError(f"no checkpoint for {sorted(pending)} within {DEADLINE_S:g} s")
        return agents

    def answers(self, agent_id: str, expect: str) -> bool:
        try:
            return bool(self.proxy.exec(agent_id, "cat notes.txt", timeout_s=EXEC_TIMEOUT_S).stdout == expect)
        except GodelError:
            return False

    def placement(self, agent_ids: Iterator[str] | list[str]) -> dict[str, tuple[str, int]]:
        out = {}
        for agent_id in agent_ids:
            agent: Agent = self.proxy.status(agent_id)
            out[agent_id] = (agent.cluster_id, agent.epoch)
        return out

    def live_copies(self, agent_ids: set[str], skip: frozenset[str] = frozenset()) -> Counter[str]:
        """How many live copies of each agent the clusters themselves report (``skip``: unreachable)."""
        from godel_ray.control import factory
        from godel_ray.raykit.gateway import ClusterGateway

        copies: Counter[str] = Counter()
        for info in self.proxy.registry.list():
            cid = info.cluster.id
            if cid in skip:
                continue
            if info.cluster.is_local:
                listed = ClusterGateway(cid, factory.cluster_actor_handle(cid)).list_agents().get(EXEC_TIMEOUT_S)
            elif cid in self.sites:
                listed = self.sites[cid].list_agents()
            else:
                continue
            copies.update(a.id for a in listed if a.id in agent_ids and not a.status.is_final)
        return copies

    def events_after(self, seq: int) -> list[FederationEvent]:
        return list(self.proxy.events(seq))

    def last_seq(self) -> int:
        return max((e.seq for e in self.proxy.events()), default=0)


def _status_events(events: list[FederationEvent], cluster_id: str) -> list[FederationEvent]:
    return [e for e in events if e.type == "cluster.status" and e.cluster_id == cluster_id]


# --- trials --------------------------------------------------------------------------------------------

def kill_trial(lab: Lab, tally: Tally, i: int) -> None:
    site = lab.start(f"fo-kill-{i}")
    try:
        agents = lab.spawn_checkpointed(site.name)
        seq = lab.last_seq()
        killed_at = time.time()
        faults.kill(site)
        tally.faults["kill"] += 1
        recovered: dict[str, float] = {}

        def all_back() -> bool:
            for agent_id, expect in agents.items():
                if agent_id in recovered:
                    continue
                if lab.proxy.status(agent_id).cluster_id != site.name and lab.answers(agent_id, expect):
                    recovered[agent_id] = time.time()
            return len(recovered) == len(agents)

        wait_until(all_back)
        offline = next((e for e in _status_events(lab.events_after(seq), site.name) if e.data.get("to") == "offline"),
                       None)
        if offline is not None:
            tally.add(tally.detection_s, "kill", offline.ts - killed_at)
            tally.evidence[f"kill: {offline.data.get('evidence', '?')}"] += 1
        if len(recovered) == len(agents):
            tally.add(tally.recovery_s, "kill", max(recovered.values()) - killed_at)
        tally.lost += len(agents) - len(recovered)
        copies = lab.live_copies(set(agents), skip=frozenset({site.name}))
        tally.duplicates += sum(n - 1 for n in copies.values() if n > 1)
    finally:
        lab.drop(site)
    for agent_id in agents:
        with contextlib.suppress(GodelError):
            lab.proxy.kill(agent_id)


def transient_trial(lab: Lab, tally: Tally, kind: str, cluster_id: str, agents: dict[str, str],
                    inject: Callable[[], None]) -> None:
    """Inject a fault that must not fail anything over; check that nothing moved and all answer again."""
    before = lab.placement(list(agents))
    seq = lab.last_seq()
    started = time.time()
    inject()
    ended = time.time()
    tally.faults[kind] += 1

    def settled() -> bool:
        return lab.status_of(cluster_id) is ClusterStatus.ACTIVE and all(
            lab.answers(agent_id, expect) for agent_id, expect in agents.items())

    if wait_until(settled):
        tally.add(tally.back_s, kind, time.time() - ended)
    events = lab.events_after(seq)
    moves = _status_events(events, cluster_id)
    if moves:
        tally.add(tally.detection_s, kind, moves[0].ts - started)
    tally.offline_seen[kind] += sum(1 for e in moves if e.data.get("to") == "offline")
    after = lab.placement(list(agents))
    restored = {e.agent_id for e in events if e.type == "agent.restored" and e.agent_id in agents}
    moved = {a for a in agents if after[a] != before[a]} | restored
    tally.spurious[kind] += len(moved)
    tally.lost += sum(1 for a in agents if not lab.answers(a, agents[a]))
    copies = lab.live_copies(set(agents))
    tally.duplicates += sum(n - 1 for n in copies.values() if n > 1)


def long_partition_trial(lab: Lab, tally: Tally, island: faults.Island, agents: dict[str, str]) -> None:
    """Partition until the island's agents were restored elsewhere; heal; its stale copies must go."""
    assert island.site is not None
    name = island.site.name
    seq = lab.last_seq()
    cut_at = time.time()
    island.link(up=False)
    tally.faults["long partition"] += 1
    recovered: dict[str, float] = {}

    def all_elsewhere() -> bool:
        for agent_id, expect in agents.items():
            if agent_id not in recovered and lab.proxy.status(agent_id).cluster_id != name \
                    and lab.answers(agent_id, expect):
                recovered[agent_id] = time.time()
        return len(recovered) == len(agents)

    try:
        wait_until(all_elsewhere, DEADLINE_S + 30.0)
    finally:
        island.link(up=True)
    offline = next((e for e in _status_events(lab.events_after(seq), name) if e.data.get("to") == "offline"), None)
    if offline is not None:
        tally.add(tally.detection_s, "long partition", offline.ts - cut_at)
        tally.evidence[f"long partition: {offline.data.get('evidence', '?')}"] += 1
    if len(recovered) == len(agents):
        tally.add(tally.recovery_s, "long partition", max(recovered.values()) - cut_at)
    tally.lost += len(agents) - len(recovered)
    healed = time.time()
    site = island.site
    fenced = wait_until(lambda: lab.status_of(name) is ClusterStatus.ACTIVE and not hosted(site, set(agents)))
    if fenced:
        tally.add(tally.back_s, "long partition (stale copies removed)", time.time() - healed)
    copies = lab.live_copies(set(agents))
    tally.duplicates += sum(n - 1 for n in copies.values() if n > 1)
    for agent_id in agents:
        with contextlib.suppress(GodelError):
            lab.proxy.kill(agent_id)


def hosted(site: SiteProcess, agent_ids: set[str]) -> set[str]:
    """Which of ``agent_ids`` ``site`` itself still hosts a live copy of."""
    return {a.id for a in site.list_agents() if a.id in agent_ids and not a.status.is_final}


# --- the bench -----------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--failover-kills", type=int, default=None, metavar="N",
                        help="failover: sites killed, one fresh site each (default 3, quick 2)")
    parser.add_argument("--failover-transient", type=int, default=None, metavar="N",
                        help="failover: trials of each transient fault: stop, partition, starve (default 3, quick 2;"
                             " the long run: 334, i.e. >= 1,000 transient faults)")
    parser.add_argument("--failover-long-partitions", type=int, default=1, metavar="N",
                        help="failover: partitions held until the agents were restored elsewhere (default 1)")
    parser.add_argument("--failover-seed", type=int, default=0, metavar="N",
                        help="failover: seed for the fault durations (default 0)")


def options(args: argparse.Namespace, *, quick: bool) -> FailoverOptions:
    return FailoverOptions(
        kills=args.failover_kills if args.failover_kills is not None else (2 if quick else 3),
        transient=args.failover_transient if args.failover_transient is not None else (2 if quick else 3),
        long_partitions=args.failover_long_partitions, seed=args.failover_seed)


def run(fed: Any, root: Path, opt: FailoverOptions) -> list[Row]:
    rng = random.Random(opt.seed)
    lab = Lab(fed, root / "failover")
    tally = Tally()
    for i in range(opt.kills):
        _progress(f"kill trial {i + 1}/{opt.kills}")
        kill_trial(lab, tally, i)

    steady = lab.start("fo-steady")
    island: faults.Island | None = None
    why_no_netns = faults.netns_unavailable()
    if why_no_netns is None:
        island = faults.Island.create(lab.root, "fo-island", tag=rng.randrange(250), num_cpus=SITE_CPUS)
        assert island.site is not None
        lab.register(island.site)
    else:
        tally.notes.append(f"partition trials skipped: {why_no_netns}")
    try:
        steady_agents = lab.spawn_checkpointed(steady.name)
        island_agents = lab.spawn_checkpointed(island.site.name) if island and island.site else {}
        starve_how: set[str] = set()

        def stop() -> None:
            with faults.frozen(steady):
                time.sleep(rng.uniform(*PAUSE_S))

        def cut() -> None:
            assert island is not None
            island.link(up=False)
            try:
                time.sleep(rng.uniform(*PAUSE_S))
            finally:
                island.link(up=True)

        def starve() -> None:
            with faults.starved(steady, STARVE_CPU_FRACTION) as how:
                starve_how.add(how)
                time.sleep(rng.uniform(*STARVE_S))

        for i in range(opt.transient):  # round robin: every kind sees the same conditions over time
            _progress(f"transient faults, round {i + 1}/{opt.transient}")
            transient_trial(lab, tally, "stop", steady.name, steady_agents, stop)
            if island is not None and island.site is not None:
                transient_trial(lab, tally, "partition", island.site.name, island_agents, cut)
            transient_trial(lab, tally, "starve", steady.name, steady_agents, starve)
        if "busy" in starve_how:
            tally.notes.append("starvation by busy loops on every core (no writable cgroup): the control plane "
                               "starved too")
        if island is not None:
            for i in range(opt.long_partitions):
                _progress(f"long partition {i + 1}/{opt.long_partitions}")
                agents = island_agents if i == 0 else lab.spawn_checkpointed(island.site.name)  # type: ignore[union-attr]
                long_partition_trial(lab, tally, island, agents)
        for agent_id in steady_agents:
            with contextlib.suppress(GodelError):
                lab.proxy.kill(agent_id)
    finally:
        lab.drop(steady)
        if island is not None:
            with contextlib.suppress(GodelError):
                lab.proxy.registry.unregister(island.site.name if island.site else "", force=True)
            island.close()
    return rows(tally)


def rows(tally: Tally) -> list[Row]:
    out: list[Row] = []
    det_notes = {"kill": "until cluster.status -> offline", "long partition": "until cluster.status -> offline",
                 "stop": "first status change (degraded), if any", "partition": "first status change, if any",
                 "starve": "first status change, if any"}
    for kind, samples in tally.detection_s.items():
        out.append(Row(f"failover: detection, {kind}", "s", samples, note=det_notes.get(kind, "")))
    for kind, samples in tally.recovery_s.items():
        target = Target("p99_max", RECOVERY_GOAL_S) if kind == "kill" else None
        out.append(Row(f"failover: recovery, {kind}", "s", samples, target=target,
                       note="until every checkpointed agent answers exec elsewhere, with its file"))
    for kind, samples in tally.back_s.items():
        out.append(Row(f"failover: back after {kind}", "s", samples,
                       note="from the fault's end until active and every agent answered"))
    transient = sum(n for k, n in tally.faults.items() if k in ("stop", "partition", "starve"))
    out.append(Row(f"failover: spurious failovers ({transient} transient faults)", "agents",
                   [float(sum(tally.spurious.values()))], target=Target("max", 0),
                   note=", ".join(f"{k} {n}" for k, n in sorted(tally.spurious.items()))))
    out.append(Row("failover: offline verdicts during starvation", "events",
                   [float(tally.offline_seen.get("starve", 0))], target=Target("max", 0),
                   note="a slow site is degraded, never offline"))
    out.append(Row(f"failover: duplicate live copies ({sum(tally.faults.values())} faults)", "agents",
                   [float(tally.duplicates)], target=Target("max", 0)))
    out.append(Row("failover: lost agents", "agents", [float(tally.lost)], target=Target("max", 0)))
    faults_note = ", ".join(f"{k} x{n}" for k, n in sorted(tally.faults.items()))
    evidence = ", ".join(f"{k} x{n}" for k, n in sorted(tally.evidence.items()))
    out[-1].note = "; ".join(x for x in (f"faults: {faults_note}", f"offline evidence: {evidence}" if evidence else "",
                                         f"offline verdicts: {dict(tally.offline_seen)}", *tally.notes) if x)
    return out


def _progress(text: str) -> None:
    print(f"bench: failover: {text}", file=sys.stderr, flush=True)


__all__ = ["FailoverOptions", "run"]
