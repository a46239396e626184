"""Live migration end to end on real sites (separate processes, each with its own Ray cluster):
local -> remote -> remote -> local with files, journal, id and labels intact; commands during the
move; files written, deleted and renamed during the pre-copy arrive exact; refusals; and faults: the
target dies during the pre-copy, the agent stays exactly once.

Workdir streams go in chunks of ``CHUNK_BYTES`` here (``GODEL_TRANSFER_CHUNK_BYTES``, inherited by
the control plane and the sites): a pre-copy of a few MB then takes long enough to write during it."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from godel_ray.client.proxy import TransparentClusterProxy
from godel_ray.control import factory
from godel_ray.errors import AgentNotFound, ClusterNotFound, InvalidArgument
from godel_ray.models import Agent, AgentStatus, ExecChunk, ExecResult, MigrationPhase, SpawnConfig
from godel_ray.raykit.gateway import ClusterGateway
from godel_ray.settings import LIMITS, TRANSFER_CHUNK_ENV
from tests.e2e.migration_helpers import (
    control_plane,
    finished,
    live_copies,
    phase_of,
    register,
    wait_for,
)

pytestmark = pytest.mark.ray
CHUNK_BYTES = 256 * 1024
PRE_COPY_OR_LATER = {MigrationPhase.PRECOPYING.value, MigrationPhase.FREEZING.value, MigrationPhase.DELTA.value,
                     MigrationPhase.ACTIVATING.value}


@dataclass
class Plane:
    state_dir: Path
    proxy: TransparentClusterProxy
    sites: dict[str, Any]
    agent_id: str = ""
    moves: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory, site_factory: Any) -> Iterator[Plane]:
    state_dir = tmp_path_factory.mktemp("godel-migration")
    before = os.environ.get(TRANSFER_CHUNK_ENV)
    os.environ[TRANSFER_CHUNK_ENV] = str(CHUNK_BYTES)
    try:
        sites = {name: site_factory(name, num_cpus=2) for name in ("west", "east")}
        with control_plane(state_dir) as proxy:
            for site in sites.values():
                register(proxy, site)
            yield Plane(state_dir=state_dir, proxy=proxy, sites=sites)
    finally:
        if before is None:
            os.environ.pop(TRANSFER_CHUNK_ENV, None)
        else:
            os.environ[TRANSFER_CHUNK_ENV] = before


def _copies_everywhere(plane: Plane, agent_id: str) -> dict[str, int]:
    return {name: len(live_copies(site, agent_id)) for name, site in plane.sites.items() if site.proc.poll() is None}


def test_local_to_remote_with_a_running_and_a_waiting_command(plane: Plane) -> None:
    proxy = plane.proxy
    agent = proxy.spawn(SpawnConfig(model="m", labels={"team": "mig"}, cluster="local"))
    assert agent.cluster_id == "local"
    plane.agent_id = agent.id
    assert proxy.exec(agent.id, "echo kept > notes.txt").exit_code == 0
    local_pwd = proxy.exec(agent.id, "pwd").stdout.strip()

    chunks: list[ExecChunk] = []
    first_chunk = threading.Event()

    def stream() -> None:  # runs until the test lets it end (a file it waits for, made from outside)
        for chunk in proxy.exec_stream(agent.id, "echo begin; while [ ! -e go ]; do sleep 0.05; done; echo end"):
            chunks.append(chunk)
            first_chunk.set()

    streamer = threading.Thread(target=stream)
    streamer.start()
    assert first_chunk.wait(60), "the streaming command never started"
    started = proxy.migrate(agent.id, "west", wait=False)
    assert started.source == "local" and started.target == "west" and started.finished_at is None
    # the freeze waits for the streaming command (busy: WAIT, the source serves until idle); once it
    # ended the source freezes, and a command sent from then on waits and is served by the new copy
    wait_for(lambda: phase_of(proxy, started.id) == MigrationPhase.FREEZING.value, "the freeze", poll_s=0.02)
    (Path(local_pwd) / "go").touch()  # the running command ends: the freeze completes

    def frozen_or_moved() -> bool:
        now = proxy.status(agent.id)
        return now.status is AgentStatus.MIGRATING or now.cluster_id == "west"

    wait_for(frozen_or_moved, "the source to freeze", poll_s=0.02)
    waiting: list[ExecResult] = []
    sender = threading.Thread(target=lambda: waiting.append(proxy.exec(agent.id, "pwd; cat notes.txt")))
    sender.start()

    done = wait_for(lambda: finished(proxy, started.id), "the migration to finish")
    streamer.join(60)
    sender.join(60)
    assert done.phase is MigrationPhase.COMPLETED, done.error
    assert (done.epoch_from, done.epoch_to) == (agent.epoch, agent.epoch + 1)
    assert done.bytes_moved > 0 and done.downtime_s is not None
    assert [s.phase for s in done.phases][-3:] == [MigrationPhase.COMMITTING, MigrationPhase.CLEANING_UP,
                                                    MigrationPhase.COMPLETED]
    # the running command finished on the source, whole
    assert chunks[-1].result is not None and chunks[-1].result.exit_code == 0
    assert "".join(c.data for c in chunks if c.result is None) == "begin\nend\n"
    # the waiting command ran after the move, on the new copy, and saw the files
    assert len(waiting) == 1 and waiting[0].exit_code == 0
    new_pwd, notes = waiting[0].stdout.splitlines()
    assert notes == "kept" and new_pwd != local_pwd

    moved = proxy.status(agent.id)
    assert (moved.id, moved.cluster_id, moved.epoch) == (agent.id, "west", agent.epoch + 1)
    assert moved.config.labels == {"team": "mig"} and moved.status is AgentStatus.RUNNING
    assert [a.id for a in proxy.list()].count(agent.id) == 1
    assert [a.epoch for a in live_copies(plane.sites["west"], agent.id)] == [agent.epoch + 1]
    types = {e.type for e in proxy.events() if e.agent_id == agent.id}
    assert {"migration.started", "migration.committing", "migration.completed"} <= types
    plane.moves.append(done.id)


def test_remote_to_remote_then_remote_to_local(plane: Plane) -> None:
    proxy, agent_id = plane.proxy, plane.agent_id
    assert agent_id, "needs the agent of the previous test"
    to_east = proxy.migrate(agent_id, "east")
    assert to_east.phase is MigrationPhase.COMPLETED, to_east.error
    assert proxy.exec(agent_id, "cat notes.txt").stdout == "kept\n"
    assert live_copies(plane.sites["west"], agent_id) == []
    assert [a.epoch for a in live_copies(plane.sites["east"], agent_id)] == [to_east.epoch_to]
    assert proxy.exec(agent_id, "echo more >> notes.txt").exit_code == 0

    home = proxy.migrate(agent_id, "local")
    assert home.phase is MigrationPhase.COMPLETED, home.error
    agent = proxy.status(agent_id)
    assert (agent.cluster_id, agent.epoch, agent.config.labels) == ("local", home.epoch_to, {"team": "mig"})
    assert proxy.exec(agent_id, "cat notes.txt").stdout == "kept\nmore\n"
    assert _copies_everywhere(plane, agent_id) == {"west": 0, "east": 0}
    journal = [e.command for e in proxy.journal(agent_id)]
    assert journal[0] == "echo kept > notes.txt" and "echo more >> notes.txt" in journal
    history = proxy.migrations(agent_id)
    assert [(m.source, m.target) for m in history] == [("local", "west"), ("west", "east"), ("east", "local")]
    assert [a.id for a in proxy.list(labels={"team": "mig"})] == [agent_id]


def test_refusals_are_clear_and_change_nothing(plane: Plane) -> None:
    proxy, agent_id = plane.proxy, plane.agent_id
    with pytest.raises(InvalidArgument, match="already runs on local"):
        proxy.migrate(agent_id, "local")
    with pytest.raises(ClusterNotFound, match="not registered"):
        proxy.migrate(agent_id, "nowhere")
    with pytest.raises(AgentNotFound):
        proxy.migrate("ag-000000000000", "west")
    assert len(proxy.migrations(agent_id)) == 3
    assert proxy.status(agent_id).cluster_id == "local"


def _local_copies(agent_id: str) -> list[Agent]:
    """The ``local`` runtime's own live copies of ``agent_id`` (through its ClusterActor, not the table)."""
    gateway = ClusterGateway("local", factory.cluster_actor_handle("local"))
    return [a for a in gateway.list_agents().get(timeout_s=30) if a.id == agent_id and not a.status.is_final]


