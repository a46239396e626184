"""The committed generated code is exactly what the .proto produces (generator version stamps aside)."""

from __future__ import annotations

import re
from pathlib import Path

from godel_ray.rpc import protogen

# A newer grpcio-tools stamps its own version into the output; the contract is everything else.
_STAMPS = (
    (re.compile(r"# Protobuf Python Version: \S+"), "# Protobuf Python Version: <v>"),
    (re.compile(r"(ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,)\s*\d+,\s*\d+,\s*\d+,"),
     r"\1 <v>,"),
    (re.compile(r"GRPC_GENERATED_VERSION = '[^']*'"), "GRPC_GENERATED_VERSION = '<v>'"),
)


def _without_stamps(text: str) -> str:
    for pattern, replacement in _STAMPS:
        text = pattern.sub(replacement, text)
    return text


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    fresh = protogen.generate(tmp_path)
    assert set(fresh) == set(protogen.GENERATED)
    for name, text in fresh.items():
        committed = (protogen.GEN_DIR / name).read_text()
        assert _without_stamps(committed) == _without_stamps(text), (
            f"godel_ray/rpc/gen/{name} is stale: run `python -m godel_ray.rpc.protogen` and commit it")


def test_a_changed_proto_is_caught(tmp_path: Path) -> None:
    committed = (protogen.GEN_DIR / "federation_pb2.py").read_text()
    edited = committed.replace("AgentSpec", "AgentSpek", 1)
    assert _without_stamps(edited) != _without_stamps(committed)
    assert "<v>" in _without_stamps(committed)  # the stamps were found, so only they are ignored
