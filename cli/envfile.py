"""``--env-file FILE``: an agent's environment from a file, so that secrets stay out of ``ps``.

The format is docker's ``--env-file``: one ``NAME=value`` per line; lines that are blank or whose
first non-blank character is ``#`` are skipped; leading blanks before the name are ignored; the
value is everything after the first ``=``, taken literally (no quotes removed, no ``$VAR``
expanded; a trailing ``\\r`` is dropped). Names and sizes are validated exactly as for ``--env``.

Permissions: as for a token file (one rule, ``godel_ray.privatefile``), an env file (a regular
file) that group or others can access is refused, with the ``chmod 600`` that fixes it: it holds
secrets, and whoever can write it chooses the agent's environment. Pipes (``--env-file <(pass
show x)``) are read as they are.
Errors name the file and line, never the value.
"""

from __future__ import annotations

import os
from pathlib import Path

from godel_ray.errors import GodelError, InvalidArgument
from godel_ray.privatefile import read_private

MAX_ENV_FILE_BYTES = 1 << 20  # far above what the env limits admit; bounds the read


def read_env_file(path: str | os.PathLike[str]) -> list[str]:
    """The ``NAME=value`` items of ``path``, in order (validate them with ``inputs.parse_env``)."""
    from godel_ray.inputs import parse_env

    file = Path(path).expanduser()
    text = _read_private(file)
    items: list[str] = []
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r").lstrip()
        if not line or line.startswith("#"):
            continue
        name, sep, _ = line.partition("=")
        if not sep or not name:
            raise InvalidArgument(f"env file {file}:{lineno}: not of the form NAME=value", field="env")
        try:
            parse_env([line])  # the --env rules, checked here so that the error can say where
        except GodelError as exc:
            raise InvalidArgument(f"env file {file}:{lineno}: {exc.message}", field="env") from None
        items.append(line)
    return items


def _read_private(file: Path) -> str:
    data = read_private(file, "env file", max_bytes=MAX_ENV_FILE_BYTES, regular_only=False, field="env")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise InvalidArgument(f"env file {file} is not UTF-8 text", field="env") from None


__all__ = ["MAX_ENV_FILE_BYTES", "read_env_file"]