def test_kill_during_a_migration_wins_and_no_copy_survives(plane: Plane) -> None:
    proxy = plane.proxy
    agent = proxy.spawn(SpawnConfig(model="doomed", labels={"fault": "kill"}, cluster="local"))
    assert proxy.exec(agent.id, "head -c 48000000 /dev/urandom > big.bin").exit_code == 0  # a move that takes a while
    started = proxy.migrate(agent.id, "west", wait=False)
    wait_for(lambda: phase_of(proxy, started.id) in PRE_COPY_OR_LATER, "the pre-copy to start", poll_s=0.02)
    killed = proxy.kill(agent.id)
    assert killed.status is AgentStatus.TERMINATED

    done = wait_for(lambda: finished(proxy, started.id), "the move to end")
    if done.phase is MigrationPhase.ROLLED_BACK:
        # the kill landed first: the commit was refused, or (protocol v2: the source runs during the
        # pre-copy) the killed source ended its stream before the commit was reached
        assert "commit failed" in done.error or "killed by user" in done.error, done.error
    else:  # the commit landed first: the kill followed the agent to the target
        assert done.phase is MigrationPhase.COMPLETED, done.error
    after = proxy.status(agent.id)
    assert after.status is AgentStatus.TERMINATED, after
    wait_for(lambda: not live_copies(plane.sites["west"], agent.id) and not _local_copies(agent.id),
             "no copy of the killed agent anywhere")
    assert proxy.status(agent.id).status is AgentStatus.TERMINATED  # and it stays killed
    assert [a.id for a in proxy.list()].count(agent.id) == 1


