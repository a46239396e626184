"""Snapshot archives of an agent's working directory: packing, and the safety checks on import.

An archive is a gzip-compressed tar of the working directory's contents, with relative names.
Archives arrive from other clusters, so unpacking treats them as hostile: it refuses (with
``SnapshotRejected``) absolute names, ``..`` components, links whose target leaves the working
directory, device/fifo/sparse/other special files, duplicate names, a checksum mismatch, corrupt
data, and a total size over the limit. The size is counted on the decompressed stream itself (a
lying header cannot make it read more) and extraction stops as soon as the limit is passed.

Work is bounded as well as bytes (``Limits``): the number of members, the length of each name and
link target, the total of all names and extended (pax / GNU long-name) headers (checked on the
header's announced size, before tarfile reads it into memory), and the time an unpack may take
(``snapshot_unpack_timeout_s``, under the runtime's ready timeout, so a slow archive is refused
and cleaned up rather than killed with its actor).

Members are extracted one at a time after they are checked, into a fresh staging directory beside
the destination that is renamed into place only when the whole archive passed (tarfile's "data"
filter sets file modes and ignores directory modes). A rejected or timed-out archive leaves nothing
behind; a staging directory left by a process killed mid-unpack (read-only directories and all) is
removed by the next unpack to the same destination.

Pure: no ray.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import posixpath
import stat
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from godel_ray.agents.workdir import remove_tree
from godel_ray.errors import SnapshotRejected
from godel_ray.settings import LIMITS, Limits

log = logging.getLogger(__name__)

_HAS_DATA_FILTER = hasattr(tarfile, "data_filter")


@dataclass(frozen=True)
class ArchiveSummary:
    members: int
    total_bytes: int  # sum of file sizes


class _CountingWriter(io.RawIOBase):
    """Counts the bytes of the uncompressed tar stream on their way into gzip; enforces the limit."""

    def __init__(self, sink: IO[bytes] | gzip.GzipFile, max_bytes: int) -> None:
        self._sink = sink
        self._max_bytes = max_bytes
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.count += len(data)
        if self.count > self._max_bytes:
            raise SnapshotRejected(
                f"working directory is over the snapshot limit of {self._max_bytes} bytes: "
                "remove large files from it before exporting", max_bytes=self._max_bytes)
        self._sink.write(data)
        return len(data)


class _CountingReader:
    """Reads the decompressed stream and refuses to go past ``max_bytes`` (gzip bombs, lying headers)."""

    def __init__(self, source: IO[bytes] | gzip.GzipFile, max_bytes: int) -> None:
        self._source = source
        self._max_bytes = max_bytes
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self.count += len(data)
        if self.count > self._max_bytes:
            raise SnapshotRejected(
                f"snapshot archive decompresses to more than the limit of {self._max_bytes} bytes",
                max_bytes=self._max_bytes)
        return data


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


SNAPSHOT_GZIP_LEVEL = 1


def pack_workdir(path: str, max_bytes: int) -> tuple[bytes, str]:
    """Tar.gz the contents of directory ``path`` (names relative to it); return ``(archive, sha256)``.

    Regular files, directories, hard links and symlinks that stay inside ``path`` are kept;
    sockets, fifos, devices and symlinks leaving ``path`` are skipped (they cannot be imported).
    Raises ``SnapshotRejected`` when the uncompressed tar stream would exceed ``max_bytes``.
    """
    root = os.path.realpath(path)
    buf = io.BytesIO()
    # Level 1: on the migration path compression costs downtime; a workdir of already-compressed
    # or random data gains nothing from the default level 9, which ran at a few MB/s here.
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=SNAPSHOT_GZIP_LEVEL) as gz:
        counter = _CountingWriter(gz, max_bytes)
        with tarfile.open(fileobj=counter, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                for name in sorted(dirnames) + sorted(filenames):
                    full = os.path.join(dirpath, name)
                    arcname = os.path.relpath(full, root)
                    mode = os.lstat(full).st_mode
                    if stat.S_ISLNK(mode):
                        target = os.path.realpath(full)
                        if not _inside(root, target) or os.path.isabs(os.readlink(full)):
                            log.warning("snapshot: skipping symlink %s: it leaves the workdir", arcname)
                            continue
                    elif not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                        log.warning("snapshot: skipping special file %s", arcname)
                        continue
                    tar.add(full, arcname=arcname, recursive=False)
    data = buf.getvalue()
    return data, sha256_hex(data)


class _Escape(Exception):
    pass


def _resolve(links: dict[str, str], path: str, depth: int = 0) -> str:
    """Resolve ``path`` (relative to the root) through the archive's own symlinks, lexically.

    Raises ``_Escape`` when it climbs above the root. Returns the normalised relative path.
    """
    if depth > 32:
        raise _Escape("too many levels of symlinks")
    stack: list[str] = []
    for comp in path.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if not stack:
                raise _Escape("climbs above the working directory")
            stack.pop()
            continue
        stack.append(comp)
        here = "/".join(stack)
        if here in links:
            target = links[here]
            if target.startswith("/"):
                raise _Escape("absolute link")
            stack.pop()
            resolved = _resolve(links, posixpath.join("/".join(stack), target), depth + 1)
            stack = [c for c in resolved.split("/") if c and c != "."]
    return "/".join(stack) or "."


def _check_member(member: tarfile.TarInfo, seen: dict[str, bool], links: dict[str, str]) -> str:
    """Validate one member's name and type; return its normalised name.

    ``seen`` maps each earlier name to whether it is a directory; ``links`` maps earlier symlinks
    to their targets, so a path that escapes through a chain of the archive's own links is caught
    before anything is written.
    """
    name = member.name
    if "\x00" in name or not name:
        raise SnapshotRejected(f"snapshot member has an invalid name {name!r}")
    if name.startswith("/") or posixpath.isabs(name) or (len(name) > 1 and name[1] == ":"):
        raise SnapshotRejected(f"snapshot member {name!r} has an absolute path")
    if ".." in name.split("/"):
        raise SnapshotRejected(f"snapshot member {name!r} has a '..' component")
    norm = posixpath.normpath(name)
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        kind = "device" if member.ischr() or member.isblk() else "fifo" if member.isfifo() else "special"
        raise SnapshotRejected(f"snapshot member {name!r} is a {kind} file: only files, dirs and links")
    if norm != "." and norm in seen and not (member.isdir() and seen[norm]):
        raise SnapshotRejected(f"snapshot member {name!r} appears twice")
    try:
        _resolve(links, posixpath.dirname(norm))
    except _Escape as exc:
        raise SnapshotRejected(f"snapshot member {name!r} would be written outside the working directory "
                               f"through a symlink ({exc})") from exc
    if member.issym():
        link = member.linkname
        try:
            if not link or "\x00" in link or link.startswith("/"):
                raise _Escape("absolute or empty target")
            _resolve(links, posixpath.join(posixpath.dirname(norm), link))
        except _Escape as exc:
            raise SnapshotRejected(
                f"snapshot symlink {name!r} -> {link!r} leaves the working directory ({exc})") from exc
        links[norm] = link
    if member.islnk():
        link = member.linkname
        if not link or link.startswith("/") or ".." in link.split("/"):
            raise SnapshotRejected(f"snapshot hard link {name!r} -> {link!r} leaves the working directory")
        if seen.get(posixpath.normpath(link)) is not False or posixpath.normpath(link) in links:
            raise SnapshotRejected(
                f"snapshot hard link {name!r} -> {link!r} does not point to a file earlier in the archive")
    seen[norm] = member.isdir()
    return norm


def _check_resolved(root: str, norm: str, member: tarfile.TarInfo) -> None:
    """Re-check against the real filesystem: no write through a link that leads outside ``root``."""
    parent = os.path.realpath(os.path.join(root, os.path.dirname(norm)))
    if not _inside(root, parent):
        raise SnapshotRejected(
            f"snapshot member {member.name!r} would be written outside the working directory")
    if member.issym():
        target = os.path.realpath(os.path.join(parent, member.linkname))
        if not _inside(root, target):
            raise SnapshotRejected(
                f"snapshot symlink {member.name!r} -> {member.linkname!r} leaves the working directory")


# Headers that carry the next member's name, link target or attributes: tarfile reads their whole
# announced size into memory, so the size is checked first.
_META_TYPES = frozenset({tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                         tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK})
_META_HEADER_SLACK_BYTES = 1024  # a pax header holds a path and a link path plus a few short records
_MAX_META_CHAIN = 8  # extended headers in a row before one member (tarfile reads each chain recursively)


@dataclass
class _Budget:
    """What one walk has spent: members, name bytes, time. Raises ``SnapshotRejected`` when over."""

    limits: Limits
    deadline: float  # time.monotonic() value
    members: int = 0
    name_bytes: int = 0
    meta_chain: int = 0

    def header(self, info: tarfile.TarInfo) -> None:
        """Called for every raw header, before tarfile reads what it announces."""
        if info.type in _META_TYPES:
            self.meta_chain += 1
            cap = 2 * self.limits.max_snapshot_name_bytes + _META_HEADER_SLACK_BYTES
            if info.size > cap:
                raise SnapshotRejected(
                    f"snapshot archive has an extended header of {info.size} bytes, over the limit of {cap}: "
                    "a name or link target that long cannot be unpacked", max_bytes=cap)
            if self.meta_chain > _MAX_META_CHAIN:
                raise SnapshotRejected(f"snapshot archive has more than {_MAX_META_CHAIN} extended headers "
                                       "in a row")
            self._names(info.size)
        else:
            self.meta_chain = 0
            if info.type == tarfile.GNUTYPE_SPARSE:
                raise SnapshotRejected(f"snapshot member {info.name[:200]!r} is a sparse file: "
                                       "only files, dirs and links")

    def member(self, member: tarfile.TarInfo) -> None:
        """Called for every member (extended headers applied), before it is checked or extracted."""
        self.members += 1
        if self.members > self.limits.max_snapshot_members:
            raise SnapshotRejected(
                f"snapshot holds more than the limit of {self.limits.max_snapshot_members} files and "
                "directories: remove some (caches, build output) before exporting",
                max_members=self.limits.max_snapshot_members)
        for what, text in (("name", member.name), ("link target", member.linkname)):
            size = len(text.encode("utf-8", "surrogatepass"))  # any str tarfile may decode
            if size > self.limits.max_snapshot_name_bytes:
                raise SnapshotRejected(
                    f"snapshot member {member.name[:80]!r}...: its {what} is {size} bytes, over the limit of "
                    f"{self.limits.max_snapshot_name_bytes}", max_bytes=self.limits.max_snapshot_name_bytes)
            self._names(size)
        self.check_time()

    def check_time(self) -> None:
        if time.monotonic() >= self.deadline:
            raise SnapshotRejected(
                f"snapshot took longer than {self.limits.snapshot_unpack_timeout_s:g} s to check and unpack "
                f"(stopped after {self.members} members): it holds too many small files for this site",
                timeout_s=self.limits.snapshot_unpack_timeout_s)

    def _names(self, size: int) -> None:
        self.name_bytes += size
        if self.name_bytes > self.limits.max_snapshot_names_total_bytes:
            raise SnapshotRejected(
                f"snapshot names and extended headers total more than the limit of "
                f"{self.limits.max_snapshot_names_total_bytes} bytes",
                max_bytes=self.limits.max_snapshot_names_total_bytes)


def _tarinfo_class(budget: _Budget) -> type[tarfile.TarInfo]:
    """A ``TarInfo`` whose header processing is checked against ``budget`` before tarfile reads a
    pax or GNU long-name header (up to its announced size) into memory."""

    class BudgetedTarInfo(tarfile.TarInfo):
        def _proc_member(self, tarfile_: tarfile.TarFile) -> Any:
            budget.header(self)
            return super()._proc_member(tarfile_)  # type: ignore[misc]

    return BudgetedTarInfo


def _walk_archive(data: bytes, sha256: str, max_bytes: int,
                  on_member: Callable[[tarfile.TarFile, tarfile.TarInfo, str], None] | None,
                  limits: Limits = LIMITS, deadline: float | None = None) -> ArchiveSummary:
    if sha256_hex(data) != (sha256 or "").lower():
        raise SnapshotRejected("snapshot checksum mismatch: the archive was corrupted or altered in transit")
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb") as gz:
            return walk_tar(gz, max_bytes, on_member, limits, deadline)
    except (OSError, EOFError, zlib.error) as exc:
        if isinstance(exc, SnapshotRejected):
            raise
        raise SnapshotRejected(f"snapshot archive is corrupt: {exc}") from exc


def walk_tar(stream: IO[bytes] | gzip.GzipFile | Any, max_bytes: int,
             on_member: Callable[[tarfile.TarFile, tarfile.TarInfo, str], None] | None,
             limits: Limits = LIMITS, deadline: float | None = None) -> ArchiveSummary:
    """Check every member of the (uncompressed) tar ``stream`` as it is read, calling ``on_member``
    for each accepted one; raise ``SnapshotRejected`` on the first fault. Reads the stream once,
    front to back (``stream.read`` only): it works on a pipe as well as on a whole archive."""
    budget = _Budget(limits, time.monotonic() + limits.snapshot_unpack_timeout_s if deadline is None else deadline)
    seen: dict[str, bool] = {}
    links: dict[str, str] = {}
    total = 0
    try:
        reader = _CountingReader(stream, max_bytes + 64 * 1024)
        with tarfile.open(fileobj=reader, mode="r|",  # type: ignore[call-overload]
                          tarinfo=_tarinfo_class(budget)) as tar:
            for member in tar:
                budget.member(member)
                norm = _check_member(member, seen, links)
                total += max(member.size, 0)
                if total > max_bytes:
                    raise SnapshotRejected(
                        f"snapshot holds more than the limit of {max_bytes} bytes", max_bytes=max_bytes)
                if on_member is not None:
                    on_member(tar, member, norm)
    except SnapshotRejected:
        raise
    except RecursionError as exc:  # a symlink or header structure deeper than the interpreter allows
        raise SnapshotRejected("snapshot archive is nested too deeply") from exc
    except (tarfile.TarError, OSError, EOFError, zlib.error, ValueError) as exc:
        if _HAS_DATA_FILTER and isinstance(exc, tarfile.FilterError):
            raise SnapshotRejected(f"snapshot refused by the tar data filter: {exc}") from exc
        raise SnapshotRejected(f"snapshot archive is corrupt: {exc}") from exc
    budget.check_time()
    return ArchiveSummary(members=budget.members, total_bytes=total)


def check_archive(data: bytes, sha256: str, max_bytes: int, limits: Limits = LIMITS) -> ArchiveSummary:
    """Validate a whole archive without writing anything; raise ``SnapshotRejected`` if hostile."""
    return _walk_archive(data, sha256, max_bytes, None, limits)


STAGING_PREFIX = ".import-"


def _staging_prefix(dest: str) -> str:
    return f"{STAGING_PREFIX}{os.path.basename(dest)}-"


def _remove_stale_staging(parent: str, dest: str) -> None:
    """Remove staging directories an earlier unpack to ``dest`` left (its process was killed)."""
    prefix = _staging_prefix(dest)
    try:
        names = [n for n in os.listdir(parent) if n.startswith(prefix)]
    except OSError:
        return
    for name in names:
        log.warning("snapshot: removing %s, left by an unpack that did not finish", name)
        remove_tree(os.path.join(parent, name))


def unpack_archive(data: bytes, sha256: str, dest: str, max_bytes: int, limits: Limits = LIMITS,
                   deadline: float | None = None) -> ArchiveSummary:
    """Extract a validated archive into ``dest`` (which must not exist, or be an empty directory).

    ``deadline`` (a ``time.monotonic()`` value) defaults to now + ``limits.snapshot_unpack_timeout_s``.
    On any rejection, the timeout included, nothing is left at ``dest`` beyond what was there (an
    empty dir stays empty) and no staging directory is left beside it.
    """
    return unpack_into(dest, lambda extract: _walk_archive(data, sha256, max_bytes, extract, limits, deadline))


def unpack_into(dest: str, walk: Callable[[Callable[[tarfile.TarFile, tarfile.TarInfo, str], None]],
                                          ArchiveSummary]) -> ArchiveSummary:
    """Run ``walk`` with an extractor into a fresh staging directory beside ``dest``; rename it to
    ``dest`` when ``walk`` returns, remove it when ``walk`` raises (nothing left behind)."""
    dest = os.path.abspath(dest)
    if os.path.lexists(dest) and (not os.path.isdir(dest) or os.path.islink(dest) or os.listdir(dest)):
        raise SnapshotRejected(
            f"cannot unpack a snapshot into {dest}: it exists and is not an empty directory")
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    _remove_stale_staging(parent, dest)
    staging = tempfile.mkdtemp(prefix=_staging_prefix(dest), dir=parent)
    root = os.path.realpath(staging)

    def extract(tar: tarfile.TarFile, member: tarfile.TarInfo, norm: str) -> None:
        if norm == ".":
            return
        _check_resolved(root, norm, member)
        member.name = norm
        if member.islnk():
            member.linkname = posixpath.normpath(member.linkname)
        if _HAS_DATA_FILTER:  # the "data" filter ignores directory modes: no read-only dir stops a write
            tar.extract(member, path=root, set_attrs=True, filter="data")
        else:  # pragma: no cover - every supported Python has the filter
            member.mode &= 0o755
            tar.extract(member, path=root, set_attrs=False)

    try:
        summary = walk(extract)
        if os.path.isdir(dest):
            os.rmdir(dest)
        os.rename(staging, dest)
        os.chmod(dest, 0o700)
    except BaseException:
        remove_tree(staging)
        raise
    return summary


__all__ = ["STAGING_PREFIX", "ArchiveSummary", "check_archive", "pack_workdir", "sha256_hex", "unpack_archive",
           "unpack_into", "walk_tar"]
