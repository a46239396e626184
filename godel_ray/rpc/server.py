"""The site's gRPC server stack: ``build_server`` and what it is made of.

One grpc.aio server, built the same way by ``swarmctl site serve`` (``godel_ray.site.serve``) and
the rpc tests:

- services: ``ClusterFederation`` over an agent runtime (``rpc.servicer``), ``grpc.health.v1`` and
  server reflection;
- interceptors, outermost first: ``BearerTokenInterceptor`` (when a token is set: every RPC but
  health needs it, reflection included), then ``StreamLimiter`` (counts open streaming calls);
- transport: TLS / mTLS credentials from ``server_credentials`` (the key file is refused when group
  or others can read it), message size limits, keepalive pings allowed.

Bounds on streams, from ``settings.Limits``: at most ``max_streams_per_connection`` concurrent
streams on one HTTP/2 connection (``grpc.max_concurrent_streams``: a client queues the rest); at
most ``max_open_streams`` streaming calls open in all, of which at most ``max_public_streams``
unauthenticated ones (health ``Watch``). A streaming call over a bound is refused at once with
RESOURCE_EXHAUSTED, before its handler runs. Unary calls are short and not counted.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from godel_ray.core.cluster_client import ClusterClient
from godel_ray.errors import InvalidArgument
from godel_ray.rpc import convert
from godel_ray.rpc.auth import PUBLIC_METHOD_PREFIXES, BearerTokenInterceptor, read_key_file
from godel_ray.rpc.gen import federation_pb2 as pb
from godel_ray.rpc.gen import federation_pb2_grpc as pb_grpc
from godel_ray.settings import LIMITS, Limits

MESSAGE_MARGIN_BYTES = 64 * 1024
SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["ClusterFederation"].full_name
HEALTH_SERVICE_NAME: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# Clients ping every second (see rpc.client.channel_options: the failure detector relies on it);
# allow it, even between calls.
MIN_PING_INTERVAL_MS = 500


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def server_credentials(cert_file: str, key_file: str, client_ca_file: str | None = None) -> grpc.ServerCredentials:
    """TLS credentials; with ``client_ca_file``, clients must present a certificate it signed (mTLS)."""
    from pathlib import Path

    key = read_key_file(key_file)
    try:
        cert = Path(cert_file).read_bytes()
        client_ca = Path(client_ca_file).read_bytes() if client_ca_file else None
    except OSError as exc:
        raise InvalidArgument(f"cannot read {exc.filename}: {exc.strerror or exc}") from exc
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


@dataclass
class StreamCounts:
    """Open streaming calls: ``total`` of them, ``public`` of which came without a credential check."""

    total: int = 0
    public: int = 0


class StreamLimiter(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuse a streaming call with RESOURCE_EXHAUSTED while ``max_open_streams`` are open (or
    ``max_public_streams`` public ones, for a public method). Counts from the handler's start to
    its end, whichever way it ends. One event loop: plain counters, no lock."""

    def __init__(self, limits: Limits = LIMITS) -> None:
        self._max_total = limits.max_open_streams
        self._max_public = limits.max_public_streams
        self.open = StreamCounts()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or not (handler.request_streaming or handler.response_streaming):
            return handler
        public = (handler_call_details.method or "").startswith(PUBLIC_METHOD_PREFIXES)
        return _limited(handler, self, public)

    def refusal(self, public: bool) -> str | None:
        if self.open.total >= self._max_total:
            return f"this site has {self.open.total} streams open, its limit: retry later"
        if public and self.open.public >= self._max_public:
            return f"this site has {self.open.public} unauthenticated streams open, its limit: retry later"
        return None

    def enter(self, public: bool) -> None:
        self.open.total += 1
        self.open.public += public

    def leave(self, public: bool) -> None:
        self.open.total -= 1
        self.open.public -= public


def _limited(handler: grpc.RpcMethodHandler, limiter: StreamLimiter, public: bool) -> grpc.RpcMethodHandler:
    """``handler`` with its behaviour counted by ``limiter`` (same kind, same (de)serializers)."""
    behaviour: Callable[..., Any] = (handler.stream_stream or handler.unary_stream or handler.stream_unary)

    async def admit(context: grpc.aio.ServicerContext) -> None:
        refusal = limiter.refusal(public)
        if refusal is not None:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)

    if inspect.isasyncgenfunction(behaviour):
        async def streamed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await admit(context)
            limiter.enter(public)
            try:
                async for response in behaviour(request, context):
                    yield response
            finally:
                limiter.leave(public)
        wrapped: Callable[..., Any] = streamed
    else:  # a coroutine that writes with ``context.write`` (health Watch) or returns one response
        async def awaited(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await admit(context)
            limiter.enter(public)
            try:
                return await behaviour(request, context)
            finally:
                limiter.leave(public)
        wrapped = awaited

    kw = {"request_deserializer": handler.request_deserializer,
          "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(wrapped, **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(wrapped, **kw)
    return grpc.unary_stream_rpc_method_handler(wrapped, **kw)


async def build_server(runtime: ClusterClient, *, token: str | None, host: str = "127.0.0.1", port: int = 0,
                       credentials: grpc.ServerCredentials | None = None, cluster_id: str = "",
                       limits: Limits = LIMITS) -> tuple[grpc.aio.Server, int, HealthServicer]:
    """A started grpc.aio server over ``runtime``; returns (server, bound port, health servicer).

    ``token`` None: no bearer token (only mTLS ``credentials`` may then authenticate callers).
    """
    from godel_ray.rpc.servicer import ClusterFederationServicer

    max_bytes = limits.max_message_bytes + MESSAGE_MARGIN_BYTES
    interceptors: list[grpc.aio.ServerInterceptor] = [BearerTokenInterceptor(token)] if token else []
    interceptors.append(StreamLimiter(limits))
    server = grpc.aio.server(interceptors=interceptors, options=[
        ("grpc.max_receive_message_length", max_bytes),
        ("grpc.max_send_message_length", convert.max_exec_response_bytes(limits)),  # Exec: one reply
        ("grpc.max_concurrent_streams", limits.max_streams_per_connection),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
        ("grpc.http2.max_ping_strikes", 0),
    ])
    pb_grpc.add_ClusterFederationServicer_to_server(  # type: ignore[no-untyped-call]
        ClusterFederationServicer(runtime, cluster_id, limits), server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection((SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = format_hostport(host, port)
    try:
        bound = (server.add_secure_port(address, credentials) if credentials is not None
                 else server.add_insecure_port(address))
    except RuntimeError as exc:
        raise InvalidArgument(f"cannot bind {address}: {exc}") from exc
    if bound == 0:
        raise InvalidArgument(f"cannot bind {address}: the port is in use or the host is not local")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    await health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    return server, bound, health


__all__ = ["HEALTH_SERVICE_NAME", "SERVICE_NAME", "StreamCounts", "StreamLimiter", "build_server",
           "format_hostport", "server_credentials"]
