"""The streamed workdir tar (agents/transfer.py): made as sent, unpacked as it arrives, checked as today."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from godel_ray.agents.transfer import WorkdirStream, apply_stream, dirty_bytes, unpack_stream
from godel_ray.errors import SnapshotRejected

CHUNK = 64 * 1024


def _tree(root: Path) -> dict[str, tuple[str, bytes | str]]:
    out: dict[str, tuple[str, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = str(full.relative_to(root))
            if full.is_symlink():
                out[rel] = ("link", os.readlink(full))
            elif full.is_dir():
                out[rel] = ("dir", "")
            else:
                out[rel] = ("file", full.read_bytes())
    return out


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "notes.txt").write_text("kept\n")
    (root / "sub" / "random.bin").write_bytes(os.urandom(3 * CHUNK + 17))
    (root / "sub" / "deep" / "empty").write_bytes(b"")
    (root / "text.log").write_text("line of text\n" * 20000)
    os.symlink("sub/random.bin", root / "link")
    os.link(root / "notes.txt", root / "hard")
    return root


@pytest.mark.parametrize("compress", ["none", "zstd"])
def test_a_streamed_workdir_arrives_exact_in_bounded_chunks(workdir: Path, tmp_path: Path, compress: str) -> None:
    stream = WorkdirStream(str(workdir), chunk_bytes=CHUNK, compress=compress)  # type: ignore[arg-type]
    chunks = list(stream)
    assert max(len(c) for c in chunks) <= CHUNK
    assert stream.sha256 == hashlib.sha256(b"".join(chunks)).hexdigest() and stream.size == sum(map(len, chunks))
    assert stream.codec == compress
    if compress == "zstd":
        assert stream.size < stream.tar_bytes
    summary = unpack_stream(iter(chunks), str(tmp_path / "dst"), expected_sha256=lambda: stream.sha256,
                            codec=stream.codec)
    assert _tree(tmp_path / "dst") == _tree(workdir)
    assert summary.members == len(_tree(workdir))
    entry = stream.manifest["sub/random.bin"]
    st = os.lstat(workdir / "sub" / "random.bin")
    assert (entry.size, entry.mtime_ns, entry.ctime_ns, entry.inode, entry.kind, entry.torn) == (
        st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, "file", False)
    assert {stream.manifest["hard"].kind, stream.manifest["notes.txt"].kind} == {"file", "hardlink"}
    assert stream.manifest["link"].kind == "link" and stream.manifest["sub"].kind == "dir"


def test_zstd_is_skipped_when_a_sample_does_not_compress(tmp_path: Path) -> None:
    root = tmp_path / "src"
    root.mkdir()
    (root / "noise").write_bytes(os.urandom(4 * CHUNK))
    stream = WorkdirStream(str(root), chunk_bytes=CHUNK, compress="zstd")
    chunks = list(stream)
    assert stream.codec == "none" and stream.size == stream.tar_bytes
    unpack_stream(iter(chunks), str(tmp_path / "dst"), expected_sha256=lambda: stream.sha256, codec="none")
    assert (tmp_path / "dst" / "noise").read_bytes() == (root / "noise").read_bytes()


def test_a_file_that_shrinks_while_sent_keeps_the_stream_valid_and_is_marked_torn(tmp_path: Path) -> None:
    root = tmp_path / "src"
    root.mkdir()
    (root / "big").write_bytes(b"a" * (8 * CHUNK))
    stream = WorkdirStream(str(root), chunk_bytes=CHUNK)
    it = iter(stream)
    chunks = [next(it), next(it)]
    (root / "big").write_bytes(b"b")  # truncated while it is read
    chunks += list(it)
    unpack_stream(iter(chunks), str(tmp_path / "dst"), expected_sha256=lambda: stream.sha256)
    assert stream.manifest["big"].torn
    assert os.path.getsize(tmp_path / "dst" / "big") == 8 * CHUNK


def test_a_checksum_mismatch_leaves_nothing(workdir: Path, tmp_path: Path) -> None:
    stream = WorkdirStream(str(workdir), chunk_bytes=CHUNK)
    chunks = list(stream)
    with pytest.raises(SnapshotRejected, match="checksum mismatch"):
        unpack_stream(iter(chunks), str(tmp_path / "dst"), expected_sha256=lambda: "0" * 64)
    assert os.listdir(tmp_path) == ["src"]


def test_a_hostile_stream_is_refused_as_it_arrives_and_leaves_nothing(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("../escape")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    data = buf.getvalue()
    with pytest.raises(SnapshotRejected, match="'..' component"):
        unpack_stream(iter([data[:700], data[700:]]), str(tmp_path / "dst"),
                      expected_sha256=lambda: hashlib.sha256(data).hexdigest())
    assert os.listdir(tmp_path) == []
    with pytest.raises(SnapshotRejected, match="not bytes"):
        unpack_stream(iter(["text"]), str(tmp_path / "dst"), expected_sha256=lambda: "")  # type: ignore[list-item]
    with pytest.raises(SnapshotRejected, match="corrupt"):
        unpack_stream(iter([b"not zstd at all"]), str(tmp_path / "dst"), expected_sha256=lambda: "", codec="zstd")
    assert os.listdir(tmp_path) == []


def test_the_size_limit_stops_the_sender(workdir: Path) -> None:
    with pytest.raises(SnapshotRejected, match="over the snapshot limit of 4096 bytes"):
        list(WorkdirStream(str(workdir), max_bytes=4096, chunk_bytes=CHUNK))


def test_a_delta_brings_a_staged_copy_to_the_tree_as_it_is_now(workdir: Path, tmp_path: Path) -> None:
    """Written, deleted, renamed, a file turned into a directory: after the full stream and one delta
    the staged copy equals the source tree; the delta carries only what changed."""
    full = WorkdirStream(str(workdir), chunk_bytes=CHUNK)
    chunks = list(full)
    staged = tmp_path / "staged"
    unpack_stream(iter(chunks), str(staged), expected_sha256=lambda: full.sha256)
    (workdir / "notes.txt").write_text("changed\n")  # written (its hard link "hard" follows)
    (workdir / "text.log").unlink()  # deleted
    os.rename(workdir / "sub" / "deep", workdir / "moved")  # a directory renamed
    (workdir / "link").unlink()
    (workdir / "link").mkdir()  # a link turned into a directory
    (workdir / "link" / "inside").write_bytes(b"new")
    assert dirty_bytes(str(workdir), full.manifest) > 0

    delta = WorkdirStream(str(workdir), chunk_bytes=CHUNK, since=full.manifest)
    delta_chunks = list(delta)
    assert sum(map(len, delta_chunks)) < sum(map(len, chunks)) // 2  # sub/random.bin is not sent again
    assert sorted(delta.deleted) == ["sub/deep", "sub/deep/empty", "text.log"]
    apply_stream(iter(delta_chunks), str(staged), expected_sha256=lambda: delta.sha256,
                 deleted=lambda: delta.deleted)
    assert _tree(staged) == _tree(workdir)
    assert dirty_bytes(str(workdir), delta.manifest) == 0


def test_a_delta_refuses_a_deletion_outside_the_tree(tmp_path: Path) -> None:
    root = tmp_path / "staged"
    root.mkdir()
    (tmp_path / "outside").write_text("keep")
    empty = WorkdirStream(str(root), chunk_bytes=CHUNK, since={})
    data = list(empty)
    with pytest.raises(SnapshotRejected, match="not a path inside"):
        apply_stream(iter(data), str(root), expected_sha256=lambda: empty.sha256, deleted=lambda: ["../outside"])
    assert (tmp_path / "outside").read_text() == "keep"
