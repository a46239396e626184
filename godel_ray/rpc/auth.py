"""Bearer-token authentication for the site server, and the secret files it reads.

``BearerTokenInterceptor`` checks ``authorization: Bearer <token>`` on every RPC except the health
service (``grpc.health.v1``: load balancers probe it), in constant time, and rejects with
UNAUTHENTICATED *before* the handler runs: a refused call has no side effect. Server reflection
needs the credential too: it describes the whole API to whoever asks.

``read_token_file`` and ``read_key_file`` (a TLS private key) refuse files that group or others can
access (``godel_ray.privatefile``, the rule the CLI's ``--env-file`` shares): a token or a key is
what lets a caller run commands on the site.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from godel_ray.errors import InvalidArgument
from godel_ray.privatefile import read_private

AUTH_METADATA_KEY = "authorization"
BEARER_PREFIX = "Bearer "
# Open to every caller: load balancers probe health. Nothing else (reflection included).
PUBLIC_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)


def _read_secret_file(path: str | os.PathLike[str], what: str) -> bytes:
    """The bytes of ``path`` (``privatefile.read_private``: a regular file only group-less, other-less);
    ``InvalidArgument`` also when it is empty."""
    data = read_private(path, what)
    if not data.strip():
        raise InvalidArgument(f"{what} {Path(path).expanduser()} is empty")
    return data


def read_token_file(path: str | os.PathLike[str]) -> str:
    """The token in ``path``; ``InvalidArgument`` if missing, empty, or readable by group/others."""
    return _read_secret_file(path, "token file").decode(errors="replace").strip()


def read_key_file(path: str | os.PathLike[str]) -> bytes:
    """A TLS private key (PEM); ``InvalidArgument`` if missing, empty, or readable by group/others."""
    return _read_secret_file(path, "TLS key file")


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return ((AUTH_METADATA_KEY, BEARER_PREFIX + token),)


def _reject(handler: grpc.RpcMethodHandler, details: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that aborts without calling it."""

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, details)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, details)
        yield  # pragma: no cover - makes this an async generator

    kw = {"request_deserializer": handler.request_deserializer,
          "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming, **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming, **kw)
    return grpc.unary_unary_rpc_method_handler(unary, **kw)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Require ``authorization: Bearer <token>`` on every non-public RPC (constant-time compare)."""

    def __init__(self, token: str) -> None:
        if not token:
            raise InvalidArgument("an empty bearer token would let anyone in")
        self._expected = (BEARER_PREFIX + token).encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method or ""
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(PUBLIC_METHOD_PREFIXES):
            return handler
        presented = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == AUTH_METADATA_KEY:
                presented = value if isinstance(value, str) else value.decode(errors="replace")
        if not presented:
            return _reject(handler, "missing credential: send 'authorization: Bearer <token>'")
        if not hmac.compare_digest(presented.encode(), self._expected):
            return _reject(handler, "invalid bearer token")
        return handler


__all__ = ["AUTH_METADATA_KEY", "PUBLIC_METHOD_PREFIXES", "BearerTokenInterceptor", "bearer_metadata",
           "read_key_file", "read_token_file"]