def test_a_journal_of_130_commands_of_64_kib_migrates_site_to_site(plane: Plane) -> None:
    """8.5 MB of journal: over the gRPC message limit as one header, so it travels as its own section."""
    proxy = plane.proxy
    agent = proxy.spawn(SpawnConfig(model="m", labels={"team": "journal"}, cluster="west"))
    filler = "x" * (LIMITS.max_command_bytes - 64)
    commands = [f": {i} {filler}" for i in range(130)]
    for command in commands:
        assert proxy.exec(agent.id, command).exit_code == 0
    assert sum(len(c) for c in commands) > LIMITS.max_message_bytes
    moved = proxy.migrate(agent.id, "east")  # exported over gRPC by west, imported over gRPC by east
    assert moved.phase is MigrationPhase.COMPLETED, moved.error
    assert proxy.status(agent.id).cluster_id == "east"
    assert [a.epoch for a in live_copies(plane.sites["east"], agent.id)] == [moved.epoch_to]
    assert live_copies(plane.sites["west"], agent.id) == []
    # home to local: the journal is then read from the agent itself (a site's is mirrored from events)
    home = proxy.migrate(agent.id, "local")
    assert home.phase is MigrationPhase.COMPLETED, home.error
    assert [e.command for e in proxy.journal(agent.id)] == commands
    assert live_copies(plane.sites["east"], agent.id) == []
    proxy.kill(agent.id)


TREE_HASH = ("find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-64; "
             "find . -printf '%y %p %l\\n' | LC_ALL=C sort | sha256sum | cut -c1-64")
