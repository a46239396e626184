"""``WarmPool``: pre-started idle ``AgentActor``s, claimed at spawn so a spawn skips a Ray worker start.

A pool is keyed by the exact resources its members hold, ``PoolKey(cpus, gpus, gpu_type)``: the
default pool holds ``warm_pool_size`` members with the default agent resources, and each opt-in GPU
pool (``warm_pool_gpu={"nvidia-a100": 1}``) holds members with one GPU of that type. A spawn whose
resources match a key exactly claims an idle member, which ``adopt``s the agent's identity: the
claim answers at once. The pool then refills in the background, but only once the cluster is
quiet: no agent start in flight (``starting``) for ``QUIET_S``, so a burst of spawns never
competes with the new members' worker processes for the CPUs. GPU types match by ``core.gpu``'s rule, as placement does: a
spawn asking for ``a100`` may claim a member holding an ``nvidia-a100-80g``.

Invariants:
- a member is handed out at most once: ``claim`` pops it synchronously on the runtime's event
  loop (no ``await`` between looking and taking), and the actor itself refuses a second ``adopt``;
- idle members hold real Ray resources: ``held()`` reports them so the runtime's capacity counts
  them as claimable, and ``evict`` frees them when a spawn of other resources needs the room
  (refill then pauses for ``EVICT_PAUSE_S`` so it does not take the room back);
- refill starts a member only when Ray has free resources for it and no agent start has been in
  flight for ``QUIET_S``; a member not ready within ``ready_timeout_s`` is killed; idle members
  never count against ``max_agents``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from godel_ray.agents.actor import create_agent_actor
from godel_ray.core.gpu import (
    GPU_TYPE_RESOURCE_UNITS,
    gpu_type_matches,
    gpu_type_resource,
    gpu_types_of,
    normalise_gpu_type,
    resolve_gpu_type,
)
from godel_ray.models import Agent, SpawnConfig, new_agent_id
from godel_ray.raykit import rayapi
from godel_ray.raykit.gateway import AgentGateway
from godel_ray.settings import LIMITS, Limits

log = logging.getLogger(__name__)

REFILL_RETRY_S = 5.0  # a pool short of members looks for free resources again this often
EVICT_PAUSE_S = 30.0  # after an eviction, refill waits this long (the spawn that needed room goes first)
QUIET_S = 0.5  # refill waits until no agent start has been in flight for this long
READY_TIMEOUT_S = 60.0
DEFAULT_CPUS = SpawnConfig().cpus


@dataclass(frozen=True)
class PoolKey:
    """The exact resources of a pool's members; ``gpu_type`` normalised (None: no GPU type)."""

    cpus: float
    gpus: int = 0
    gpu_type: str | None = None

    @classmethod
    def of(cls, config: SpawnConfig) -> PoolKey:
        gpu_type = normalise_gpu_type(config.gpu_type) if config.needs_gpu and config.gpu_type else None
        return cls(float(config.cpus), config.num_gpus, gpu_type)


def pool_sizes(default_size: int = 0, gpu_sizes: dict[str, int] | None = None, *,
               cpus: float = DEFAULT_CPUS) -> dict[PoolKey, int]:
    """The pools of a runtime: ``default_size`` default agents, plus one-GPU agents per GPU type."""
    sizes = {PoolKey(float(cpus)): default_size} if default_size > 0 else {}
    for gpu_type, size in (gpu_sizes or {}).items():
        if size > 0:
            sizes[PoolKey(float(cpus), 1, normalise_gpu_type(gpu_type))] = size
    return sizes


@dataclass
class _Member:
    actor: AgentGateway
    key: PoolKey
    accelerator_type: str | None  # the GPU type as the cluster spells it


