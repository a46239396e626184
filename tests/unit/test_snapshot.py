"""Snapshot archives: a good round trip, and every hostile archive refused with nothing left behind."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from godel_ray.agents.snapshot import check_archive, pack_workdir, sha256_hex, unpack_archive
from godel_ray.errors import SnapshotRejected

LIMIT = 1024 * 1024


def make_tar(add: Callable[[tarfile.TarFile], None], compress: bool = True) -> tuple[bytes, str]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        add(tar)
    data = gzip.compress(raw.getvalue()) if compress else raw.getvalue()
    return data, sha256_hex(data)


def add_file(tar: tarfile.TarFile, name: str, content: bytes = b"x") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    tar.addfile(info, io.BytesIO(content))


def add_special(tar: tarfile.TarFile, name: str, kind: bytes, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    tar.addfile(info)


def test_round_trip_preserves_files_dirs_links_and_modes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub" / "deep").mkdir(parents=True)
    (src / "a.txt").write_text("hello")
    (src / "sub" / "deep" / "b.bin").write_bytes(os.urandom(5000))
    (src / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "run.sh").chmod(0o755)
    (src / "empty").mkdir()
    os.symlink("sub/deep/b.bin", src / "link")
    os.link(src / "a.txt", src / "hard.txt")
    os.symlink("/etc/passwd", src / "outside")  # skipped: it leaves the workdir
    os.mkfifo(src / "pipe")  # skipped: special file

    data, digest = pack_workdir(str(src), LIMIT)
    assert check_archive(data, digest, LIMIT).members >= 7
    dest = tmp_path / "dest"
    unpack_archive(data, digest, str(dest), LIMIT)

    assert (dest / "a.txt").read_text() == "hello"
    assert (dest / "sub" / "deep" / "b.bin").read_bytes() == (src / "sub" / "deep" / "b.bin").read_bytes()
    assert os.access(dest / "run.sh", os.X_OK)
    assert (dest / "empty").is_dir()
    assert os.readlink(dest / "link") == "sub/deep/b.bin"
    assert (dest / "hard.txt").read_text() == "hello"
    assert not os.path.lexists(dest / "outside")
    assert not os.path.lexists(dest / "pipe")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".import-")]


def test_pack_refuses_a_workdir_over_the_limit(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"\0" * 20_000)
    with pytest.raises(SnapshotRejected, match="over the snapshot limit"):
        pack_workdir(str(tmp_path), 10_000)


HOSTILE: dict[str, tuple[Callable[[tarfile.TarFile], None], str]] = {
    "absolute path": (lambda t: add_file(t, "/tmp/evil"), "absolute"),
    "dotdot": (lambda t: add_file(t, "sub/../../evil"), r"'\.\.'"),
    "symlink out absolute": (lambda t: add_special(t, "l", tarfile.SYMTYPE, "/etc/passwd"), "leaves"),
    "symlink out relative": (lambda t: add_special(t, "d/l", tarfile.SYMTYPE, "../../etc"), "leaves"),
    "hardlink out": (lambda t: add_special(t, "h", tarfile.LNKTYPE, "/etc/passwd"), "leaves"),
    "hardlink dotdot": (lambda t: add_special(t, "h", tarfile.LNKTYPE, "../x"), "leaves"),
    "hardlink to nothing": (lambda t: add_special(t, "h", tarfile.LNKTYPE, "missing"), "earlier"),
    "char device": (lambda t: add_special(t, "dev", tarfile.CHRTYPE), "device"),
    "block device": (lambda t: add_special(t, "blk", tarfile.BLKTYPE), "device"),
    "fifo": (lambda t: add_special(t, "f", tarfile.FIFOTYPE), "fifo"),
    "oversize": (lambda t: add_file(t, "big", b"\0" * (LIMIT + 1)), "limit"),
    "many files over the limit": (
        lambda t: [add_file(t, f"f{i}", b"\0" * (LIMIT // 4)) for i in range(5)], "limit"),
    "duplicate name": (lambda t: (add_file(t, "a"), add_file(t, "a")), "twice"),
    # A symlink that stays inside lexically but, through another link, resolves outside.
    "symlink through symlink": (
        lambda t: (add_special(t, "s", tarfile.SYMTYPE, "."), add_special(t, "t", tarfile.SYMTYPE, "s/..")),
        "leaves"),
    # Write through an earlier symlink to a directory outside.
    "write through symlink": (
        lambda t: (add_special(t, "s", tarfile.SYMTYPE, "."), add_special(t, "d", tarfile.SYMTYPE, "s/.."),
                   add_file(t, "d/evil")), "leaves|outside"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_rejected_and_leaves_nothing(case: str, tmp_path: Path) -> None:
    build, message = HOSTILE[case]
    data, digest = make_tar(build)
    with pytest.raises(SnapshotRejected, match=message):
        check_archive(data, digest, LIMIT)
    dest = tmp_path / "dest"
    with pytest.raises(SnapshotRejected, match=message):
        unpack_archive(data, digest, str(dest), LIMIT)
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []
    assert not Path("/tmp/evil").exists()


def test_gzip_bomb_stops_at_the_limit(tmp_path: Path) -> None:
    # A header that lies about nothing but whose content decompresses far past the limit.
    data, digest = make_tar(lambda t: add_file(t, "zeros", b"\0" * (8 * LIMIT)))
    assert len(data) < LIMIT // 10
    with pytest.raises(SnapshotRejected, match="limit"):
        unpack_archive(data, digest, str(tmp_path / "dest"), LIMIT)
    assert list(tmp_path.iterdir()) == []


def test_wrong_checksum_is_rejected(tmp_path: Path) -> None:
    data, _ = make_tar(lambda t: add_file(t, "a"))
    with pytest.raises(SnapshotRejected, match="checksum"):
        unpack_archive(data, "0" * 64, str(tmp_path / "dest"), LIMIT)
    assert list(tmp_path.iterdir()) == []


GARBAGE = [b"", b"not a tar at all", gzip.compress(b"\x01" * 2000), b"\x1f\x8b\x08garbage"]


@pytest.mark.parametrize("garbage", GARBAGE)
def test_garbage_is_rejected_as_corrupt(garbage: bytes, tmp_path: Path) -> None:
    with pytest.raises(SnapshotRejected, match="corrupt"):
        unpack_archive(garbage, sha256_hex(garbage), str(tmp_path / "dest"), LIMIT)
    assert list(tmp_path.iterdir()) == []


def test_truncated_archive_is_rejected(tmp_path: Path) -> None:
    data, _ = make_tar(lambda t: add_file(t, "a", os.urandom(50_000)))
    cut = data[: len(data) // 2]
    with pytest.raises(SnapshotRejected, match="corrupt"):
        unpack_archive(cut, sha256_hex(cut), str(tmp_path / "dest"), LIMIT)
    assert list(tmp_path.iterdir()) == []


def test_unpack_refuses_a_non_empty_destination(tmp_path: Path) -> None:
    data, digest = make_tar(lambda t: add_file(t, "a"))
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    with pytest.raises(SnapshotRejected, match="not an empty directory"):
        unpack_archive(data, digest, str(dest), LIMIT)
    assert (dest / "keep").read_text() == "mine"
