"""Streaming a working directory: a plain tar made as it is sent, and unpacked as it arrives.

The sending side (``WorkdirStream``) walks the directory and yields the tar stream in pieces of
``chunk_bytes``: a member's header, then its data read from the file ``chunk_bytes`` at a time, so
no file and no archive is ever whole in memory. It hashes what it yields once, incrementally
(``sha256`` when the stream ends) and records a ``manifest`` of what was sent: size, mtime_ns,
ctime_ns and inode per path (the base of a later delta). The walk applies ``pack_workdir``'s rules
(regular files, directories, hard links, symlinks that stay inside; everything else skipped), and
the uncompressed size limit. A file that shrinks while it is read is padded with zeros to the size
its header announced (and its manifest entry marked so the delta sends it again); one that grows
is read up to that size.

Compression is off by default. ``compress="zstd"`` (a per-cluster option for slow links) wraps the
stream in zstd at a low level, unless the first chunk does not compress (a sample ratio over
``ZSTD_SKIP_RATIO``): then the stream stays plain. Each stream says which it is (``codec``).

The receiving side (``unpack_stream``) pulls chunks from any iterator, decompresses when told,
hashes them and feeds them to ``snapshot.walk_tar`` with today's member checks and limits, into a
staging directory that becomes the destination only once the stream ended and its checksum matched
the sender's; on any fault nothing is left behind. Memory on both sides: a few chunks.

Pure: no ray, no grpc.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import stat
import tarfile
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from godel_ray.agents import snapshot as snap
from godel_ray.agents.workdir import remove_tree
from godel_ray.errors import InvalidArgument, SnapshotRejected
from godel_ray.settings import LIMITS, Limits

Codec = Literal["none", "zstd"]
CODECS: tuple[Codec, ...] = ("none", "zstd")
STREAM_CHUNK_BYTES = 4 * 1024 * 1024  # a few MiB: one object-store object per chunk
ZSTD_LEVEL = 1
ZSTD_SKIP_RATIO = 0.9  # compressed/plain of the first chunk above this: the data does not compress
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE


@dataclass(frozen=True)
class FileState:
    """What the manifest records of one path as it was sent."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    kind: str  # "file", "dir", "link", "hardlink"
    torn: bool = False  # the file changed size while it was read: the delta must send it again


