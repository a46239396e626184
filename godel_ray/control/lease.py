"""The control-plane lease, as one balancer holds it: who may serve when several control planes
(Ray heads, perhaps on several machines) share one state store.

The row and its fencing token live in the store (``Store.acquire_lease`` and friends); this module
owns the timing and the balancer's side of it:

    standby --acquire--> active --renew fails (another holder took it), or release--> deposed

A standby polls every ``LEASE_RETRY_S``; the active one renews every ``renew_every_s`` (a third of
the TTL, so two renewals may fail before it lapses). A deposed balancer never becomes active
again: its memory is stale, and its store refuses its writes (``LeaseLost``). Ray restarts or a new
``swarmctl up`` bring a fresh balancer, which reloads the store when it acquires the lease.
"""

from __future__ import annotations

import enum
import logging
import os
import socket
import time

from godel_ray.control.store import Lease, Store
from godel_ray.errors import InvalidArgument, Standby

log = logging.getLogger(__name__)

LEASE_TTL_ENV = "GODEL_LEASE_TTL_S"
DEFAULT_LEASE_TTL_S = 10.0
LEASE_RETRY_S = 1.0  # how often a standby tries to take the lease


def lease_ttl_from_env() -> float:
    raw = os.environ.get(LEASE_TTL_ENV, "").strip()
    if not raw:
        return DEFAULT_LEASE_TTL_S
    try:
        ttl = float(raw)
    except ValueError:
        ttl = -1.0
    if not (0.5 <= ttl <= 3600.0):
        raise InvalidArgument(f"{LEASE_TTL_ENV}={raw!r}: expected seconds between 0.5 and 3600")
    return ttl


def holder_name(state_dir: str) -> str:
    """How a control plane is named in the lease: its machine and state dir (unique per control plane)."""
    return f"{socket.gethostname()}:{os.path.abspath(state_dir)}"


def describe(lease: Lease | None) -> str:
    """``active is <holder> (ray <address>) since <time>`` for messages and ``swarmctl status``."""
    if lease is None:
        return "no control plane has held the lease yet"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(lease.acquired_at))
    where = f" (ray {lease.address})" if lease.address else ""
    state = "active" if lease.active else "last active (lease expired)"
    return f"{state} is {lease.holder}{where} since {since}, token {lease.token}"


class Role(enum.StrEnum):
    STANDBY = "standby"
    ACTIVE = "active"
    DEPOSED = "deposed"


class LeaseKeeper:
    """One balancer's hold on the lease. Invariants: ``token`` is set iff the role is active or
    deposed; the role only moves standby -> active -> deposed; ``renew`` returning False (another
    holder took the lease) deposes for good; a renewal that raised (the store unreachable) is
    retried and deposes nothing: the store's fencing refuses our writes if someone took over."""

    def __init__(self, store: Store, holder: str, *, ttl_s: float, address: str = "") -> None:
        self.store, self.holder, self.ttl_s, self.address = store, holder, ttl_s, address
        self.role = Role.STANDBY
        self.token: int | None = None

    @property
    def renew_every_s(self) -> float:
        return self.ttl_s / 3

    def try_acquire(self) -> bool:
        """One attempt; True once active."""
        if self.role is not Role.STANDBY:
            return self.role is Role.ACTIVE
        token = self.store.acquire_lease(self.holder, self.ttl_s, address=self.address)
        if token is None:
            return False
        self.token, self.role = token, Role.ACTIVE
        log.warning("control plane %s: took the lease (token %d)", self.holder, token)
        return True

    def renew(self) -> bool:
        """Extend the lease; False (and deposed for good) if another holder has it."""
        if self.role is not Role.ACTIVE or self.token is None:
            return False
        if self.store.renew_lease(self.holder, self.token, self.ttl_s):
            return True
        self.role = Role.DEPOSED
        log.error("control plane %s: deposed (%s); serving nothing from now on", self.holder,
                  describe(self.store.lease()))
        return False

    def release(self) -> None:
        """Hand the lease back (a clean shutdown): serving nothing from now on."""
        if self.role is Role.ACTIVE and self.token is not None:
            self.role = Role.DEPOSED
            self.store.release_lease(self.holder, self.token)

    def refusal(self) -> Standby:
        """The error a call gets while this balancer is not active."""
        lease = self.store.lease()
        what = "deposed" if self.role is Role.DEPOSED else "standby"
        return Standby(f"this control plane ({self.holder}) is {what}; {describe(lease)}",
                       holder=lease.holder if lease else "", address=lease.address if lease else "",
                       since=lease.acquired_at if lease else 0.0)


__all__ = ["DEFAULT_LEASE_TTL_S", "LEASE_RETRY_S", "LEASE_TTL_ENV", "LeaseKeeper", "Role", "describe",
           "holder_name", "lease_ttl_from_env"]
