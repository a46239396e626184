"""Snapshot archives: a good round trip, and every hostile archive refused with nothing left behind."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import time
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from godel_ray.agents.snapshot import check_archive, pack_workdir, sha256_hex, unpack_archive
from godel_ray.agents.workdir import remove_tree
from godel_ray.errors import SnapshotRejected
from godel_ray.settings import Limits
from tests.unprivileged import scratch_dir, unprivileged

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


# --- work bounded as well as bytes: members, names, extended headers, time --------------------------

def add_empty_files(tar: tarfile.TarFile, count: int, prefix: str = "f") -> None:
    for i in range(count):
        add_file(tar, f"{prefix}{i}", b"")


def assert_nothing_left(tmp_path: Path) -> None:
    assert list(tmp_path.iterdir()) == []  # no destination, no .import-* staging directory


def test_too_many_members_are_refused_and_leave_nothing(tmp_path: Path) -> None:
    """The 100k-empty-files archive, scaled down: refused at member limit + 1, before unpacking it all."""
    limits = Limits(max_snapshot_members=50)
    data, digest = make_tar(lambda t: add_empty_files(t, 51))
    with pytest.raises(SnapshotRejected, match="more than the limit of 50 files"):
        check_archive(data, digest, LIMIT, limits)
    with pytest.raises(SnapshotRejected, match="more than the limit of 50 files"):
        unpack_archive(data, digest, str(tmp_path / "dest"), LIMIT, limits)
    assert_nothing_left(tmp_path)
    ok, ok_digest = make_tar(lambda t: add_empty_files(t, 50))
    assert unpack_archive(ok, ok_digest, str(tmp_path / "dest"), LIMIT, limits).members == 50


def long_name_archive(kind: bytes, name_bytes: int) -> bytes:
    """A gzip'd tar whose first header is a pax (``x``) or GNU long-name (``L``) header carrying a
    name of ``name_bytes``, then a file: built as a stream, so the test itself stays small."""
    if kind == tarfile.XHDTYPE:
        body_len = len(" path=\n") + name_bytes
        length = body_len + len(str(body_len))
        length = body_len + len(str(length))
        head, tail = f"{length} path=".encode(), b"\n"
    else:
        head, tail = b"", b"\0"
    size = len(head) + name_bytes + len(tail)
    meta = tarfile.TarInfo("././@LongLink")
    meta.type, meta.size = kind, size
    gz = zlib.compressobj(1, zlib.DEFLATED, 31)  # gzip framing
    out = [gz.compress(meta.tobuf(tarfile.USTAR_FORMAT) + head)]
    piece = b"n" * (1024 * 1024)
    for start in range(0, name_bytes, len(piece)):
        out.append(gz.compress(piece[: min(len(piece), name_bytes - start)]))
    padding = -size % tarfile.BLOCKSIZE
    out.append(gz.compress(tail + b"\0" * padding + tarfile.TarInfo("f").tobuf(tarfile.USTAR_FORMAT)
                           + b"\0" * (2 * tarfile.BLOCKSIZE)))
    out.append(gz.flush())
    return b"".join(out)


@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME], ids=["pax", "gnu"])
def test_a_long_name_is_refused_before_it_is_read(kind: bytes, tmp_path: Path) -> None:
    """A 32 MiB name (a few KB compressed): refused on its header's announced size, so the check never
    holds the name in memory (long names used to make it take about 1 GB)."""
    data = long_name_archive(kind, 32 * 1024 * 1024)
    tracemalloc.start()
    try:
        with pytest.raises(SnapshotRejected, match="extended header of .* bytes, over the limit"):
            check_archive(data, sha256_hex(data), LIMIT * 64)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024, f"the check held {peak} bytes"
    with pytest.raises(SnapshotRejected, match="over the limit"):
        unpack_archive(data, sha256_hex(data), str(tmp_path / "dest"), LIMIT * 64)
    assert_nothing_left(tmp_path)


def test_the_long_name_archive_is_what_it_claims() -> None:
    """The control for the test above: with the limits raised, tarfile reads the whole name."""
    data = long_name_archive(tarfile.XHDTYPE, 10_000)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        assert [len(m.name) for m in tar] == [10_000]
    gnu = long_name_archive(tarfile.GNUTYPE_LONGNAME, 10_000)
    with tarfile.open(fileobj=io.BytesIO(gnu), mode="r:gz") as tar:
        assert [len(m.name) for m in tar] == [10_000]


@pytest.mark.parametrize("what", ["name", "link target"])
def test_a_name_or_link_target_over_the_limit_is_refused(what: str, tmp_path: Path) -> None:
    limits = Limits(max_snapshot_name_bytes=100)
    long = "d/" * 60 + "x"  # 121 bytes: under the extended-header cap, over the name limit
    data, digest = make_tar(lambda t: add_file(t, long) if what == "name"
                            else add_special(t, "l", tarfile.SYMTYPE, long))
    with pytest.raises(SnapshotRejected, match=f"its {what} is 121 bytes, over the limit of 100"):
        unpack_archive(data, digest, str(tmp_path / "dest"), LIMIT, limits)
    assert_nothing_left(tmp_path)


def test_the_total_of_names_is_bounded(tmp_path: Path) -> None:
    limits = Limits(max_snapshot_names_total_bytes=1000)
    data, digest = make_tar(lambda t: add_empty_files(t, 30, prefix="name-" * 8))
    with pytest.raises(SnapshotRejected, match="names and extended headers total more than the limit of 1000"):
        unpack_archive(data, digest, str(tmp_path / "dest"), LIMIT, limits)
    assert_nothing_left(tmp_path)


def test_a_chain_of_extended_headers_is_refused(tmp_path: Path) -> None:
    """Each pax header makes tarfile recurse once more: a long chain is refused, never a RecursionError."""
    block = tarfile.BLOCKSIZE
    pax_record = b"11 uid=123\n"
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = len(pax_record)
    one = header.tobuf(tarfile.USTAR_FORMAT) + pax_record + b"\0" * (block - len(pax_record))
    member = tarfile.TarInfo("after")
    data = gzip.compress(one * 2000 + member.tobuf(tarfile.USTAR_FORMAT) + b"\0" * (2 * block))
    with pytest.raises(SnapshotRejected, match="extended headers in a row"):
        unpack_archive(data, sha256_hex(data), str(tmp_path / "dest"), LIMIT)
    assert_nothing_left(tmp_path)


def test_a_sparse_member_is_refused(tmp_path: Path) -> None:
    data, digest = make_tar(lambda t: add_special(t, "s", tarfile.GNUTYPE_SPARSE))
    with pytest.raises(SnapshotRejected, match="sparse"):
        unpack_archive(data, digest, str(tmp_path / "dest"), LIMIT)
    assert_nothing_left(tmp_path)


def test_an_unpack_past_its_deadline_is_refused_and_leaves_no_staging(tmp_path: Path) -> None:
    data, digest = make_tar(lambda t: add_empty_files(t, 3))
    with pytest.raises(SnapshotRejected, match="took longer than 45 s"):
        unpack_archive(data, digest, str(tmp_path / "dest"), LIMIT, deadline=time.monotonic() - 1)
    assert_nothing_left(tmp_path)
    with pytest.raises(SnapshotRejected, match="took longer than 0 s"):
        unpack_archive(data, digest, str(tmp_path / "dest"), LIMIT, Limits(snapshot_unpack_timeout_s=0))
    assert_nothing_left(tmp_path)


def make_read_only_tree(root: Path) -> None:
    """What `go mod download` or `chmod -R a-w` leaves: files under directories without u+w (or u+rx)."""
    (root / "ro" / "deep").mkdir(parents=True)
    (root / "ro" / "f.txt").write_text("kept")
    (root / "ro" / "deep" / "g.txt").write_text("deep")
    (root / "locked").mkdir()
    (root / "locked" / "h").write_text("h")
    (root / "ro" / "deep").chmod(0o555)
    (root / "ro").chmod(0o500)
    (root / "locked").chmod(0o000)


def test_a_staging_directory_left_by_a_killed_unpack_is_removed_by_the_next() -> None:
    """An actor killed mid-unpack (a timed-out import) leaves `.import-<id>-*`; the next import of
    that agent removes it, read-only directories and all."""
    def scenario(base: Path) -> None:
        stale = base / ".import-dest-k1ll3d"
        stale.mkdir()
        make_read_only_tree(stale)
        other = base / ".import-other-agent-x"  # another agent's import in flight: not touched
        other.mkdir()
        data, digest = make_tar(lambda t: add_file(t, "a", b"ok"))
        unpack_archive(data, digest, str(base / "dest"), LIMIT)
        assert sorted(p.name for p in base.iterdir()) == [".import-other-agent-x", "dest"]
        assert (base / "dest" / "a").read_bytes() == b"ok"

    with scratch_dir() as base:
        unprivileged(lambda: scenario(base))


def test_read_only_directories_round_trip() -> None:
    """A workdir with read-only directories packs and unpacks (the data filter ignores directory
    modes, so the copy's directories are the owner's to write). Unprivileged: root ignores modes."""
    def scenario(base: Path) -> None:
        src = base / "src"
        src.mkdir()
        make_read_only_tree(src)
        (src / "locked").chmod(0o700)  # the packer must be able to read it
        data, digest = pack_workdir(str(src), LIMIT)
        dest = base / "dest"
        unpack_archive(data, digest, str(dest), LIMIT)
        assert (dest / "ro" / "f.txt").read_text() == "kept"
        assert (dest / "ro" / "deep" / "g.txt").read_text() == "deep"
        assert os.access(dest / "ro" / "deep", os.W_OK)
        assert remove_tree(dest) and remove_tree(src) and list(base.iterdir()) == []

    with scratch_dir() as base:
        unprivileged(lambda: scenario(base))


def test_a_refused_archive_with_read_only_directories_leaves_no_staging() -> None:
    """A refusal at the last member removes the staging directory with everything written before."""
    def build(t: tarfile.TarFile) -> None:
        ro = tarfile.TarInfo("ro")
        ro.type, ro.mode = tarfile.DIRTYPE, 0o500
        t.addfile(ro)
        add_file(t, "ro/f", b"f")
        add_special(t, "dev", tarfile.CHRTYPE)

    def scenario(base: Path) -> None:
        data, digest = make_tar(build)
        with pytest.raises(SnapshotRejected, match="device"):
            unpack_archive(data, digest, str(base / "dest"), LIMIT)
        assert list(base.iterdir()) == []

    with scratch_dir() as base:
        unprivileged(lambda: scenario(base))
