"""Reading a file that holds a secret (a bearer token, a TLS key, an agent's env file): ``read_private``.

One rule for all of them: a regular file that group or others can access is refused, with the
``chmod 600`` that fixes it. Whoever can read it has the secret, and whoever can write it chooses
it; refused rather than warned about, because a warning scrolls past while the secret stays
readable. The mode is read from the open file (``fstat``), so the file checked is the file read.
Errors say the file and why, never its content. No grpc here: the CLI imports this.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from godel_ray.errors import InvalidArgument


def read_private(path: str | os.PathLike[str], what: str, *, max_bytes: int | None = None,
                 regular_only: bool = True, field: str = "") -> bytes:
    """The bytes of ``path`` (``what`` names it in errors: "token file").

    ``InvalidArgument`` (with ``field``) when it cannot be read, is a regular file that group or
    others can access, is not a regular file while ``regular_only`` (a pipe such as
    ``<(pass show x)`` is read as it is otherwise), or holds more than ``max_bytes``.
    """
    fields = {"field": field} if field else {}
    file = Path(path).expanduser()
    try:
        if regular_only and not stat.S_ISREG(file.stat().st_mode):  # before open: a FIFO would block it
            raise InvalidArgument(f"{what} {file} is not a regular file", **fields)
        with file.open("rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            if regular_only and not stat.S_ISREG(mode):  # swapped since
                raise InvalidArgument(f"{what} {file} is not a regular file", **fields)
            if stat.S_ISREG(mode) and mode & 0o077:
                raise InvalidArgument(
                    f"{what} {file} is accessible by group or others (mode {stat.S_IMODE(mode):o}): it holds "
                    f"secrets; run: chmod 600 {file}", **fields)
            data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
    except OSError as exc:
        raise InvalidArgument(f"cannot read {what} {file}: {exc.strerror or exc}", **fields) from None
    if max_bytes is not None and len(data) > max_bytes:
        raise InvalidArgument(f"{what} {file} is over {max_bytes} bytes", **fields)
    return data


__all__ = ["read_private"]
