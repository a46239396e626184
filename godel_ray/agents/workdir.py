"""Removing an agent's working directory, whatever its commands left in it.

An agent's commands may leave directories without write or search permission for their owner (a
Go module cache is read-only by design; ``chmod -R a-w`` is one command away). ``shutil.rmtree``
cannot delete the files under such a directory, and with ``ignore_errors`` it says nothing: the
leftovers then block the agent's next import into the same path. ``remove_tree`` first gives every
directory ``u+rwx``, then removes the tree.

Symlinks are never followed: a directory is only ever opened with ``O_NOFOLLOW | O_DIRECTORY``
relative to its parent's descriptor, so a link (or a directory swapped for a link meanwhile) that
points outside is neither chmod-ed nor entered; it is removed as a link. Linux (``O_PATH``,
``/proc/self/fd``); pure: no ray.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from types import TracebackType

log = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OWNER_RWX = stat.S_IRWXU


def _chmod_dir(name: str, dir_fd: int | None, mode: int) -> None:
    """chmod the directory ``name`` (relative to ``dir_fd``) without following a symlink.

    An ``O_PATH`` descriptor needs no permission on the directory and, with ``O_NOFOLLOW |
    O_DIRECTORY``, is refused for a link; chmod through its ``/proc/self/fd`` entry changes exactly
    that inode (Python 3.11 has no ``fchmodat(AT_SYMLINK_NOFOLLOW)`` on Linux).
    """
    fd = os.open(name, _PATH_FLAGS, dir_fd=dir_fd)
    try:
        os.chmod(f"/proc/self/fd/{fd}", mode)
    except FileNotFoundError:  # no /proc mounted: fchmod a readable descriptor (needs u+r already)
        readable = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        try:
            os.fchmod(readable, mode)
        finally:
            os.close(readable)
    finally:
        os.close(fd)


def _unlock(dir_fd: int) -> None:
    """Give every directory below ``dir_fd`` (already ``u+rwx``) ``u+rwx``, depth first."""
    with os.scandir(dir_fd) as entries:
        names = [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)]
    for name in names:
        try:
            mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
            if not stat.S_ISDIR(mode):
                continue
            if mode & _OWNER_RWX != _OWNER_RWX:
                _chmod_dir(name, dir_fd, stat.S_IMODE(mode) | _OWNER_RWX)
            child = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except OSError:  # gone, or swapped for a link/file meanwhile: rmtree deals with what is left
            continue
        try:
            _unlock(child)
        finally:
            os.close(child)


def remove_tree(path: str | os.PathLike[str]) -> bool:
    """Remove ``path`` and everything under it, read-only directories included; idempotent.

    A symlink at ``path`` is removed itself, never its target. Returns True when nothing is left at
    ``path``; otherwise logs what stayed (never raises: it runs on kill and rollback paths).
    """
    target = os.fspath(path)
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return True
    except OSError as exc:
        log.warning("cannot remove %s: %s", target, exc)
        return False
    try:
        if not stat.S_ISDIR(mode):
            os.unlink(target)  # a file or a symlink (to a directory or not): the entry itself
            return True
        if mode & _OWNER_RWX != _OWNER_RWX:
            _chmod_dir(target, None, stat.S_IMODE(mode) | _OWNER_RWX)
        root = os.open(target, _DIR_FLAGS)
        try:
            _unlock(root)
        finally:
            os.close(root)
    except FileNotFoundError:
        return True
    except (OSError, RecursionError) as exc:  # e.g. nesting deeper than the recursion limit
        log.warning("cannot make everything under %s writable (%s); removing what can be", target, exc)

    def report(func: object, failed: str, exc_info: tuple[type[BaseException], BaseException, TracebackType]
               ) -> None:
        if not isinstance(exc_info[1], FileNotFoundError):
            log.warning("cannot remove %s: %s", failed, exc_info[1])

    shutil.rmtree(target, onerror=report)
    return not os.path.lexists(target)


__all__ = ["remove_tree"]
