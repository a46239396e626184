"""GodelError <-> gRPC status: the one place where either becomes the other.

Server side: ``abort(context, err)`` ends an RPC with the error's status code, its message, and
the trailing metadata ``godel-error: <ClassName>`` (plus ``godel-fields``: the JSON-safe structured
fields), so the client rebuilds the exact class. ``status_errors`` is the decorator every servicer
method wears: a ``GodelError`` becomes its status, anything else ``INTERNAL`` (and is logged).

Client side: ``rpc_errors(endpoint)`` is the one context manager mapping ``grpc.RpcError`` to the
GodelError tree (``raise ... from exc``). UNAVAILABLE becomes ``ClusterUnavailable`` naming the
endpoint, and says "TLS handshake refused" when TLS itself refused us (wrong CA, missing client
certificate), and otherwise carries ``cause`` (``transport_cause``: refused, unreachable, silent)
for the failure detector; DEADLINE_EXCEEDED becomes ``DeadlineExceeded``.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import grpc
import grpc.aio

from godel_ray import errors as E

log = logging.getLogger(__name__)

ERROR_CLASS_KEY = "godel-error"
ERROR_FIELDS_KEY = "godel-fields"

CODE_BY_CLASS: dict[str, grpc.StatusCode] = {
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "ALREADY_EXISTS": grpc.StatusCode.ALREADY_EXISTS,
    "UNAUTHENTICATED": grpc.StatusCode.UNAUTHENTICATED,
    "FAILED_PRECONDITION": grpc.StatusCode.FAILED_PRECONDITION,
    "RESOURCE_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "DEADLINE_EXCEEDED": grpc.StatusCode.DEADLINE_EXCEEDED,
}

# Used when the status carries no ``godel-error`` (raised by gRPC itself, or by a foreign server).
CLASS_BY_CODE: dict[grpc.StatusCode, type[E.GodelError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: E.InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: E.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: E.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: E.AlreadyExists,
    grpc.StatusCode.UNAUTHENTICATED: E.Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: E.Unauthenticated,
    grpc.StatusCode.FAILED_PRECONDITION: E.FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: E.ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: E.ClusterUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: E.DeadlineExceeded,
}

_TLS_MARKERS = ("ssl", "tls", "handshake", "tsi_", "certificate")
# Reasons a connection never reached TLS at all: not a handshake refusal.
_TRANSPORT_MARKERS = ("connection refused", "dns", "name resolution", "deadline", "timeout", "timed out",
                      "settings frame", "no route", "network is unreachable", "host is unreachable",
                      "tcp-connect")  # gRPC's "tcp handshaker", renamed so it is not read as TLS's handshake
# What an UNAVAILABLE says about the site's process (``ClusterUnavailable.fields["cause"]``, read by
# ``core.detector.probe_failure``). Wording as grpcio 1.85 reports it, e.g. "Failed to connect to remote
# host: Connection refused", "Stream removed (recvmsg:Connection reset by peer (104))", "Stream removed
# (ping timeout)", "connection attempt timed out before receiving SETTINGS frame".
CAUSE_MARKERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("refused", ("connection refused", "connection reset", "reset by peer")),  # nothing listens: gone
    ("unreachable", ("network is unreachable", "no route to host", "host is unreachable")),  # partition
    ("silent", ("ping timeout", "keepalive", "settings frame", "timed out", "deadline")),  # no answer
)


# --- server side -------------------------------------------------------------------------------

def status_code(err: E.GodelError) -> grpc.StatusCode:
    return CODE_BY_CLASS.get(err.code, grpc.StatusCode.UNKNOWN)


def _json_fields(err: E.GodelError) -> str:
    safe: dict[str, Any] = {}
    for key, value in err.fields.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        safe[key] = value
    return json.dumps(safe)


async def abort(context: grpc.aio.ServicerContext, err: E.GodelError) -> NoReturn:
    await context.abort(status_code(err), err.message, trailing_metadata=(
        (ERROR_CLASS_KEY, type(err).__name__), (ERROR_FIELDS_KEY, _json_fields(err))))
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


F = TypeVar("F", bound=Callable[..., Any])


def status_errors(method: F) -> F:
    """Decorate a servicer method (coroutine or async generator): errors become statuses."""

    async def _handle(exc: BaseException, context: grpc.aio.ServicerContext) -> NoReturn:
        if isinstance(exc, E.GodelError):
            await abort(context, exc)
        log.exception("unexpected error in %s", method.__name__, exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        raise AssertionError("unreachable")  # pragma: no cover

    if inspect.isasyncgenfunction(method):
        @functools.wraps(method)
        async def gen_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for item in method(self, request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - every error becomes a status
                await _handle(exc, context)
        return gen_wrapper  # type: ignore[return-value]

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - every error becomes a status
            await _handle(exc, context)
    return wrapper  # type: ignore[return-value]


# --- client side -------------------------------------------------------------------------------

def _trailing(exc: grpc.RpcError) -> dict[str, str]:
    try:
        md = exc.trailing_metadata()
    except Exception:  # noqa: BLE001 - some RpcErrors carry none
        return {}
    return {str(k): str(v) for k, v in (md or ())}


def is_tls_refusal(details: str, tls_channel: bool = False) -> bool:
    """Whether an UNAVAILABLE ``details`` means TLS refused us.

    Only a TLS channel can be refused by TLS: on a plaintext one, "handshake" in the details is the
    TCP connect's ("tcp handshaker shutdown": gRPC gave up a connection attempt), never TLS's. A
    server that requires a client certificate (mTLS) just closes the socket when there is none: on
    a TLS channel, a connect that reached the server but failed is a handshake refusal.
    """
    if not tls_channel:
        return False
    lower = details.lower().replace("tcp handshaker", "tcp-connect")
    if any(marker in lower for marker in _TLS_MARKERS):
        return True
    return "failed to connect" in lower and not any(marker in lower for marker in _TRANSPORT_MARKERS)


def transport_cause(details: str) -> str:
    """``refused``, ``unreachable``, ``silent`` or "" (unknown) for an UNAVAILABLE's ``details``."""
    lower = details.lower()
    for cause, markers in CAUSE_MARKERS:
        if any(marker in lower for marker in markers):
            return cause
    return ""


