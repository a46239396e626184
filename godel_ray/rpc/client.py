"""``GrpcClusterClient``: the ``ClusterClient`` protocol spoken over gRPC to one site.

Translation only, like the servicer: domain -> proto, call, proto -> domain; ``grpc.RpcError``
becomes a ``GodelError`` in ``rpc_errors`` alone. Policies:

- Credentials: the bearer token rides on every call; TLS (and mTLS) from the endpoint scheme or a CA.
- Deadlines on every call: ``call_timeout_s`` for unary calls (at least ``SPAWN_DEADLINE_S`` for a
  spawn and ``KILL_DEADLINE_S`` for a kill: what the site may need), ``heartbeat_timeout_s`` for
  heartbeats, the command timeout plus a margin for ``exec``, and a size-scaled budget for
  snapshot export/import. The event stream is long-lived: keepalive pings detect a dead site.
- Retries with exponential backoff, on UNAVAILABLE only, and only for idempotent calls: status,
  list, heartbeat, spawn *with* an idempotency key, and the event-stream reconnect (which resumes
  from the last ``seq`` seen, so nothing is delivered twice).
- For the failure detector: ``probe()`` is one heartbeat attempt without retries, and
  ``channel_state()``/``channel_changes()`` expose the channel's connectivity as
  ``core.detector.ChannelState`` (the ``core.cluster_client.ChannelObserver`` protocol). Pings go
  every second, so a channel that stays READY proves the site's process answers (the detector's
  strongest "slow, not dead" signal); reconnect backoff is capped at 2 s, so a returning site is
  seen soon.
- Long-lived channel options: keepalive *and* ``grpc.http2.ping_timeout_ms`` (keepalive alone
  took 61 s to notice a frozen site; with the ping timeout, 2 s).
- Events a site sends that cannot be converted (an unknown kind from a newer site, a refused field)
  are skipped, logged once per kind and type: one such event must not stall the stream, which would
  otherwise reconnect at it forever.
- A bearer token sent without TLS to a host that is not loopback is readable on the network path:
  warned once per endpoint (never the token itself).

The channel is created lazily, on the event loop of the first call (grpc.aio channels belong to
one loop).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import grpc
import grpc.aio

from godel_ray.core.detector import ChannelState
from godel_ray.core.endpoint import Endpoint, parse_endpoint
from godel_ray.errors import ClusterUnavailable, InvalidArgument
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
from godel_ray.rpc import convert, workdir_wire
from godel_ray.rpc.auth import bearer_metadata
from godel_ray.rpc.errors import rpc_errors
from godel_ray.rpc.gen import federation_pb2 as pb
from godel_ray.rpc.gen import federation_pb2_grpc as pb_grpc
from godel_ray.rpc.servicer import assemble_snapshot, iter_snapshot_chunks
from godel_ray.settings import LIMITS

T = TypeVar("T")

log = logging.getLogger(__name__)

KEEPALIVE_TIME_MS = 1_000
KEEPALIVE_TIMEOUT_MS = 2_000
PING_TIMEOUT_MS = 2_000
RECONNECT_INITIAL_BACKOFF_MS = 250
RECONNECT_MAX_BACKOFF_MS = 2_000
CONNECT_TIMEOUT_MS = 2_000  # gRPC's "min reconnect backoff" is the floor of each connect attempt's deadline
MESSAGE_MARGIN_BYTES = 64 * 1024  # headroom over LIMITS for the envelope of a full chunk
RETRY_ATTEMPTS = 4
RETRY_BASE_DELAY_S = 0.1
RETRY_MAX_DELAY_S = 2.0
EVENTS_MAX_RECONNECT_DELAY_S = 5.0
EXEC_DEADLINE_MARGIN_S = 30.0
SNAPSHOT_MIN_BYTES_PER_S = 4 * 1024 * 1024  # slowest transfer rate a snapshot deadline allows
# A site may take up to its ready timeout (agents.runtime.READY_TIMEOUT_S, 60 s) to start an agent's
# worker process, and up to two terminate timeouts (2 x 15 s) to stop one: a spawn or kill deadline
# shorter than that gives up on work the site still finishes (an orphan agent, a kill reported failed).
SPAWN_DEADLINE_S = 90.0
KILL_DEADLINE_S = 45.0
MAX_SKIPPED_EVENT_KINDS_LOGGED = 32  # distinct (kind, type) pairs logged per client; a hostile site gets no more

_plaintext_token_warned: set[str] = set()  # endpoints warned about, once per process


def channel_options() -> list[tuple[str, int]]:
    """Options for a long-lived channel to a site (see the module docstring for why)."""
    max_bytes = LIMITS.max_message_bytes + MESSAGE_MARGIN_BYTES
    return [
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.http2.ping_timeout_ms", PING_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_INITIAL_BACKOFF_MS),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_MAX_BACKOFF_MS),
        ("grpc.min_reconnect_backoff_ms", CONNECT_TIMEOUT_MS),
        ("grpc.max_receive_message_length", convert.max_exec_response_bytes(LIMITS)),  # Exec: one reply
        ("grpc.max_send_message_length", max_bytes),
        ("grpc.enable_retries", 0),  # retries are ours: only for idempotent calls
    ]


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1): traffic that never leaves the machine."""
    if host.lower().removesuffix(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def warn_plaintext_token(endpoint: Endpoint) -> bool:
    """Warn (once per endpoint and process) that a token goes to ``endpoint`` without TLS; True if warned."""
    if endpoint.tls or is_loopback(endpoint.host) or endpoint.target in _plaintext_token_warned:
        return False
    _plaintext_token_warned.add(endpoint.target)
    log.warning("the bearer token for site %s is sent without TLS: anyone on the network path can read it "
                "and use it. Serve the site with --tls-cert/--tls-key and register it as grpcs://%s",
                endpoint.target, endpoint.target)
    return True


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


CHANNEL_STATES: dict[grpc.ChannelConnectivity, ChannelState] = {
    grpc.ChannelConnectivity.IDLE: ChannelState.IDLE,
    grpc.ChannelConnectivity.CONNECTING: ChannelState.CONNECTING,
    grpc.ChannelConnectivity.READY: ChannelState.READY,
    grpc.ChannelConnectivity.TRANSIENT_FAILURE: ChannelState.TRANSIENT_FAILURE,
    grpc.ChannelConnectivity.SHUTDOWN: ChannelState.SHUTDOWN,
}


class GrpcClusterClient:
    """A ``ClusterClient`` for one remote site. Safe to share between tasks of one event loop."""

    def __init__(self, endpoint: str, *, token: str, tls_ca_file: str | None = None,
                 tls_cert_file: str | None = None, tls_key_file: str | None = None,
                 call_timeout_s: float = 10.0, heartbeat_timeout_s: float = 2.0,
                 cluster_id: str = "") -> None:
        self.endpoint: Endpoint = parse_endpoint(endpoint)
        if (tls_cert_file is None) != (tls_key_file is None):
            raise InvalidArgument("a client certificate needs both tls_cert_file and tls_key_file")
        self._tls = self.endpoint.tls or tls_ca_file is not None or tls_cert_file is not None
        self._ca = _read(tls_ca_file, "TLS CA file")
        self._cert = _read(tls_cert_file, "TLS certificate file")
        self._key = _read(tls_key_file, "TLS key file")
        self._metadata = bearer_metadata(token) if token else ()
        if token and not self._tls:
            warn_plaintext_token(self.endpoint)
        self.call_timeout_s = call_timeout_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.cluster_id = cluster_id
        self._channel: grpc.aio.Channel | None = None
        self._stub_obj: pb_grpc.ClusterFederationStub | None = None
        self._skipped_event_kinds: set[tuple[int, str]] = set()

    def __repr__(self) -> str:  # never the token
        return f"GrpcClusterClient({self.endpoint}, tls={self._tls})"

    @property
    def _name(self) -> str:
        return str(self.endpoint) if self._tls else self.endpoint.target

    def _stub(self) -> pb_grpc.ClusterFederationStub:
        if self._stub_obj is None:
            if self._tls:
                creds = grpc.ssl_channel_credentials(root_certificates=self._ca, private_key=self._key,
                                                     certificate_chain=self._cert)
                self._channel = grpc.aio.secure_channel(self.endpoint.target, creds, options=channel_options())
            else:
                self._channel = grpc.aio.insecure_channel(self.endpoint.target, options=channel_options())
            self._stub_obj = pb_grpc.ClusterFederationStub(self._channel)  # type: ignore[no-untyped-call]
        return self._stub_obj

    async def _unary(self, call: Callable[[], Awaitable[T]], *, retry: bool) -> T:
        """Run one unary call; retry UNAVAILABLE with backoff when the call is idempotent."""
        attempts = RETRY_ATTEMPTS if retry else 1
        for attempt in range(attempts):
            try:
                with rpc_errors(self._name, self._tls):
                    return await call()
            except ClusterUnavailable as exc:
                if attempt == attempts - 1 or exc.fields.get("tls"):
                    raise
            await asyncio.sleep(min(RETRY_BASE_DELAY_S * 2 ** attempt, RETRY_MAX_DELAY_S))
        raise AssertionError("unreachable")  # pragma: no cover

    # --- ClusterClient -----------------------------------------------------------------------------

    async def spawn(self, config: SpawnConfig, *, agent_id: str | None = None,
                    idempotency_key: str | None = None, epoch: int = 1) -> tuple[Agent, bool]:
        key = idempotency_key or config.idempotency_key
        request = pb.SpawnAgentRequest(agent_id=agent_id or "", spec=convert.spec_to_pb(config),
                                       idempotency_key=key or "", epoch=epoch)
        response: pb.SpawnAgentResponse = await self._unary(
            lambda: self._stub().SpawnAgent(request, timeout=max(self.call_timeout_s, SPAWN_DEADLINE_S),
                                            metadata=self._metadata),
            retry=key is not None)
        return convert.agent_from_pb(response.agent, self.cluster_id), response.created

    async def kill(self, agent_id: str, *, epoch: int = 0, reason: str = "") -> Agent:
        request = pb.KillAgentRequest(agent_id=agent_id, epoch=epoch, reason=reason)
        response: pb.KillAgentResponse = await self._unary(
            lambda: self._stub().KillAgent(request, timeout=max(self.call_timeout_s, KILL_DEADLINE_S),
                                           metadata=self._metadata),
            retry=False)
        return convert.agent_from_pb(response.agent, self.cluster_id)

    async def exec_stream(self, agent_id: str, command: str, *, timeout_s: float | None = None,
                          epoch: int = 0) -> AsyncIterator[ExecChunk]:
        command_timeout_s = timeout_s or LIMITS.default_command_timeout_s
        request = pb.ExecuteCommandRequest(agent_id=agent_id, epoch=epoch, command=command,
                                           timeout_s=timeout_s or 0.0)
        call = self._stub().ExecuteCommand(
            request, timeout=command_timeout_s + self.call_timeout_s + EXEC_DEADLINE_MARGIN_S,
            metadata=self._metadata)
        try:
            with rpc_errors(self._name, self._tls):
                async for message in call:
                    yield convert.exec_chunk_from_pb(message)
        finally:
            call.cancel()  # no-op once finished; stops the stream when the consumer walks away

    async def exec(self, agent_id: str, command: str, *, timeout_s: float | None = None,
                   epoch: int = 0) -> ExecResult:
        """Collect mode: the site runs the command and answers once (unary ``Exec``). Never retried:
        the command may have run."""
        command_timeout_s = timeout_s or LIMITS.default_command_timeout_s
        request = pb.ExecuteCommandRequest(agent_id=agent_id, epoch=epoch, command=command,
                                           timeout_s=timeout_s or 0.0)
        response: pb.ExecResponse = await self._unary(
            lambda: self._stub().Exec(request, timeout=command_timeout_s + self.call_timeout_s
                                      + EXEC_DEADLINE_MARGIN_S, metadata=self._metadata),
            retry=False)
        return convert.exec_result_from_pb(response)

    async def status(self, agent_id: str) -> Agent:
        request = pb.GetAgentStatusRequest(agent_id=agent_id)
        response: pb.GetAgentStatusResponse = await self._unary(
            lambda: self._stub().GetAgentStatus(request, timeout=self.call_timeout_s, metadata=self._metadata),
            retry=True)
        return convert.agent_from_pb(response.agent, self.cluster_id)

    async def list_agents(self, status: AgentStatus | None = None,
                          labels: dict[str, str] | None = None) -> list[Agent]:
        request = pb.ListAgentsRequest(status=convert.agent_status_to_pb(status), labels=labels or {})
        response: pb.ListAgentsResponse = await self._unary(
            lambda: self._stub().ListAgents(request, timeout=self.call_timeout_s, metadata=self._metadata),
            retry=True)
        return [convert.agent_from_pb(a, self.cluster_id) for a in response.agents]

    async def heartbeat(self) -> SiteCapacity:
        return await self._heartbeat(retry=True)

    async def probe(self) -> SiteCapacity:
        return await self._heartbeat(retry=False)

    async def _heartbeat(self, *, retry: bool) -> SiteCapacity:
        request = pb.HeartbeatRequest(sent_at=time.time())
        response: pb.HeartbeatResponse = await self._unary(
            lambda: self._stub().Heartbeat(request, timeout=self.heartbeat_timeout_s, metadata=self._metadata),
            retry=retry)
        return convert.capacity_from_pb(response.capacity)

    def channel_state(self) -> ChannelState | None:
        if self._channel is None:
            return None
        return CHANNEL_STATES[self._channel.get_state(try_to_connect=False)]

    async def channel_changes(self) -> AsyncIterator[ChannelState]:
        self._stub()  # the channel exists from here on (it connects with the first call)
        while True:
            channel = self._channel
            if channel is None:  # closed
                return
            state = channel.get_state(try_to_connect=False)
            yield CHANNEL_STATES[state]
            if state is grpc.ChannelConnectivity.SHUTDOWN:
                return
            await channel.wait_for_state_change(state)

    async def events(self, since_seq: int = 0) -> AsyncIterator[FederationEvent]:
        """Follow the site's events forever; reconnect (with backoff) and resume after ``since_seq``.

        Only UNAVAILABLE (and a stream the site ended) reconnect; other errors are raised.
        """
        last_seq = since_seq
        failures = 0
        while True:
            async def requests(start: int = last_seq) -> AsyncIterator[pb.StreamEventsRequest]:
                yield pb.StreamEventsRequest(since_seq=start)

            call = self._stub().StreamEvents(requests(), metadata=self._metadata)
            try:
                with rpc_errors(self._name, self._tls):
                    start = last_seq
                    async for message in call:
                        failures = 0
                        if message.seq <= start:
                            # The site answers only seq > since_seq, unless it restarted and its
                            # log began again at 1: follow the new numbering.
                            last_seq = 0
                        if message.seq <= last_seq:
                            continue  # already delivered before a reconnect
                        last_seq = message.seq
                        try:
                            event = convert.event_from_pb(message, self.cluster_id)
                        except InvalidArgument as exc:
                            self._skip_event(message, exc)
                            continue
                        yield event
            except ClusterUnavailable as exc:
                if exc.fields.get("tls"):
                    raise
            finally:
                call.cancel()
            failures += 1
            await asyncio.sleep(min(RETRY_BASE_DELAY_S * 2 ** min(failures, 10), EVENTS_MAX_RECONNECT_DELAY_S))

    def _skip_event(self, message: pb.Event, exc: InvalidArgument) -> None:
        key = (int(message.kind), message.type[:80])
        if key in self._skipped_event_kinds or len(self._skipped_event_kinds) > MAX_SKIPPED_EVENT_KINDS_LOGGED:
            return
        self._skipped_event_kinds.add(key)
        more = (" (no more kinds will be logged)" if len(self._skipped_event_kinds) > MAX_SKIPPED_EVENT_KINDS_LOGGED
                else "")
        log.warning("site %s: skipping event %d that cannot be read (%s); the stream goes on. Events of this "
                    "kind and type are skipped without a log from now on%s", self._name, message.seq, exc, more)

    async def export(self, agent_id: str, *, epoch: int = 0, freeze: bool = False) -> AgentSnapshot:
        request = pb.ExportAgentRequest(agent_id=agent_id, epoch=epoch, freeze=freeze)
        # The size is unknown until the header arrives: budget for the largest snapshot, plus the
        # wait for the agent to become idle (the default busy timeout).
        busy_s = FreezeOptions().busy_timeout_s if freeze else 0.0
        deadline_s = (self.call_timeout_s + EXEC_DEADLINE_MARGIN_S + busy_s
                      + LIMITS.max_snapshot_bytes / SNAPSHOT_MIN_BYTES_PER_S)
        call = self._stub().ExportAgent(request, timeout=deadline_s, metadata=self._metadata)
        try:
            with rpc_errors(self._name, self._tls):
                snapshot = await assemble_snapshot(call.__aiter__(), cluster_id=self.cluster_id)
        finally:
            call.cancel()
        return snapshot

    async def import_(self, snapshot: AgentSnapshot) -> Agent:
        async def requests() -> AsyncIterator[pb.SnapshotChunk]:
            for chunk in iter_snapshot_chunks(snapshot):  # made as sent: never a second copy
                yield chunk

        # the site starts the agent's actor after the transfer: the spawn budget plus the bytes' time
        deadline_s = (max(self.call_timeout_s, SPAWN_DEADLINE_S)
                      + snapshot.size_bytes / SNAPSHOT_MIN_BYTES_PER_S)
        response: pb.ImportAgentResponse = await self._unary(
            lambda: self._stub().ImportAgent(requests(), timeout=deadline_s, metadata=self._metadata),
            retry=False)
        return convert.agent_from_pb(response.agent, self.cluster_id)

    async def resume(self, agent_id: str, *, epoch: int = 0) -> Agent:
        request = pb.ResumeAgentRequest(agent_id=agent_id, epoch=epoch)
        response: pb.ResumeAgentResponse = await self._unary(
            lambda: self._stub().ResumeAgent(request, timeout=self.call_timeout_s, metadata=self._metadata),
            retry=False)
        return convert.agent_from_pb(response.agent, self.cluster_id)

    # --- protocol v2 --------------------------------------------------------------------------------

    async def prepare(self, agent: Agent) -> Agent:
        request = pb.PrepareAgentRequest(agent=convert.agent_to_pb(agent))
        response: pb.PrepareAgentResponse = await self._unary(
            lambda: self._stub().PrepareAgent(request, timeout=max(self.call_timeout_s, SPAWN_DEADLINE_S),
                                              metadata=self._metadata), retry=False)
        return convert.agent_from_pb(response.agent, self.cluster_id)

    async def freeze(self, agent_id: str, *, epoch: int = 0, options: FreezeOptions | None = None) -> FreezeReport:
        request = convert.freeze_request_to_pb(agent_id, epoch, options)
        wait = options or FreezeOptions()  # the freeze waits for idle (or the interrupted command's grace)
        deadline_s = self.call_timeout_s + EXEC_DEADLINE_MARGIN_S + wait.busy_timeout_s + wait.grace_s
        response: pb.FreezeAgentReply = await self._unary(
            lambda: self._stub().FreezeAgent(request, timeout=deadline_s, metadata=self._metadata),
            retry=False)
        return convert.freeze_report_from_pb(response, self.cluster_id)

    async def activate(self, agent_id: str, *, epoch: int = 0) -> Agent:
        request = pb.AgentRef(agent_id=agent_id, epoch=epoch)
        response: pb.AgentReply = await self._unary(
            lambda: self._stub().ActivateAgent(request, timeout=max(self.call_timeout_s, SPAWN_DEADLINE_S),
                                               metadata=self._metadata), retry=False)
        return convert.agent_from_pb(response.agent, self.cluster_id)

    def _stream_deadline_s(self) -> float:
        return self.call_timeout_s + EXEC_DEADLINE_MARGIN_S + LIMITS.max_snapshot_bytes / SNAPSHOT_MIN_BYTES_PER_S

    async def send(self, agent_id: str, mode: TransferMode, *, epoch: int = 0) -> AsyncIterator[TransferPiece]:
        request = pb.ExportAgentRequest(agent_id=agent_id, epoch=epoch, mode=workdir_wire.mode_to_pb(mode))
        call = self._stub().ExportAgent(request, timeout=self._stream_deadline_s(), metadata=self._metadata)
        try:
            with rpc_errors(self._name, self._tls):
                async for piece in workdir_wire.pieces_from_pb(call.__aiter__(), LIMITS, self.cluster_id):
                    yield piece
        finally:
            call.cancel()

    async def receive(self, agent_id: str, pieces: AsyncIterator[TransferPiece], *, epoch: int = 0
                      ) -> TransferReport:
        messages = workdir_wire.pieces_to_pb(pieces, agent_id, epoch)
        response: pb.ImportAgentResponse = await self._unary(
            lambda: self._stub().ImportAgent(messages, timeout=self._stream_deadline_s(), metadata=self._metadata),
            retry=False)
        return TransferReport(bytes_moved=response.bytes_moved, dirty_bytes=response.dirty_bytes,
                              members=response.members)

    async def close(self) -> None:
        channel, self._channel, self._stub_obj = self._channel, None, None
        if channel is not None:
            await channel.close()


__all__ = ["GrpcClusterClient", "channel_options", "is_loopback", "warn_plaintext_token"]

