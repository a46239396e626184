"""The one interface every cluster speaks, local or remote: ``ClusterClient``.

``godel_ray.agents.runtime.AgentRuntime`` implements it directly on a Ray cluster (used by the
``local`` ClusterActor and by every site server); ``godel_ray.rpc.client.GrpcClusterClient``
implements it over gRPC to a site. The ClusterActor holds one of the two and does not care which.

Semantics shared by both implementations:
- ``epoch=0`` means "do not check"; any other value must equal the agent's epoch, else
  ``StaleEpoch``. A site refuses every operation on a copy it no longer owns.
- ``exec_stream`` yields ``ExecChunk`` output pieces as they are produced; the last chunk carries
  ``result``. ``exec`` is the same command collected where it runs, answered in one reply (same
  output limits, same journal). Commands on one agent run one at a time in arrival order.
- ``export(freeze=True)`` freezes the agent first (a checkpoint: the running command finishes, with
  the default busy timeout). Once frozen, new commands wait. The snapshot's ``frozen_at`` says when.
  ``resume`` unfreezes (rollback); ``kill(reason="migrated")`` ends the copy and every waiting
  command fails with ``AgentMoved`` (the caller re-resolves the location and retries).
- ``import_`` recreates ``snapshot.agent`` (same id, the epoch it carries) with its files and
  journal; a hostile or corrupt archive raises ``SnapshotRejected`` and leaves nothing behind.
- ``spawn`` with an ``idempotency_key`` already seen returns the same agent and ``created=False``.

Protocol v2 (live migration, ``core.live_migration``), the bytes as streams, never one value:
- ``prepare(agent)`` (target) creates ``agent`` at the epoch it carries in an importing state:
  resources held, an empty staging directory, PENDING, serving no command;
- ``freeze(options)`` (source): ``options`` say how a running command is treated (``BusyPolicy``):
  WAIT freezes at the first idle moment (commands are served until then; ``AgentBusy`` past
  ``busy_timeout_s``, nothing frozen), INTERRUPT stops it (its caller gets ``CommandInterrupted``),
  LIVE_PROCESS refuses with the reason while one runs. New commands wait from then on (``resume``
  undoes it). The ``FreezeReport`` says when it froze and which journal entry it interrupted;
- ``send(agent_id, mode)`` (source) yields one workdir stream: a ``TransferHeader``, ``bytes`` chunks
  (one plain tar stream together), a ``TransferTrailer`` (sha256, deleted paths, dirty bytes).
  FULL: the whole tree, the agent keeps running; CHANGES: since the last stream's manifest; FINAL:
  the same plus the agent and its journal, frozen only;
- ``receive(agent_id, pieces)`` (target) applies such a stream to the staging directory as it
  arrives (member checks, checksum at the end) and reports what it moved;
- ``activate`` (target): staging becomes the workdir, the copy runs at its epoch.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from godel_ray.core.detector import ChannelState
from godel_ray.errors import StaleEpoch
from godel_ray.models import (
    Agent,
    AgentSnapshot,
    AgentStatus,
    ExecChunk,
    ExecResult,
    FederationEvent,
    FreezeOptions,
    FreezeReport,
    SiteCapacity,
    SpawnConfig,
    TransferMode,
    TransferPiece,
    TransferReport,
)

KILL_REASON_MIGRATED = "migrated"


def check_epoch(agent_id: str, have: int, want: int) -> None:
    """The epoch rule above: ``want`` 0 is not checked; any other value must be ``have``, the epoch of
    the copy asked, else ``StaleEpoch``."""
    if want and want != have:
        raise StaleEpoch(f"agent {agent_id} is at epoch {have} here, not {want}: this copy was superseded; "
                         "resolve the agent's location again", agent_id=agent_id, epoch=have)


class ClusterClient(Protocol):
    async def spawn(self, config: SpawnConfig, *, agent_id: str | None = None,
                    idempotency_key: str | None = None, epoch: int = 1) -> tuple[Agent, bool]: ...

    async def kill(self, agent_id: str, *, epoch: int = 0, reason: str = "") -> Agent: ...

    def exec_stream(self, agent_id: str, command: str, *, timeout_s: float | None = None,
                    epoch: int = 0) -> AsyncIterator[ExecChunk]: ...

    async def exec(self, agent_id: str, command: str, *, timeout_s: float | None = None,
                   epoch: int = 0) -> ExecResult:
        """``exec_stream`` collected where the command runs: one reply with the whole result."""
        ...

    async def status(self, agent_id: str) -> Agent: ...

    async def list_agents(self, status: AgentStatus | None = None,
                          labels: dict[str, str] | None = None) -> list[Agent]: ...

    async def heartbeat(self) -> SiteCapacity: ...

    async def probe(self) -> SiteCapacity:
        """One heartbeat, one attempt, no retry: what the failure detector measures."""
        ...

    def events(self, since_seq: int = 0) -> AsyncIterator[FederationEvent]: ...

    async def export(self, agent_id: str, *, epoch: int = 0, freeze: bool = False) -> AgentSnapshot: ...

    async def import_(self, snapshot: AgentSnapshot) -> Agent: ...

    async def resume(self, agent_id: str, *, epoch: int = 0) -> Agent: ...

    async def prepare(self, agent: Agent) -> Agent: ...

    async def freeze(self, agent_id: str, *, epoch: int = 0, options: FreezeOptions | None = None
                     ) -> FreezeReport: ...

    def send(self, agent_id: str, mode: TransferMode, *, epoch: int = 0) -> AsyncIterator[TransferPiece]: ...

    async def receive(self, agent_id: str, pieces: AsyncIterator[TransferPiece], *, epoch: int = 0
                      ) -> TransferReport: ...

    async def activate(self, agent_id: str, *, epoch: int = 0) -> Agent: ...

    async def close(self) -> None: ...


@runtime_checkable
class ChannelObserver(Protocol):
    """A client with a long-lived connection whose state the failure detector watches (gRPC)."""

    def channel_state(self) -> ChannelState | None:
        """The connection's state now; None before the first call made one."""
        ...

    def channel_changes(self) -> AsyncIterator[ChannelState]:
        """The state now, then every change, for as long as the client is open."""
        ...


def collect(chunks: list[ExecChunk]) -> ExecResult:
    """Fold streamed chunks into one ExecResult (stdout/stderr joined, result from the last)."""
    out, err = [], []
    result: ExecResult | None = None
    for chunk in chunks:
        if chunk.result is not None:
            result = chunk.result
        elif chunk.stream.value == "stderr":
            err.append(chunk.data)
        else:
            out.append(chunk.data)
    if result is None:
        raise ValueError("exec stream ended without a result")
    return result.model_copy(update={"stdout": "".join(out), "stderr": "".join(err)})
