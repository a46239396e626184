"""Removing an agent's working directory: read-only directories included, symlinks never followed,
and (through ``AgentActor.terminate``, the real kill path) the same agent can be imported again.

Root ignores directory permissions, so each scenario runs as an unprivileged user
(``tests.unprivileged``): otherwise they would prove nothing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from godel_ray.agents.actor import AgentActor
from godel_ray.agents.snapshot import pack_workdir
from godel_ray.agents.workdir import remove_tree
from godel_ray.core.cluster_client import collect
from godel_ray.models import Agent, AgentStatus, SpawnConfig
from tests.unprivileged import scratch_dir, unprivileged


@pytest.fixture
def base() -> Iterator[Path]:
    with scratch_dir() as path:
        yield path


def make_read_only_tree(root: Path) -> None:
    """What `go mod download` or `chmod -R a-w` leaves behind."""
    (root / "ro" / "deep").mkdir(parents=True)
    (root / "ro" / "f.txt").write_text("f")
    (root / "ro" / "deep" / "g.txt").write_text("g")
    (root / "locked").mkdir()
    (root / "locked" / "h").write_text("h")
    (root / "ro" / "deep").chmod(0o555)
    (root / "ro").chmod(0o500)
    (root / "locked").chmod(0o000)


def test_plain_rmtree_leaves_files_under_read_only_directories(base: Path) -> None:
    """The control: what the kill path did before, in the same conditions, leaves files behind."""
    def scenario() -> None:
        tree = base / "w"
        tree.mkdir()
        make_read_only_tree(tree)
        shutil.rmtree(tree, ignore_errors=True)
        assert tree.exists()
    unprivileged(scenario)


def test_read_only_directories_are_removed(base: Path) -> None:
    def scenario() -> None:
        tree = base / "w"
        tree.mkdir()
        make_read_only_tree(tree)
        tree.chmod(0o500)  # the root itself read-only too
        assert remove_tree(tree)
        assert not tree.exists() and list(base.iterdir()) == []
        assert remove_tree(tree)  # idempotent
    unprivileged(scenario)


def test_symlinks_are_removed_never_followed(base: Path) -> None:
    """Links to a read-only directory outside: the links go, the outside keeps its files and modes."""
    def scenario() -> None:
        outside = base / "outside"
        (outside / "sub").mkdir(parents=True)
        (outside / "sub" / "keep").write_text("keep")
        (outside / "sub").chmod(0o500)
        tree = base / "w"
        tree.mkdir()
        os.symlink(outside / "sub", tree / "link-abs")
        os.symlink("../outside", tree / "link-rel")
        (tree / "d").mkdir()
        os.symlink(outside, tree / "d" / "deeper")
        (tree / "d").chmod(0o500)
        assert remove_tree(tree)
        assert not tree.exists()
        assert (outside / "sub" / "keep").read_text() == "keep"
        assert stat.S_IMODE((outside / "sub").stat().st_mode) == 0o500

        link = base / "root-link"  # a symlink as the path itself: only the link is removed
        os.symlink(outside, link)
        assert remove_tree(link)
        assert not os.path.lexists(link) and (outside / "sub" / "keep").exists()
        (outside / "sub").chmod(0o700)
    unprivileged(scenario)


def test_a_file_or_nothing_at_the_path() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "f"
        file.write_text("x")
        assert remove_tree(file) and not file.exists()
        assert remove_tree(Path(tmp) / "missing")


def test_a_killed_agent_with_read_only_dirs_can_be_imported_again(base: Path) -> None:
    """The real kill path: an agent's command leaves read-only directories; ``terminate`` removes
    its workdir all the same, so importing the same agent id into that path works afterwards."""
    def scenario() -> None:
        async def go() -> None:
            root = base / "agents"
            root.mkdir()
            agent = Agent(id="ag-readonly", config=SpawnConfig())
            actor = AgentActor(agent, str(root))
            await actor.start()
            made = collect([c async for c in actor.exec(
                "mkdir -p mod/cache/pkg && echo v1 > mod/cache/pkg/a.go && chmod -R a-w mod && echo data > keep")])
            assert made.exit_code == 0, made.stderr
            archive, digest = pack_workdir(actor.workdir(), 1024 * 1024)
            final = await actor.terminate("killed")
            assert final.status == AgentStatus.TERMINATED
            assert not (root / agent.id).exists()

            again = AgentActor(agent.model_copy(update={"epoch": 2}), str(root), archive=archive, sha256=digest)
            started = await again.start()
            assert started.status == AgentStatus.RUNNING
            back = collect([c async for c in again.exec("cat keep mod/cache/pkg/a.go")])
            assert back.stdout == "data\nv1\n", back.stderr
            await again.terminate("done")
            assert list(root.iterdir()) == []
        asyncio.run(go())
    unprivileged(scenario)
