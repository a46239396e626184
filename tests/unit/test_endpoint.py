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
    ("127.0.0.1:50051\n", Endpoint("127.0.0.1", 50051, False)),
    ("site_a.internal.:00080", Endpoint("site_a.internal.", 80, False)),
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
    ("host:\u00b2", "not a number"),  # str.isdigit() says yes, int() says no
    ("host:\u0663", "not a number"),  # ARABIC-INDIC DIGIT THREE
    ("host:\uff18\uff10", "not a number"),  # fullwidth "80"
    ("host:" + "9" * 5000, "out of range"),  # int() of more than 4300 digits raises ValueError
    ("host:+80", "not a number"),
    ("host:-1", "not a number"),
    ("h\u00e9llo:80", "invalid host"),
    ("host\n:80", "invalid host"),
    ("a..b:80", "invalid host"),
    (".host:80", "invalid host"),
    ("-host:80", "invalid host"),
    ("x" * 64 + ".com:80", "invalid host"),
    ("[zz::1]:80", "not an IPv6 address"),
    ("[1.2.3.4]:80", "not an IPv6 address"),
    ("[::\u00b9]:80", "not an IPv6 address"),
])
def test_refusals_say_why(text: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_endpoint(text)
    assert reason in str(info.value)


def test_every_refusal_is_invalid_argument_never_value_error() -> None:
    """Any text: a parse or an InvalidArgument, never an uncaught ValueError (``int("\u00b2")``)."""
    for text in ["h:\u00b2", "[::1]:\u00b2", "h:1\u00b2", "[\u00b2]:1", "h:" + "1" * 10_000, "\u00b2:\u00b2"]:
        with pytest.raises(InvalidArgument):
            parse_endpoint(text)
