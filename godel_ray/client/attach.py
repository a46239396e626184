"""Attaching a client to the active control plane (``connect()`` and the CLI through it).

First the Ray head the caller names: the one already attached, ``address=``, ``RAY_ADDRESS``, or
``<state_dir>/control.json``. Several control planes may share one PostgreSQL store
(``control/lease.py``) and only the lease holder serves; so the balancer there is asked its role,
and a standby (or deposed) one names the active control plane and its Ray address: the client
attaches there instead. One redirect, never a chain: if the attach fails, or the balancer there is
not active either, a ``ControlPlaneNotRunning`` says which control plane is active and where.

The active head's Ray token: read from its own state dir when the lease holder is a control plane
on this machine (the lease names it ``<host>:<state dir>``), else the token this process has now
(control planes that share one). A standby whose lease has lapsed (the active head died and this
one is about to take over) is kept: its calls answer ``Standby`` until it serves.

Importing this module does not import Ray.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from godel_ray.errors import ControlPlaneNotRunning, GodelError

if TYPE_CHECKING:
    from godel_ray.raykit.gateway import BalancerGateway

ROLE_TIMEOUT_S = 30.0  # the balancer answers its role after its first try at the lease


def attach(root: Path, address: str | None = None) -> BalancerGateway:
    """Attach this process to the control plane at ``root`` (or ``address``); the gateway of the
    active balancer, following a standby's redirect once."""
    from godel_ray.control import controlplane, factory
    from godel_ray.raykit import rayapi
    from godel_ray.raykit.gateway import BalancerGateway

    if not rayapi.is_initialized():
        if address is not None:
            head = controlplane.read_head(root)
            rayapi.init_client(address, head.env() if head is not None and head.address == address else {})
        elif os.environ.get("RAY_ADDRESS"):
            rayapi.init_client(os.environ["RAY_ADDRESS"], {})
        else:
            head = controlplane.read_head(root)
            if head is None:
                raise ControlPlaneNotRunning(f"no control plane at {root}: run `swarmctl up` first")
            rayapi.init_client(head.address, head.env())
    balancer = BalancerGateway(factory.balancer_handle())
    role = _role(balancer)
    if role is None or role.get("role") == "active":
        return balancer
    holder, target = role.get("active_holder", ""), role.get("active_address", "")
    if not target or holder == role.get("holder"):
        return balancer  # no one else serves now (a takeover under way): this one's calls say so
    here = f"this control plane ({role.get('holder', '?')}) is a {role.get('role', 'standby')}"
    try:
        rayapi.init_client(*_head(holder, target))
        balancer = BalancerGateway(factory.balancer_handle())
        there = _role(balancer)
    except Exception as exc:
        raise ControlPlaneNotRunning(
            f"{here}; the active one is {holder} at ray {target}, and attaching there failed: {exc}. "
            "Connect with its state dir (--state-dir), or RAY_ADDRESS and its Ray token") from exc
    if there is None or there.get("role") != "active":
        what = "does not answer" if there is None else f"is a {there.get('role')} too ({there.get('lease', '')})"
        raise ControlPlaneNotRunning(f"{here}; the lease named {holder} at ray {target} as active, but its "
                                     f"balancer {what}: try again once a control plane holds the lease")
    return balancer


def _role(balancer: BalancerGateway) -> dict[str, str] | None:
    """The balancer's role (None when it cannot say now: its calls will tell what is wrong)."""
    try:
        return balancer.role().get(timeout_s=ROLE_TIMEOUT_S)
    except GodelError:
        return None


def _head(holder: str, address: str) -> tuple[str, dict[str, str]]:
    """Where and how to attach to the head at ``address`` (as the lease names it: the node's IP):
    as its own state dir says (address and token) when ``holder`` is a control plane on this machine
    whose head listens on that port; else ``address`` with no settings beyond ours."""
    from godel_ray.control import controlplane

    host, _, state_dir = holder.partition(":")
    if host != socket.gethostname() or not state_dir:
        return address, {}
    try:
        head = controlplane.read_head(state_dir)
    except OSError:
        return address, {}
    if head is None or _port(head.address) != _port(address):
        return address, {}
    return head.address, head.env()


def _port(address: str) -> str:
    return address.rpartition(":")[2]


__all__ = ["ROLE_TIMEOUT_S", "attach"]
