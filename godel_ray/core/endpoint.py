"""Parsing of site endpoints: ``host:port``, ``grpc://``, ``grpcs://``/``https://`` (TLS), ``[::1]:port``.

Pure: no grpc, no ray. The one place that decides whether an endpoint speaks TLS.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from godel_ray.errors import InvalidArgument

_TLS_SCHEMES = ("grpcs", "https")
_PLAIN_SCHEMES = ("grpc", "http")
_EXAMPLES = "host:port, grpc://host:port, grpcs://host:port, https://host:port or [::1]:port"
_HOST_LABEL_RE = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
MAX_HOST_BYTES = 253


def _is_hostname(host: str) -> bool:
    """A DNS-style name or an IPv4 address: ASCII labels separated by single dots (one trailing dot ok)."""
    labels = host.removesuffix(".").split(".")
    return len(host) <= MAX_HOST_BYTES and all(_HOST_LABEL_RE.fullmatch(label) for label in labels)


def _is_ipv6(host: str) -> bool:
    if not host.isascii():
        return False
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        return False


@dataclass(frozen=True)
class Endpoint:
    """A site address. ``target`` is what a gRPC channel dials."""

    host: str
    port: int
    tls: bool

    @property
    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{'grpcs' if self.tls else 'grpc'}://{self.target}"


def parse_endpoint(text: str) -> Endpoint:
    """Parse ``text``; raise ``InvalidArgument`` naming the accepted forms when it is not one."""
    raw = text.strip()
    if not raw:
        raise InvalidArgument(f"empty endpoint; expected {_EXAMPLES}")
    tls = False
    rest = raw
    if "://" in raw:
        scheme, rest = raw.split("://", 1)
        scheme = scheme.lower()
        if scheme in _TLS_SCHEMES:
            tls = True
        elif scheme not in _PLAIN_SCHEMES:
            raise InvalidArgument(f"endpoint {text!r}: unknown scheme {scheme!r}; expected {_EXAMPLES}")
    rest = rest.rstrip("/")
    if "/" in rest or "?" in rest or "@" in rest:
        raise InvalidArgument(f"endpoint {text!r}: paths, queries and user info are not allowed; "
                              f"expected {_EXAMPLES}")
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0 or not rest[end + 1:].startswith(":"):
            raise InvalidArgument(f"endpoint {text!r}: an IPv6 address needs the form [addr]:port")
        host, port_text = rest[1:end], rest[end + 2:]
        if not _is_ipv6(host):
            raise InvalidArgument(f"endpoint {text!r}: {host!r} is not an IPv6 address")
    else:
        host, sep, port_text = rest.rpartition(":")
        if not sep or not host:
            raise InvalidArgument(f"endpoint {text!r}: missing port; expected {_EXAMPLES}")
        if ":" in host:
            raise InvalidArgument(f"endpoint {text!r}: write IPv6 addresses in brackets, e.g. [::1]:50051")
        if not _is_hostname(host):
            raise InvalidArgument(f"endpoint {text!r}: invalid host {host!r}: use a host name (letters, "
                                  "digits, '-', '_' in dot-separated labels of up to 63) or an IP address")
    # ASCII digits only: str.isdigit() also accepts "²" or "٣", which int() then refuses
    if not (port_text.isascii() and port_text.isdigit()):
        raise InvalidArgument(f"endpoint {text!r}: port {port_text!r} is not a number")
    port = int(port_text) if len(port_text) <= 5 else 0
    if not 1 <= port <= 65535:
        raise InvalidArgument(f"endpoint {text!r}: port {port_text} is out of range 1-65535")
    return Endpoint(host=host, port=port, tls=tls)


__all__ = ["Endpoint", "parse_endpoint"]