class WarmPool:
    """Idle pre-started agent actors per ``PoolKey``, refilled by one background task."""

    def __init__(self, name: str, workdir_root: str, sizes: dict[PoolKey, int], *,
                 limits: Limits = LIMITS, ready_timeout_s: float = READY_TIMEOUT_S) -> None:
        self.name = name
        self.sizes = {k: v for k, v in sizes.items() if v > 0}
        self._workdir_root = workdir_root
        self._limits = limits
        self._ready_timeout_s = ready_timeout_s
        self._idle: dict[PoolKey, list[_Member]] = {k: [] for k in self.sizes}
        self._starting: list[_Member] = []  # members whose actor is starting: they hold resources too
        self._accel: dict[PoolKey, str | None] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._paused_until = 0.0
        self._starts = 0  # agent starts in flight (``starting``)
        self._last_start_end = float("-inf")
        self._closed = False
        self.claimed = 0  # spawns served from the pool, for stats

    # --- what the runtime reads ----------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return bool(self.sizes)

    @property
    def idle_count(self) -> int:
        return sum(len(members) for members in self._idle.values())

    def must_evict_for(self, free_cpus: float, free_gpus: float, cpus: float, gpus: int) -> bool:
        """Whether a spawn that did not claim a member must evict first: when idle members hold the
        room it needs, or whenever members are still starting (a pending one could take the room)."""
        if self._starting:
            return True
        return self.idle_count > 0 and (free_cpus + 1e-9 < cpus or free_gpus + 1e-9 < gpus)

    def held(self) -> tuple[float, dict[str, float]]:
        """Resources idle and starting members hold: (CPUs, GPUs by advertised type).

        Both are evicted when a spawn needs the room, so a heartbeat counts them as free (a member
        still starting may not hold them yet: that can overstate, never understate, what is free).
        """
        cpus = 0.0
        gpus: dict[str, float] = {}
        members = [m for idle in self._idle.values() for m in idle] + self._starting
        for member in members:
            cpus += member.key.cpus
            if member.key.gpus and member.accelerator_type:
                gpus[member.accelerator_type] = gpus.get(member.accelerator_type, 0.0) + member.key.gpus
        return cpus, gpus

    # --- claim / evict -------------------------------------------------------------------------

    def claim(self, config: SpawnConfig) -> tuple[AgentGateway, str | None] | None:
        """Pop an idle member that holds what ``config`` asks: the same CPUs and GPU count, and a GPU
        type that satisfies the asked one (``core.gpu``). Returns (actor, accelerator type)."""
        wanted = PoolKey.of(config)
        for key, members in self._idle.items():
            if not members or (key.cpus, key.gpus) != (wanted.cpus, wanted.gpus):
                continue
            if (key.gpu_type is None) != (wanted.gpu_type is None):
                continue
            if wanted.gpu_type is not None and not (
                    members[-1].accelerator_type and gpu_type_matches(wanted.gpu_type, members[-1].accelerator_type)):
                continue
            member = members.pop()  # synchronous: no other coroutine can take the same member
            self.claimed += 1
            return member.actor, member.accelerator_type  # refilled once the cluster is quiet (``starting``)
        return None

    async def evict(self, cpus: float, gpus: int = 0) -> int:
        """Make room for a spawn: kill every member still starting (a pending one would take the
        room freed for the spawn first), then idle members until ``cpus`` CPUs and ``gpus`` GPUs
        are freed (or none are left). Refill pauses for ``EVICT_PAUSE_S`` after an eviction."""
        freed_cpus, freed_gpus, count = 0.0, 0, 0
        while self._starting:
            member = self._starting.pop()
            member.actor.kill()  # its start then fails and the refill drops it
            freed_cpus += member.key.cpus
            freed_gpus += member.key.gpus
            count += 1
        for key in sorted(self._idle, key=lambda k: (k.gpus > 0) != (gpus > 0)):
            members = self._idle[key]
            while members and (freed_cpus < cpus or freed_gpus < gpus):
                member = members.pop()
                member.actor.kill()
                freed_cpus += key.cpus
                freed_gpus += key.gpus
                count += 1
        if count:
            self._paused_until = time.monotonic() + EVICT_PAUSE_S
            log.info("cluster %s: evicted %d warm-pool member(s) to make room", self.name, count)
        return count

    # --- refill --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the refill task on the running loop (idempotent; nothing when no pool is set)."""
        if not self.enabled or self._closed or (self._task is not None and not self._task.done()):
            return
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._refill_loop(), name=f"warm-pool-{self.name}")

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        """Brackets one agent start (claimed or cold): refill waits until none has been in flight
        for ``QUIET_S``, then starts the members the claims took."""
        self._starts += 1
        try:
            yield
        finally:
            self._starts -= 1
            self._last_start_end = time.monotonic()
            self.wake()

    def _quiet_in(self) -> float:
        """Seconds until the cluster counts as quiet (0: now; ``REFILL_RETRY_S`` while starts run:
        the end of the last one wakes the refill)."""
        if self._starts:
            return REFILL_RETRY_S
        return max(0.0, self._last_start_end + QUIET_S - time.monotonic())

    async def wait_full(self, timeout_s: float) -> int:
        """Wait (bounded) until every pool is full; return the idle count then."""
        self.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(len(self._idle[k]) < n for k, n in self.sizes.items()):
            await asyncio.sleep(0.05)
        return self.idle_count

    async def _refill_loop(self) -> None:
        assert self._wake is not None
        while not self._closed:
            self._wake.clear()
            if (quiet_in := self._quiet_in()) > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), quiet_in)
                continue
            try:
                await self._refill_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the loop must not die: retry later
                log.warning("cluster %s: warm-pool refill failed: %s", self.name, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), REFILL_RETRY_S)

    async def _refill_once(self) -> None:
        if time.monotonic() < self._paused_until:
            return
        short = {k: n - len(self._idle[k]) for k, n in self.sizes.items() if len(self._idle[k]) < n}
        if not short:
            return
        total, free = await asyncio.to_thread(_resources)  # Ray's reads block: off the loop
        starts: list[tuple[PoolKey, str | None]] = []
        for key, missing in short.items():
            accel = self._resolve(key, total)
            if key.gpu_type is not None and accel is None:
                continue  # the cluster has no such GPU type: nothing to pre-start
            for _ in range(missing):
                if not _take(free, key, accel):
                    break
                starts.append((key, accel))
        members = await asyncio.gather(*(self._start_member(k, a) for k, a in starts))
        for member in members:
            if member is None:
                continue
            if self._closed:
                member.actor.kill()
            else:
                self._idle[member.key].append(member)

    def _resolve(self, key: PoolKey, total: dict[str, float]) -> str | None:
        if key.gpu_type is None:
            return None
        if key not in self._accel:
            match = resolve_gpu_type(key.gpu_type, gpu_types_of(total))
            if match is None:
                log.warning("cluster %s: no GPU type %s here; its warm pool stays empty", self.name, key.gpu_type)
            self._accel[key] = match
        return self._accel[key]

    async def _start_member(self, key: PoolKey, accel: str | None) -> _Member | None:
        config = SpawnConfig(cpus=key.cpus, requires_gpu=key.gpus > 0, gpu_count=max(1, key.gpus),
                             gpu_type=accel)
        placeholder = Agent(id=f"warm-{new_agent_id()}", config=config)
        actor = create_agent_actor(placeholder, self._workdir_root, accelerator_type=accel,
                                   limits=self._limits, pooled=True)
        member = _Member(actor, key, accel)
        self._starting.append(member)
        try:
            await actor.ready().result(self._ready_timeout_s)
        except BaseException as exc:
            actor.kill()
            if isinstance(exc, asyncio.CancelledError):
                raise
            if member in self._starting:  # not evicted: a real failure
                log.warning("cluster %s: a warm-pool member did not start: %s", self.name, exc)
            return None
        finally:
            if member in self._starting:
                self._starting.remove(member)
        return member

    async def close(self) -> None:
        """Stop refilling and kill every idle member."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        for members in self._idle.values():
            while members:
                members.pop().actor.kill()


def _resources() -> tuple[dict[str, float], dict[str, float]]:
    return rayapi.cluster_resources(), rayapi.available_resources()


def _take(free: dict[str, float], key: PoolKey, accel: str | None) -> bool:
    """Reserve ``key``'s resources in ``free`` (a local copy) when they fit."""
    need = {"CPU": key.cpus}
    if key.gpus:
        need["GPU"] = float(key.gpus)
    if accel:
        need[gpu_type_resource(accel)] = GPU_TYPE_RESOURCE_UNITS
    if any(free.get(name, 0.0) + 1e-9 < amount for name, amount in need.items()):
        return False
    for name, amount in need.items():
        free[name] = free.get(name, 0.0) - amount
    return True


__all__ = ["PoolKey", "WarmPool", "normalise_gpu_type", "pool_sizes"]
