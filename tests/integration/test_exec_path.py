"""The exec path on a real control plane and a real site: one hop to a ``local`` agent's actor (its
handle cached with its epoch, fenced by the actor itself), and collect mode for a remote agent.

One module-scoped plane: the control plane's Ray head and one site (its own Ray head, a separate
process).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from godel_ray.client.policy import Location
from godel_ray.client.proxy import TransparentClusterProxy, connect
from godel_ray.core.cluster_client import collect
from godel_ray.errors import AgentMoved, ClusterUnavailable
from godel_ray.models import ExecResult, SpawnConfig
from tests.e2e.migration_helpers import control_plane, register, wait_for

pytestmark = pytest.mark.ray


@dataclass
class Plane:
    state_dir: Path
    proxy: TransparentClusterProxy
    site: Any


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory, site_factory: Any) -> Iterator[Plane]:
    state_dir = tmp_path_factory.mktemp("godel-exec-path")
    site = site_factory("west", num_cpus=2)
    with control_plane(state_dir) as proxy:
        register(proxy, site)
        yield Plane(state_dir=state_dir, proxy=proxy, site=site)


def _command_events(proxy: TransparentClusterProxy, agent_id: str, type_: str) -> list[str]:
    return [e.cluster_id for e in proxy.events() if e.agent_id == agent_id and e.type == type_]


def test_a_local_exec_goes_straight_to_the_agents_actor(plane: Plane) -> None:
    proxy = plane.proxy
    agent = proxy.spawn(SpawnConfig(cluster="local", cpus=0.25))
    assert agent.cluster_id == "local"
    assert proxy.exec(agent.id, "echo one").stdout == "one\n"
    here = Location("local", agent.epoch)
    hop = proxy._session.cached_hop(agent.id, here)  # the test looks at the proxy's cache
    assert hop is not None and hop.actor is not None and hop.cluster is None, "the actor's handle, cached"
    assert "".join(c.data for c in proxy.exec_stream(agent.id, "echo two")) == "two\n"
    assert asyncio.run(proxy.aio().exec(agent.id, "echo three")).stdout == "three\n"
    assert proxy._session.actors[agent.id][1] is hop.actor, "the asyncio twin used the same cached handle"
    # the runtime never carried these calls, yet records them (collected from the actor)
    assert [e.command for e in proxy.journal(agent.id)] == ["echo one", "echo two", "echo three"]
    wait_for(lambda: len(_command_events(proxy, agent.id, "command.finished")) == 3, "the commands' events")
    assert _command_events(proxy, agent.id, "command.started") == ["local"] * 3
    proxy.kill(agent.id)


def test_a_stale_direct_handle_is_rerouted_and_the_old_copy_never_runs(plane: Plane) -> None:
    proxy = plane.proxy
    agent = proxy.spawn(SpawnConfig(cluster="local", cpus=0.25))
    holder = connect(plane.state_dir)  # a second driver: it keeps the handle of the copy it used
    assert holder.exec(agent.id, "echo kept > notes.txt").exit_code == 0
    old = holder._session.actors[agent.id][1]

    proxy.migrate(agent.id, "west")
    moved = proxy.migrate(agent.id, "local")  # back: a new actor, two epochs later
    assert moved.target == "local"
    now = proxy.status(agent.id)
    assert (now.cluster_id, now.epoch) == ("local", agent.epoch + 2)

    result = holder.exec(agent.id, "echo served >> served.txt && cat notes.txt served.txt")
    assert result.stdout == "kept\nserved\n", "served once, by the current copy"
    assert holder.exec(agent.id, "cat served.txt").stdout == "served\n"
    assert holder._session.actors[agent.id][0] == Location("local", now.epoch), "the new actor, cached"
    with pytest.raises((AgentMoved, ClusterUnavailable)):  # the old copy: refused, or gone with its process
        old.run("echo stale >> served.txt", None, agent.epoch).get()
    assert holder.exec(agent.id, "cat served.txt").stdout == "served\n"
    journal = [e.command for e in proxy.journal(agent.id)]
    assert journal.count("echo served >> served.txt && cat notes.txt served.txt") == 1
    assert not [c for c in journal if "stale" in c]
    proxy.kill(agent.id)


def test_collect_mode_on_a_remote_agent_returns_what_streaming_does(plane: Plane) -> None:
    proxy = plane.proxy
    agent = proxy.spawn(SpawnConfig(cluster="west", cpus=0.25))
    command = "printf 'a\\nb'; echo err >&2; exit 3"
    collected = proxy.exec(agent.id, command)
    streamed = collect(list(proxy.exec_stream(agent.id, command)))
    assert isinstance(collected, ExecResult) and collected.exit_code == 3
    assert (collected.stdout, collected.stderr, collected.exit_code, collected.timed_out, collected.truncated) == (
        streamed.stdout, streamed.stderr, streamed.exit_code, streamed.timed_out, streamed.truncated)
    assert (collected.stdout, collected.stderr) == ("a\nb", "err\n")
    assert proxy._session.actors.get(agent.id) is None, "a remote agent is reached through its cluster"
    wait_for(lambda: [(e.command, e.exit_code) for e in proxy.journal(agent.id)] == [(command, 3)] * 2,
             "both commands in the (mirrored) journal")
    proxy.kill(agent.id)
