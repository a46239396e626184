"""Moving agents in and out of an ``AgentRuntime``: v1 snapshots (``export``/``import_``) and
protocol v2 (``prepare`` an importing copy, ``freeze`` the source, ``send``/``receive`` workdir
streams, ``activate`` the copy, ``resume`` a frozen source).

A mixin base of ``AgentRuntime``: it uses the runtime's table, limits, creation path and event log,
declared below, and holds no state of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator

from godel_ray.agents import snapshot as snap
from godel_ray.agents.inbox import regrouped
from godel_ray.agents.table import AgentTable
from godel_ray.core.validation import validate_agent_id, validate_spawn_config
from godel_ray.errors import AgentNotRunning, GodelError, InvalidArgument
from godel_ray.models import (
    Agent,
    AgentSnapshot,
    AgentStatus,
    EventKind,
    EventType,
    FreezeOptions,
    FreezeReport,
    JournalEntry,
    TransferHeader,
    TransferMode,
    TransferPiece,
    TransferReport,
    TransferTrailer,
)
from godel_ray.raykit import rayapi
from godel_ray.raykit.gateway import AgentGateway
from godel_ray.settings import Limits


class RuntimeMoves:
    """Exports, imports and v2 transfers of the runtime's agents. Invariants: every operation goes
    through the runtime's table (epoch checks, failures mapped there); a v2 stream is applied to a
    PENDING (importing) copy only, header first and trailer last; a frozen source is resumed when
    its v1 export fails."""

    name: str
    _table: AgentTable
    _limits: Limits
    _ready_timeout_s: float
    _idempotency: dict[str, str]

    def _emit(self, type_: str, agent_id: str = "", kind: EventKind = EventKind.AGENT, *, later: bool = False,
              **data: object) -> None:
        raise NotImplementedError

    async def _create(self, agent: Agent, archive: bytes | None = None, sha256: str = "",
                      journal: list[JournalEntry] | None = None, importing: bool = False) -> Agent:
        raise NotImplementedError

    async def export(self, agent_id: str, *, epoch: int = 0, freeze: bool = False) -> AgentSnapshot:
        entry, _ = self._table.live(agent_id, epoch)
        if freeze:  # the running command finishes first (AgentBusy past the default busy timeout: nothing frozen)
            self._table.set_agent(entry, (await self._table.ask(entry, AgentGateway.freeze)).agent)
        try:
            snapshot = await self._table.ask(entry, AgentGateway.export)
        except BaseException:
            if freeze:
                with contextlib.suppress(GodelError):
                    self._table.set_agent(entry, await self._table.ask(entry, AgentGateway.resume))
            raise
        snapshot = snapshot.model_copy(update={"agent": snapshot.agent.model_copy(
            update={"cluster_id": self.name})})
        self._emit(EventType.AGENT_EXPORTED, agent_id, bytes=snapshot.size_bytes, frozen=freeze)
        return snapshot

    async def import_(self, snapshot: AgentSnapshot) -> Agent:
        agent = snapshot.agent
        validate_agent_id(agent.id)
        validate_spawn_config(agent.config, self._limits)
        await asyncio.to_thread(snap.check_archive, snapshot.archive, snapshot.sha256,
                                self._limits.max_snapshot_bytes)
        created = await self._create(agent, archive=snapshot.archive, sha256=snapshot.sha256,
                                     journal=snapshot.journal)
        if agent.config.idempotency_key:
            self._idempotency.setdefault(agent.config.idempotency_key, agent.id)
        self._emit(EventType.AGENT_IMPORTED, agent.id, epoch=agent.epoch, bytes=snapshot.size_bytes)
        return created

    # --- protocol v2: prepare, freeze, workdir streams, activate ----------------------------------

    async def prepare(self, agent: Agent) -> Agent:
        """Create ``agent`` (id, config, the epoch it will run at) importing: its actor holds its
        resources (warm pool first), an empty staging directory; PENDING until ``activate``."""
        validate_agent_id(agent.id)
        validate_spawn_config(agent.config, self._limits)
        prepared = await self._create(agent, importing=True)
        if agent.config.idempotency_key:
            self._idempotency.setdefault(agent.config.idempotency_key, agent.id)
        self._emit(EventType.AGENT_STATUS, agent.id, status=prepared.status.value, reason="importing",
                   epoch=agent.epoch)
        return prepared

    async def freeze(self, agent_id: str, *, epoch: int = 0, options: FreezeOptions | None = None) -> FreezeReport:
        """Freeze as ``options`` say (``AgentActor.freeze``: WAIT for idle, or INTERRUPT the running
        command); new commands wait (``resume`` undoes it). AgentBusy/LiveProcessUnavailable: nothing frozen."""
        entry, _ = self._table.live(agent_id, epoch)
        report = await self._table.ask(entry, lambda a: a.freeze(options))
        self._table.set_agent(entry, report.agent)
        return report.model_copy(update={"agent": entry.agent})

    async def send(self, agent_id: str, mode: TransferMode, *, epoch: int = 0) -> AsyncIterator[TransferPiece]:
        """The agent's workdir stream (``AgentActor.send``), piece by piece."""
        entry, actor = self._table.live(agent_id, epoch)
        stream = actor.send(mode)
        moved = 0
        finished = False
        try:
            async for piece in stream:
                if isinstance(piece, bytes):
                    moved += len(piece)
                finished = isinstance(piece, TransferTrailer)
                yield piece
        except (rayapi.ActorUnreachable, rayapi.ActorDied) as exc:
            finished = True
            raise self._table.failure(entry, exc) from None
        finally:
            if not finished:
                stream.cancel()
        self._emit(EventType.AGENT_EXPORTED, agent_id, bytes=moved, mode=mode.value)

    async def receive(self, agent_id: str, pieces: AsyncIterator[TransferPiece], *, epoch: int = 0
                      ) -> TransferReport:
        """Apply one workdir stream to the importing ``agent_id``'s staging, a call per regrouped chunk."""
        entry = self._table.entry(agent_id, epoch)
        if entry.actor is None or entry.agent.status is not AgentStatus.PENDING:
            raise AgentNotRunning(f"agent {agent_id} is not importing here ({entry.agent.status.value})", agent_id=agent_id)
        it = aiter(regrouped(pieces, self._limits.transfer_chunk_bytes))
        header = await anext(it, None)
        if not isinstance(header, TransferHeader):
            raise InvalidArgument("a workdir stream must begin with its header")
        await self._table.ask(entry, functools.partial(AgentGateway.receive_begin, header=header))
        async for piece in it:
            if isinstance(piece, TransferTrailer):
                return await self._table.ask(entry, functools.partial(AgentGateway.receive_end, trailer=piece))
            if not isinstance(piece, bytes):
                raise InvalidArgument(f"a workdir stream carried a {type(piece).__name__} after its header")
            await self._table.ask(entry, functools.partial(AgentGateway.receive_chunk, data=piece))
        raise InvalidArgument("the workdir stream ended without its trailer")

    async def activate(self, agent_id: str, *, epoch: int = 0) -> Agent:
        """The importing copy's staging becomes its workdir; it runs at its epoch."""
        entry = self._table.entry(agent_id, epoch)
        started = await self._table.ask(entry, AgentGateway.activate, self._ready_timeout_s)
        self._table.set_agent(entry, started)
        self._emit(EventType.AGENT_IMPORTED, agent_id, epoch=started.epoch, streamed=True)
        return entry.agent

    async def resume(self, agent_id: str, *, epoch: int = 0) -> Agent:
        entry, _ = self._table.live(agent_id, epoch)
        self._table.set_agent(entry, await self._table.ask(entry, AgentGateway.resume))
        return entry.agent


__all__ = ["RuntimeMoves"]
