"""How swarmctl talks to a person or a program: consoles, JSON, and the one error handler.

- Human output goes through rich consoles; when stdout is not a terminal rich writes no colour
  codes, and nothing here draws a spinner or a live view unless stdout is a terminal. What is
  shown is built by ``godel_cli.tables`` and ``godel_cli.safetext`` (inert text: what a user or a site
  wrote is never parsed as markup and its control characters are escaped).
- ``--json`` output is plain ``json.dumps`` of :func:`jsonable` (env values redacted), nothing else.
- :func:`guarded` wraps every command: a ``GodelError`` (or bad input caught by pydantic) becomes ONE
  line ``error: <message>`` on stderr (control characters escaped) and an exit code chosen by the
  error's class (:data:`EXIT_CODES`); anything unexpected prints one line plus a hint to re-run with
  ``GODEL_DEBUG=1``, which prints the traceback as well.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from godel_cli.safetext import Part, clean, line
from pydantic import BaseModel, ValidationError
from rich.console import Console

from godel_ray import errors
from godel_ray.models import Agent

# ---------------------------------------------------------------- options shared by every command

StateDirOption = Annotated[str | None, typer.Option(
    "--state-dir", envvar="GODEL_STATE_DIR", show_envvar=True,
    help="Control-plane state directory (default ~/.godel).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")]

# ---------------------------------------------------------------- consoles

_CONSOLES: dict[str, Console] = {}


PIPE_WIDTH = 250  # off a terminal, tables keep whole values (for grep, awk) instead of wrapping at 80


def out() -> Console:
    """stdout console: colour only on a terminal (and never with NO_COLOR)."""
    if "out" not in _CONSOLES:
        console = Console(highlight=False, soft_wrap=False)
        if not console.is_terminal and "COLUMNS" not in os.environ:
            console = Console(highlight=False, soft_wrap=False, width=PIPE_WIDTH)
        _CONSOLES["out"] = console
    return _CONSOLES["out"]


def err() -> Console:
    if "err" not in _CONSOLES:
        _CONSOLES["err"] = Console(stderr=True, highlight=False, soft_wrap=True)
    return _CONSOLES["err"]


def interactive() -> bool:
    """True when stdout is a terminal: live views and progress displays are allowed."""
    return out().is_terminal


def say(*parts: Part) -> None:
    """Print one :func:`line` on stdout."""
    out().print(line(*parts))


# ---------------------------------------------------------------- JSON

def jsonable(value: Any) -> Any:
    """A JSON-safe copy of ``value``; agents (and anything holding one) have env values redacted."""
    if isinstance(value, Agent):
        return value.public_dict()
    if isinstance(value, BaseModel):
        data = value.model_dump(mode="json")
        for name in type(value).model_fields:
            field_value = getattr(value, name)
            if isinstance(field_value, (Agent, BaseModel, list, dict)) and _holds_agent(field_value):
                data[name] = jsonable(field_value)
        return data
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def _holds_agent(value: Any) -> bool:
    if isinstance(value, Agent):
        return True
    if isinstance(value, BaseModel):
        return any(_holds_agent(getattr(value, name)) for name in type(value).model_fields)
    if isinstance(value, dict):
        return any(_holds_agent(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_agent(v) for v in value)
    return False


def emit_json(value: Any, *, compact: bool = False) -> None:
    """Write ``value`` as JSON on stdout (one line when ``compact``: for JSON-lines streams)."""
    text = json.dumps(jsonable(value), indent=None if compact else 2, sort_keys=False)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------- errors

EXIT_CODES: dict[type[errors.GodelError], int] = {
    errors.InvalidArgument: 2,
    errors.NotFound: 3,
    errors.AlreadyExists: 4,
    errors.Unauthenticated: 5,
    errors.FailedPrecondition: 6,
    errors.ResourceExhausted: 7,
    errors.ClusterUnavailable: 8,
    errors.DeadlineExceeded: 9,
    errors.ControlPlaneNotRunning: 10,
}
UNEXPECTED_EXIT_CODE = 70  # EX_SOFTWARE
DEBUG_ENV = "GODEL_DEBUG"

F = TypeVar("F", bound=Callable[..., Any])


def exit_code_for(exc: errors.GodelError) -> int:
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return 1


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``error: message`` as one line on stderr and exit with ``code``."""
    lines = [clean(" ".join(text.split())) for text in str(message).splitlines() if text.strip()] or ["failed"]
    # a header ending in ':' followed by one line per item reads as "header: a; b; c"
    one_line = lines[0] + (" " if lines[0].endswith(":") else "; ") + "; ".join(lines[1:]) if len(lines) > 1 \
        else lines[0]
    sys.stdout.flush()
    sys.stderr.write(f"error: {one_line}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


def guarded(fn: F) -> F:
    """Run a command; map every failure to one ``error:`` line and an exit code (the one place)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            sys.stderr.write("\n")
            raise typer.Exit(130) from None
        except errors.GodelError as exc:
            _debug_traceback()
            fail(_with_reasons(exc), exit_code_for(exc))
        except ValidationError as exc:
            _debug_traceback()
            from godel_ray.inputs import describe_validation_error

            fail(describe_validation_error(exc, names={}), EXIT_CODES[errors.InvalidArgument])
        except BrokenPipeError:
            # `swarmctl ... | head`: the reader left; say nothing more
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(141) from None
        except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, no traceback
            if os.environ.get(DEBUG_ENV):
                traceback.print_exc()
            hint = "" if os.environ.get(DEBUG_ENV) else f" (re-run with {DEBUG_ENV}=1 for the traceback)"
            fail(f"unexpected {type(exc).__name__}: {exc}{hint}", UNEXPECTED_EXIT_CODE)

    return wrapper  # type: ignore[return-value]


def _with_reasons(exc: errors.GodelError) -> str:
    message = exc.message
    reasons = exc.fields.get("reasons")
    if isinstance(reasons, dict) and reasons and not all(str(k) in message for k in reasons):
        message += " (" + "; ".join(f"{k}: {v}" for k, v in reasons.items()) + ")"
    return message


def _debug_traceback() -> None:
    if os.environ.get(DEBUG_ENV):
        traceback.print_exc()


__all__ = ["DEBUG_ENV", "EXIT_CODES", "UNEXPECTED_EXIT_CODE", "JsonOption", "StateDirOption", "emit_json", "err",
           "exit_code_for", "fail", "guarded", "interactive", "jsonable", "out", "say"]
