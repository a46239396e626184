"""The committed generated code is exactly what the .proto produces."""

from __future__ import annotations

from pathlib import Path

from godel_ray.rpc import protogen


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    fresh = protogen.generate(tmp_path)
    assert set(fresh) == set(protogen.GENERATED)
    for name, text in fresh.items():
        committed = (protogen.GEN_DIR / name).read_text()
        assert committed == text, (
            f"godel_ray/rpc/gen/{name} is stale: run `python -m godel_ray.rpc.protogen` and commit it")