WRITER = ("i=0; echo started; "
          "while [ ! -e w/stop ]; do i=$((i+1)); echo $i > w/f$i; head -c 65536 /dev/urandom > w/r$i; "
          "if [ $i -gt 2 ]; then rm w/f$((i-2)); mv w/r$((i-1)) w/m$((i-1)); fi; sleep 0.02; done; "
          "mv w/big.bin w/big2.bin; rm -r w/gone; mkdir -p w/new/deep; echo x > w/new/deep/y; "
          "ln -s ../w/new/deep/y w/link; date +%s.%N > w/ended; " + TREE_HASH)


@pytest.mark.parametrize(("source", "target"), [("local", "west"), ("west", "east")])
def test_files_written_deleted_and_renamed_during_the_pre_copy_arrive_exact(plane: Plane, source: str,
                                                                          target: str) -> None:
    """A command keeps writing, deleting and renaming in the workdir while the pre-copy streams it;
    the tree hash it prints as it ends (the tree at the freeze) is the tree hash after the move."""
    proxy = plane.proxy
    agent = proxy.spawn(SpawnConfig(model="m", labels={"team": "precopy"}, cluster=source))
    setup = proxy.exec(agent.id, "mkdir -p w/gone && echo bye > w/gone/x && head -c 8000000 /dev/urandom > w/big.bin"
                                 " && pwd")
    assert setup.exit_code == 0
    workdir = Path(setup.stdout.strip())
    out: list[ExecChunk] = []
    began = threading.Event()

    def write() -> None:
        for chunk in proxy.exec_stream(agent.id, WRITER):
            out.append(chunk)
            began.set()

    writer = threading.Thread(target=write)
    writer.start()
    assert began.wait(60), "the writer never started"
    started = proxy.migrate(agent.id, target, wait=False)
    wait_for(lambda: phase_of(proxy, started.id) in PRE_COPY_OR_LATER, "the pre-copy", poll_s=0.02)
    (workdir / "w" / "stop").touch()  # the writer was writing when the pre-copy began; now it ends
    done = wait_for(lambda: finished(proxy, started.id), "the move")
    writer.join(60)
    assert done.phase is MigrationPhase.COMPLETED, done.error
    assert out[-1].result is not None and out[-1].result.exit_code == 0
    lines = "".join(c.data for c in out if c.result is None).splitlines()
    at_freeze = lines[-2:]
    assert len(at_freeze) == 2 and all(len(h) == 64 for h in at_freeze)
    after = proxy.exec(agent.id, TREE_HASH)
    assert (proxy.status(agent.id).cluster_id, after.stdout.splitlines()) == (target, at_freeze)
    assert done.bytes_moved > 8_000_000
    precopy = next(s.at for s in done.phases if s.phase is MigrationPhase.PRECOPYING)
    ended = float(proxy.exec(agent.id, "cat w/ended").stdout)
    assert ended > precopy  # the writer was still writing after the pre-copy began
    proxy.kill(agent.id)


def test_target_dies_during_import_rolls_back_exactly_once(plane: Plane) -> None:
    proxy, doomed = plane.proxy, plane.sites["east"]  # the last test: east dies here
    agent = proxy.spawn(SpawnConfig(model="big", labels={"fault": "import"}, cluster="local"))
    setup = proxy.exec(agent.id, "echo safe > notes.txt && head -c 48000000 /dev/urandom > big.bin")
    assert setup.exit_code == 0
    started = proxy.migrate(agent.id, "east", wait=False)
    wait_for(lambda: phase_of(proxy, started.id) == MigrationPhase.PRECOPYING.value, "the pre-copy to start",
             poll_s=0.02)
    doomed.kill()
    done = wait_for(lambda: finished(proxy, started.id), "the rollback")
    assert done.phase is MigrationPhase.ROLLED_BACK and "pre_copy failed" in done.error
    back = proxy.status(agent.id)
    assert (back.cluster_id, back.epoch, back.status) == ("local", agent.epoch, AgentStatus.RUNNING)
    assert proxy.exec(agent.id, "cat notes.txt && wc -c < big.bin").stdout == "safe\n48000000\n"
    assert [a.id for a in proxy.list()].count(agent.id) == 1
    assert all(a.id != agent.id for a in plane.sites["west"].list_agents())  # east died with its Ray cluster

