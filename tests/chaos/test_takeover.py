"""Control-plane takeover: two control planes (two Ray heads, as on two machines) on one PostgreSQL.

Proves: the first holds the lease and serves, the second waits as a standby (``ping`` says so; its
``status`` names the active one); kill -9 the active head's whole session during a burst of spawns:
the standby takes the lease, attaches to the site, reconciles, and every acknowledged spawn exists
exactly once (one row, one live agent at the site) and answers ``exec`` through the new head.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from godel_ray.client.proxy import TransparentClusterProxy, connect
from godel_ray.control import controlplane, factory
from godel_ray.errors import GodelError
from godel_ray.models import Agent, AgentStatus, SpawnConfig
from godel_ray.raykit import heads, rayapi
from godel_ray.raykit.gateway import BalancerGateway
from tests.chaos.conftest import FAST_HEALTH, live, site_agents, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.ray]
LEASE_TTL_S = "3"
THREADS = 3
SPAWNS_PER_THREAD = 3
ACKS_BEFORE_KILL = 2
BURST_WAIT_S = 240.0


def _attach(state_dir: Path) -> TransparentClusterProxy:
    """This test process as a driver of ``state_dir``'s head (one Ray cluster at a time)."""
    head = controlplane.read_head(state_dir)
    assert head is not None
    rayapi.detach()
    rayapi.init_client(head.address, head.env())
    return connect(state_dir)


def _kill_head(head: heads.RayHead) -> None:
    """kill -9 every process of the head's session: no clean shutdown, no lease handed back."""
    for pid in heads.session_pids(head.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture()
def two_planes(tmp_path: Path, pg_server: Any) -> Iterator[tuple[Path, Path]]:
    a, b = tmp_path / "plane-a", tmp_path / "plane-b"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GODEL_LOCAL_WARM_POOL", "0")
        patch.setenv("GODEL_LEASE_TTL_S", LEASE_TTL_S)
        patch.setenv("GODEL_STATE_URL", pg_server.get_uri())
        try:
            yield a, b
        finally:
            rayapi.detach()
            for root in (a, b):
                head = controlplane.read_head(root)
                if head is not None:
                    head.stop()


def test_the_standby_takes_over_a_killed_head_and_loses_no_acknowledged_spawn(
        two_planes: tuple[Path, Path], site_factory: Any) -> None:
    from godel_ray.models import Cluster

    plane_a, plane_b = two_planes
    site = site_factory("takeover-site", num_cpus=4)
    info_a = controlplane.up(plane_a, num_cpus=2)
    assert info_a.role == "active"
    proxy_a = connect(plane_a)
    proxy_a.registry.register(Cluster(id=site.name, endpoint=site.endpoint, region="takeover",
                                      auth_token_file=str(site.token_file), health=FAST_HEALTH))
    before = proxy_a.spawn(SpawnConfig(model="m-takeover", cluster=site.name, cpus=0.25))

    rayapi.detach()
    info_b = controlplane.up(plane_b, num_cpus=2)
    assert info_b.role == "standby" and str(plane_a) in info_b.lease
    assert BalancerGateway(factory.balancer_handle()).ping().get(timeout_s=60) == "standby"
    status_a = controlplane.status(plane_a)
    assert status_a.role == "active" and status_a.active_address == info_a.address

    proxy_a = _attach(plane_a)
    acked: list[Agent] = [before]
    failures: list[BaseException] = []
    lock = threading.Lock()
    enough = threading.Event()

    def burst(worker: int) -> None:
        for n in range(SPAWNS_PER_THREAD):
            try:
                agent = proxy_a.spawn(SpawnConfig(model="m-takeover", cluster=site.name, cpus=0.25,
                                                  labels={"w": str(worker), "n": str(n)}))
            except BaseException as exc:  # noqa: BLE001 - every failure is inspected below
                with lock:
                    failures.append(exc)
                continue
            with lock:
                acked.append(agent)
                if len(acked) > ACKS_BEFORE_KILL:
                    enough.set()

    workers = [threading.Thread(target=burst, args=(w,), daemon=True) for w in range(THREADS)]
    for worker in workers:
        worker.start()
    assert enough.wait(BURST_WAIT_S), f"no {ACKS_BEFORE_KILL} spawns acknowledged: {failures!r}"
    head_a = controlplane.read_head(plane_a)
    assert head_a is not None
    _kill_head(head_a)
    for worker in workers:
        worker.join(BURST_WAIT_S)
    assert not any(w.is_alive() for w in workers), "a spawn hung after its head was killed"
    assert all(isinstance(e, GodelError) for e in failures), [repr(e) for e in failures]

    proxy_b = _attach(plane_b)
    wait_for(lambda: BalancerGateway(factory.balancer_handle()).ping().get(timeout_s=30) == "ok" or None,
             "the standby to take the lease and serve")
    assert controlplane.status(plane_b).role == "active"

    acked_ids = [a.id for a in acked]
    assert len(set(acked_ids)) == len(acked_ids)

    def consistent() -> dict[str, Agent] | None:
        table = {a.id: a for a in proxy_b.list()}
        hosted = Counter(a.id for a in live(site_agents(site)))
        orphans = [i for i in hosted if i not in table or table[i].status.is_final]
        if orphans or any(hosted[i] != 1 for i in acked_ids):
            return None  # the new balancer's reconciliation and orphan sweep have not run yet
        return table

    table = wait_for(consistent, "every acknowledged spawn at the site exactly once, and no orphan")
    for agent_id in acked_ids:
        assert table[agent_id].status is AgentStatus.RUNNING and table[agent_id].cluster_id == site.name
        result = proxy_b.exec(agent_id, "echo alive")
        assert result.exit_code == 0 and "alive" in result.stdout
