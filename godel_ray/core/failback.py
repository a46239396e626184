"""Fail-back: which agents an automatic move took from their home go back now. Pure (no clock).

An agent moved by failover or drain remembers its home (``Agent.home_cluster_id``). It is moved
back live when all of these hold:

* its policy says so: ``config.fail_back`` or, when unset, its home cluster's ``fail_back``
  default, is ``auto``;
* it is running (not migrating, not ended) and not already being moved;
* its home has been ACTIVE (and out of maintenance) for at least ``hysteresis_s`` without a break
  (a flapping cluster never qualifies);
* its last move attempt of any kind is at least ``cooldown_s`` old;
* home passes placement's hard filters for it (capacity, GPU type, ...);
* fewer than ``max_in_flight`` fail-back moves run at once, counting those just chosen.

Never thrashing: the hysteresis, the cooldown, the bound, and a fail-back clearing the home (a
later failover sets it again, and the cooldown applies again).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from godel_ray.core.placement import ClusterView, place
from godel_ray.models import LOCAL_CLUSTER_ID, Agent, AgentStatus, ClusterStatus

FAIL_BACK_HYSTERESIS_S = 120.0
FAIL_BACK_COOLDOWN_S = 600.0
FAIL_BACK_MAX_IN_FLIGHT = 2


@dataclass(frozen=True)
class FailBackRules:
    hysteresis_s: float = FAIL_BACK_HYSTERESIS_S
    cooldown_s: float = FAIL_BACK_COOLDOWN_S
    max_in_flight: int = FAIL_BACK_MAX_IN_FLIGHT


DEFAULT_RULES = FailBackRules()


@dataclass(frozen=True)
class FailBackMove:
    agent_id: str
    home: str
    reason: str  # why, for the event and ``agent explain``


def fail_back_moves(agents: Iterable[Agent], views: Mapping[str, ClusterView], active_since: Mapping[str, float],
                    last_move_at: Mapping[str, float], moving: set[str], in_flight: int, now: float,
                    rules: FailBackRules = DEFAULT_RULES, local_id: str = LOCAL_CLUSTER_ID) -> list[FailBackMove]:
    """The fail-back moves to start now, in agent id order (see the module docstring)."""
    out: list[FailBackMove] = []
    for agent in sorted(agents, key=lambda a: a.id):
        if in_flight + len(out) >= rules.max_in_flight:
            break
        home = agent.home_cluster_id
        if not home or home == agent.cluster_id or agent.status is not AgentStatus.RUNNING or agent.id in moving:
            continue
        view = views.get(home)
        if view is None or view.cluster.maintenance or view.health.status is not ClusterStatus.ACTIVE:
            continue
        policy = agent.config.fail_back or view.cluster.fail_back
        if policy != "auto":
            continue
        since = active_since.get(home)
        if since is None or now - since < rules.hysteresis_s:
            continue
        last = last_move_at.get(agent.id)
        if last is not None and now - last < rules.cooldown_s:
            continue
        pinned = agent.config.model_copy(update={"cluster": home})
        if place(pinned, [view], local_id=local_id).chosen is None:
            continue
        out.append(FailBackMove(agent.id, home, f"home cluster {home} active for {now - since:.0f}s "
                                                f"(fail_back {policy}); moving back from {agent.cluster_id}"))
    return out


__all__ = ["DEFAULT_RULES", "FAIL_BACK_COOLDOWN_S", "FAIL_BACK_HYSTERESIS_S", "FAIL_BACK_MAX_IN_FLIGHT", "FailBackMove",
           "FailBackRules", "fail_back_moves"]
