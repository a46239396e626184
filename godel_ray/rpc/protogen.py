"""Generates the Python code for ``proto/`` into ``godel_ray/rpc/gen`` (committed).

Run ``python -m godel_ray.rpc.protogen`` after editing the .proto; ``tests/rpc/test_proto_drift.py``
fails when the committed code differs from what this produces.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "proto"
PROTO_FILE = "godel/federation/v1/federation.proto"
GEN_DIR = Path(__file__).resolve().parent / "gen"
GENERATED = ("federation_pb2.py", "federation_pb2.pyi", "federation_pb2_grpc.py")


def generate(out_dir: Path) -> dict[str, str]:
    """Run protoc; return {file name: text} with imports made package-relative."""
    from grpc_tools import protoc  # only a dev/test dependency

    with tempfile.TemporaryDirectory() as tmp:
        rc = protoc.main([
            "grpc_tools.protoc", f"-I{PROTO_ROOT}", f"--python_out={tmp}", f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}", str(PROTO_ROOT / PROTO_FILE),
        ])
        if rc != 0:
            raise RuntimeError(f"protoc failed with exit code {rc}")
        src = Path(tmp) / "godel/federation/v1"
        out: dict[str, str] = {}
        for name in GENERATED:
            text = (src / name).read_text()
            text = text.replace(
                "from godel.federation.v1 import federation_pb2 as", "from . import federation_pb2 as"
            )
            out[name] = text
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in out.items():
        (out_dir / name).write_text(text)
    return out


if __name__ == "__main__":
    generate(GEN_DIR)
    print(f"generated {', '.join(GENERATED)} into {GEN_DIR}", file=sys.stderr)