def from_rpc_error(exc: grpc.RpcError, endpoint: str, tls_channel: bool = False) -> E.GodelError:
    """Build the GodelError for a failed call to ``endpoint`` (over TLS when ``tls_channel``)."""
    code: grpc.StatusCode = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details: str = (exc.details() if hasattr(exc, "details") else "") or ""
    trailing = _trailing(exc)
    cls = E.ERRORS_BY_NAME.get(trailing.get(ERROR_CLASS_KEY, ""))
    if cls is not None:
        try:
            fields = json.loads(trailing.get(ERROR_FIELDS_KEY, "{}"))
        except ValueError:
            fields = {}
        if not isinstance(fields, dict):
            fields = {}
        return cls(details or cls.__name__, **fields)
    if code == grpc.StatusCode.UNAVAILABLE:
        if is_tls_refusal(details, tls_channel):
            return E.ClusterUnavailable(
                f"TLS handshake refused by site {endpoint}: check the CA (--tls-ca) and, for a site "
                f"that requires client certificates, the client certificate and key ({details})",
                endpoint=endpoint, tls=True)
        return E.ClusterUnavailable(f"site {endpoint} is unavailable: {details}", endpoint=endpoint,
                                    cause=transport_cause(details))
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return E.DeadlineExceeded(f"call to site {endpoint} ran past its deadline", endpoint=endpoint)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return E.Unauthenticated(f"site {endpoint} refused our credential: {details}", endpoint=endpoint)
    cls = CLASS_BY_CODE.get(code, E.GodelError)
    return cls(f"site {endpoint}: {code.name}: {details}", endpoint=endpoint)


@contextmanager
def rpc_errors(endpoint: str, tls_channel: bool = False) -> Iterator[None]:
    """Map every ``grpc.RpcError`` raised inside to the GodelError tree (``raise ... from exc``)."""
    try:
        yield
    except grpc.RpcError as exc:
        raise from_rpc_error(exc, endpoint, tls_channel) from exc


__all__ = [
    "CLASS_BY_CODE", "CODE_BY_CLASS", "ERROR_CLASS_KEY", "ERROR_FIELDS_KEY", "abort", "from_rpc_error",
    "is_tls_refusal", "rpc_errors", "status_code", "status_errors", "transport_cause",
]