@dataclass
class WorkdirStream:
    """One tar stream of ``path``: iterate it for the chunks; then ``sha256``, ``size`` and
    ``manifest`` describe exactly what was yielded.

    Invariants: the chunks, concatenated (and decompressed when ``codec`` is zstd), are one valid
    tar stream whose uncompressed size is at most ``max_bytes``; ``sha256`` is over the bytes as
    yielded (compressed when compressed); iterating twice is refused. With ``since`` (a delta) the
    stream holds only the members new or changed since that manifest (by size, mtime_ns, ctime_ns,
    inode and kind, or torn then), ``deleted`` lists the manifest's paths that are gone, and
    ``manifest`` still describes the whole tree as it is now (the base of the next delta).
    """

    path: str
    max_bytes: int = LIMITS.max_snapshot_bytes
    chunk_bytes: int = STREAM_CHUNK_BYTES
    compress: Codec = "none"
    codec: Codec = "none"
    sha256: str = ""
    size: int = 0  # bytes yielded
    tar_bytes: int = 0  # uncompressed tar bytes
    manifest: dict[str, FileState] = field(default_factory=dict)
    since: dict[str, FileState] | None = None  # a delta: only what changed since this manifest
    deleted: list[str] = field(default_factory=list)  # a delta: paths of ``since`` gone now (after the stream)
    _started: bool = False

    def __post_init__(self) -> None:
        if self.compress not in CODECS:
            raise InvalidArgument(f"unknown snapshot compression {self.compress!r}: use one of {', '.join(CODECS)}",
                                  field="compress")
        if self.chunk_bytes < _BLOCK:
            raise InvalidArgument(f"chunk_bytes must be at least {_BLOCK}", field="chunk_bytes")

    def __iter__(self) -> Iterator[bytes]:
        if self._started:
            raise InvalidArgument("a workdir stream is iterated once")
        self._started = True
        hasher = hashlib.sha256()
        for chunk in self._encoded(self._rechunk(self._tar())):
            hasher.update(chunk)
            self.size += len(chunk)
            yield chunk
        self.sha256 = hasher.hexdigest()

    # --- the tar, piece by piece -------------------------------------------------------------

    def _count(self, n: int) -> None:
        self.tar_bytes += n
        if self.tar_bytes > self.max_bytes:
            raise SnapshotRejected(
                f"working directory is over the snapshot limit of {self.max_bytes} bytes: "
                "remove large files from it before exporting", max_bytes=self.max_bytes)

    def _tar(self) -> Iterator[bytes]:
        root = os.path.realpath(self.path)
        # A TarFile on nothing: only for gettarinfo (its inode table turns a second name of a file
        # into a hard link, as tar.add does).
        with tarfile.TarFile(fileobj=io.BytesIO(), mode="w", format=tarfile.PAX_FORMAT) as tar:
            for full, arcname in _members(root):
                try:
                    st = os.lstat(full)
                    if self.since is not None and not changed(self.since.get(arcname), st):
                        self.manifest[arcname] = self.since[arcname]
                        continue
                    info = tar.gettarinfo(full, arcname)  # only for a member sent: hard links point to one sent
                except FileNotFoundError:
                    continue  # vanished while walked (the source keeps running): the delta sees it
                header = info.tobuf(tarfile.PAX_FORMAT, tar.encoding, tar.errors)
                self._count(len(header))
                yield header
                kind = ("hardlink" if info.islnk() else "link" if info.issym() else "dir" if info.isdir()
                        else "file")
                torn = False
                if info.isreg():
                    torn = yield from self._data(full, info.size)
                self.manifest[arcname] = FileState(size=st.st_size if info.islnk() else info.size, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns,
                                                   inode=st.st_ino, kind=kind, torn=torn)
        if self.since is not None:
            self.deleted = sorted(set(self.since) - set(self.manifest))
        end = 2 * _BLOCK
        pad = (-(self.tar_bytes + end)) % _RECORD
        self._count(end + pad)
        yield b"\0" * (end + pad)

    def _data(self, full: str, size: int) -> Generator[bytes, None, bool]:
        """The file's ``size`` bytes in pieces, then the padding to a block; returns True when torn."""
        left = size
        torn = False
        try:
            with open(full, "rb") as f:
                while left > 0:
                    piece = f.read(min(left, self.chunk_bytes))
                    if not piece:
                        break
                    left -= len(piece)
                    self._count(len(piece))
                    yield piece
                torn = left > 0 or bool(f.read(1))
        except FileNotFoundError:
            torn = True
        while left > 0:  # it shrank or vanished: keep the header's promise
            n = min(left, self.chunk_bytes)
            left -= n
            self._count(n)
            yield b"\0" * n
        pad = (-size) % _BLOCK
        if pad:
            self._count(pad)
            yield b"\0" * pad
        return torn

    def _rechunk(self, pieces: Iterable[bytes]) -> Iterator[bytes]:
        buf = bytearray()
        for piece in pieces:
            buf += piece
            while len(buf) >= self.chunk_bytes:
                yield bytes(buf[:self.chunk_bytes])
                del buf[:self.chunk_bytes]
        if buf:
            yield bytes(buf)

    def _encoded(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        if self.compress == "none":
            yield from chunks
            return
        import zstandard  # only when a cluster asks for it

        first = next(chunks, b"")
        sample = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(first[:1024 * 1024])
        if len(first) and len(sample) > ZSTD_SKIP_RATIO * min(len(first), 1024 * 1024):
            self.codec = "none"  # does not compress: send it plain
            yield first
            yield from chunks
            return
        self.codec = "zstd"
        compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()

        def compressed() -> Iterator[bytes]:
            for chunk in _chain(first, chunks):
                yield compressor.compress(chunk)
            yield compressor.flush()

        yield from self._rechunk(compressed())  # zstd emits in its own blocks: cut them to chunk_bytes again


def _kind(mode: int) -> str:
    return "dir" if stat.S_ISDIR(mode) else "link" if stat.S_ISLNK(mode) else "file"


def changed(before: FileState | None, st: os.stat_result) -> bool:
    """Whether a path now at ``st`` differs from what a manifest recorded (None: not there then)."""
    if before is None or before.torn:
        return True
    kind = "file" if before.kind == "hardlink" else before.kind
    return ((before.size if kind == "file" else 0, before.mtime_ns, before.ctime_ns, before.inode, kind)
            != (st.st_size if kind == "file" else 0, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, _kind(st.st_mode)))


def dirty_bytes(path: str, manifest: dict[str, FileState]) -> int:
    """About how many bytes a delta against ``manifest`` would carry now: changed and new files'
    sizes plus a block per changed or vanished entry (a stat walk, no data read)."""
    root = os.path.realpath(path)
    total = 0
    seen: set[str] = set()
    for full, arcname in _members(root):
        seen.add(arcname)
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            continue
        if changed(manifest.get(arcname), st):
            total += _BLOCK + (st.st_size if stat.S_ISREG(st.st_mode) else 0)
    return total + _BLOCK * len(set(manifest) - seen)


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


def _members(root: str) -> Iterator[tuple[str, str]]:
    """(full path, name relative to ``root``) of every member ``pack_workdir`` would keep, in order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames) + sorted(filenames):
            full = os.path.join(dirpath, name)
            try:
                mode = os.lstat(full).st_mode
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(mode):
                target = os.path.realpath(full)
                if not snap._inside(root, target) or os.path.isabs(os.readlink(full)):
                    continue
            elif not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                continue
            yield full, os.path.relpath(full, root)


# --- the receiving side ----------------------------------------------------------------------------


class _ChunkReader:
    """A read-only file over an iterator of chunks: hashes each chunk once as it is taken, and
    decompresses zstd when asked. Holds at most one chunk (plus tarfile's own read-ahead)."""

    def __init__(self, chunks: Iterable[bytes], codec: Codec) -> None:
        self._chunks = iter(chunks)
        self._hasher = hashlib.sha256()
        self._buf = b""
        self._pos = 0
        self.received = 0
        self._decompress: Callable[[bytes], bytes] | None = None
        if codec == "zstd":
            import zstandard

            self._decompress = zstandard.ZstdDecompressor().decompressobj().decompress
        elif codec != "none":
            raise SnapshotRejected(f"unknown snapshot stream codec {codec!r}")

    @property
    def sha256(self) -> str:
        return self._hasher.hexdigest()

    def _fill(self) -> bool:
        for chunk in self._chunks:
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise SnapshotRejected(f"snapshot stream carried a {type(chunk).__name__}, not bytes")
            data = bytes(chunk)
            self._hasher.update(data)
            self.received += len(data)
            if self._decompress is not None:
                data = self._decompress(data)
            if data:
                self._buf, self._pos = data, 0
                return True
        return False

    def read(self, size: int = -1) -> bytes:
        out = bytearray()
        while size < 0 or len(out) < size:
            if self._pos >= len(self._buf) and not self._fill():
                break
            take = len(self._buf) - self._pos if size < 0 else min(size - len(out), len(self._buf) - self._pos)
            out += self._buf[self._pos:self._pos + take]
            self._pos += take
        return bytes(out)

    def drain(self) -> None:
        """Take (and hash) whatever the tar reader left unread: the end of the stream."""
        while self._fill():
            self._pos = len(self._buf)


def unpack_stream(chunks: Iterable[bytes], dest: str, *, expected_sha256: Callable[[], str],
                  codec: Codec = "none", max_bytes: int = LIMITS.max_snapshot_bytes, limits: Limits = LIMITS,
                  deadline: float | None = None) -> snap.ArchiveSummary:
    """Extract the tar stream ``chunks`` into ``dest`` as it arrives, with ``snapshot``'s checks.

    ``expected_sha256`` is asked once the stream ended (the sender knows its hash only then); a
    mismatch, like every other fault, leaves nothing at ``dest`` and no staging directory.
    """
    reader = _ChunkReader(chunks, codec)

    def walk(extract: Callable[[tarfile.TarFile, tarfile.TarInfo, str], None]) -> snap.ArchiveSummary:
        return _walk_checked(reader, extract, "snapshot", expected_sha256, max_bytes, limits, deadline)

    return snap.unpack_into(dest, walk)


def _walk_checked(reader: _ChunkReader, extract: Callable[[tarfile.TarFile, tarfile.TarInfo, str], None],
                  what: str, expected_sha256: Callable[[], str], max_bytes: int, limits: Limits,
                  deadline: float | None) -> snap.ArchiveSummary:
    """Walk the whole stream through ``extract`` with ``snapshot``'s checks, then compare its hash with
    the sender's (known only once the stream ended); any fault is ``SnapshotRejected``."""
    try:
        summary = snap.walk_tar(reader, max_bytes, extract, limits, deadline)
    except SnapshotRejected:
        raise
    except Exception as exc:  # zstd errors and the like: the stream is corrupt
        raise SnapshotRejected(f"{what} stream is corrupt: {exc}") from exc
    reader.drain()
    expected = (expected_sha256() or "").lower()
    if reader.sha256 != expected:
        raise SnapshotRejected(f"{what} checksum mismatch: the stream was corrupted or altered in transit "
                               f"(got {reader.sha256[:16]}..., sender says {expected[:16] or '(none)'}...)")
    return summary


def apply_stream(chunks: Iterable[bytes], root: str, *, expected_sha256: Callable[[], str],
                 deleted: Callable[[], list[str]], codec: Codec = "none",
                 max_bytes: int = LIMITS.max_snapshot_bytes, limits: Limits = LIMITS,
                 deadline: float | None = None) -> snap.ArchiveSummary:
    """Apply a delta stream to the existing tree ``root`` (a staging directory): each member, with
    ``snapshot``'s checks, replaces what is at its path; then, once the stream ended and its checksum
    matched, the ``deleted`` paths go. A fault raises ``SnapshotRejected`` and leaves ``root``
    partly updated: a staging directory is never activated after a failed delta (the move rolls back).
    """
    root = os.path.realpath(root)
    if not os.path.isdir(root):
        raise SnapshotRejected(f"cannot apply a delta to {root}: no such directory")
    reader = _ChunkReader(chunks, codec)

    def extract(tar: tarfile.TarFile, member: tarfile.TarInfo, norm: str) -> None:
        if norm == ".":
            return
        snap._check_resolved(root, norm, member)
        target = os.path.join(root, norm)
        try:
            mode: int | None = os.lstat(target).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None and not (member.isdir() and stat.S_ISDIR(mode)):
            remove_tree(target)  # a file, a link, or an entry of another kind: replaced whole
        member.name = norm
        if member.islnk():
            member.linkname = posixpath.normpath(member.linkname)
        tar.extract(member, path=root, set_attrs=True, filter="data")

    summary = _walk_checked(reader, extract, "delta", expected_sha256, max_bytes, limits, deadline)
    for name in deleted():
        norm = posixpath.normpath(name)
        if not name or "\x00" in name or name.startswith("/") or ".." in norm.split("/") or norm == ".":
            raise SnapshotRejected(f"delta deletes {name!r}: not a path inside the working directory")
        parent = os.path.realpath(os.path.join(root, posixpath.dirname(norm)))
        if not snap._inside(root, parent):
            raise SnapshotRejected(f"delta deletes {name!r} through a link that leaves the working directory")
        remove_tree(os.path.join(parent, posixpath.basename(norm)))
    return summary


__all__ = ["CODECS", "STREAM_CHUNK_BYTES", "Codec", "FileState", "WorkdirStream", "apply_stream", "changed",
           "dirty_bytes", "unpack_stream"]
