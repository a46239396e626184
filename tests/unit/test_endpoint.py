"""parse_endpoint: the accepted endpoint forms, and a clear refusal for everything else."""

from __future__ import annotations

import pytest

from godel_ray.core.endpoint import Endpoint, parse_endpoint
from godel_ray.errors import InvalidArgument


@pytest.mark.parametrize(("text", "expected"), [
    ("localhost:50051", Endpoint("localhost", 50051, False)),
    ("10.0.0.7:1", Endpoint("10.0.0.7", 1, False)),
    ("grpc://site-a.example.com:443", Endpoint("site-a.example.com", 443, False)),
    ("grpcs://site-a.example.com:443", Endpoint("site-a.example.com", 443, True)),
    ("https://gpu.example.com:8443/", Endpoint("gpu.example.com", 8443, True)),
    ("[::1]:50051", Endpoint("::1", 50051, False)),
    ("grpcs://[fe80::1]:9", Endpoint("fe80::1", 9, True)),
    ("  127.0.0.1:65535 ", Endpoint("127.0.0.1", 65535, False)),
])
def test_accepted_forms(text: str, expected: Endpoint) -> None:
    assert parse_endpoint(text) == expected


def test_target_and_str_round_trip() -> None:
    ep = parse_endpoint("grpcs://[::1]:7000")
    assert ep.target == "[::1]:7000"
    assert parse_endpoint(str(ep)) == ep
    assert parse_endpoint(str(parse_endpoint("h:1"))) == Endpoint("h", 1, False)


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty"),
    ("localhost", "missing port"),
    ("localhost:", "not a number"),
    ("localhost:http", "not a number"),
    ("localhost:0", "out of range"),
    ("localhost:70000", "out of range"),
    ("ftp://host:21", "unknown scheme"),
    ("::1:50051", "brackets"),
    ("[::1]50051", "[addr]:port"),
    ("grpc://host:1/path", "paths"),
    ("user@host:1", "user info"),
    ("ho st:1", "invalid host"),
])
def test_refusals_say_why(text: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_endpoint(text)
    assert reason in str(info.value)
