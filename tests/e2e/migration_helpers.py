"""Helpers shared by the migration and failover end-to-end tests: a control plane with real sites."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from godel_ray.client.proxy import TransparentClusterProxy, connect
from godel_ray.control import controlplane
from godel_ray.control.migrator import COOLDOWN_ENV
from godel_ray.models import Agent, Cluster, HealthSettings, Migration
from tests import helpers

T = TypeVar("T")
WAIT_S = 180.0
FAST_HEALTH = HealthSettings(heartbeat_interval_s=0.5, heartbeat_timeout_s=1, offline_after=3, grace_period_s=2)
wait_for = functools.partial(helpers.wait_for, timeout_s=WAIT_S, poll_s=0.1)




@contextmanager
def control_plane(state_dir: Path, *, cooldown_s: float = 0.0) -> Iterator[TransparentClusterProxy]:
    """``controlplane.up`` with a short migration cooldown; always ``down`` at the end."""
    before = os.environ.get(COOLDOWN_ENV)
    os.environ[COOLDOWN_ENV] = str(cooldown_s)  # the Ray head, hence the balancer, inherits it
    try:
        info = controlplane.up(state_dir, num_cpus=2)
        assert info.running
        yield connect(state_dir)
    finally:
        controlplane.down(state_dir)
        if before is None:
            os.environ.pop(COOLDOWN_ENV, None)
        else:
            os.environ[COOLDOWN_ENV] = before


def register(proxy: TransparentClusterProxy, site: Any) -> None:
    proxy.registry.register(Cluster(id=site.name, endpoint=site.endpoint, region=site.name,
                                    auth_token_file=str(site.token_file), health=FAST_HEALTH))


def live_copies(site: Any, agent_id: str) -> list[Agent]:
    return [a for a in site.list_agents() if a.id == agent_id and not a.status.is_final]


def finished(proxy: TransparentClusterProxy, migration_id: str) -> Migration | None:
    for m in proxy.migrations():
        if m.id == migration_id and m.finished_at is not None:
            return m
    return None


def phase_of(proxy: TransparentClusterProxy, migration_id: str) -> str:
    return next(m.phase.value for m in proxy.migrations() if m.id == migration_id)
