"""``godel_ray.privatefile``: the one rule for files that hold secrets (tokens, TLS keys, env files)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from godel_ray.errors import InvalidArgument
from godel_ray.privatefile import read_private


def test_a_private_file_is_read_and_an_open_one_refused_with_the_fix(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    assert read_private(secret, "token file") == b"s3cret\n"
    secret.chmod(0o640)
    with pytest.raises(InvalidArgument) as refused:
        read_private(secret, "token file", field="env")
    assert f"token file {secret} is accessible by group or others (mode 640)" in refused.value.message
    assert f"chmod 600 {secret}" in refused.value.message and "s3cret" not in refused.value.message
    assert refused.value.fields == {"field": "env"}


def test_size_bound_missing_file_and_non_regular_files(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * 11)
    big.chmod(0o600)
    with pytest.raises(InvalidArgument, match="is over 10 bytes"):
        read_private(big, "env file", max_bytes=10)
    with pytest.raises(InvalidArgument, match="cannot read token file"):
        read_private(tmp_path / "absent", "token file")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(InvalidArgument, match="is not a regular file"):  # refused before open: never blocks
        read_private(fifo, "token file")


def test_the_cli_side_of_the_rule_imports_no_grpc() -> None:
    code = "import sys, godel_cli.envfile; assert 'grpc' not in sys.modules, 'grpc imported'"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
