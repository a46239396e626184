"""The one place that talks to Ray's API and maps Ray's exceptions to the GodelError tree.

    RayTaskError(cause)                    -> cause, when it is a GodelError (else GodelError)
    ActorDiedError / ActorUnavailableError -> ClusterUnavailable (a ClusterActor) or
                                              ControlPlaneNotRunning (the balancer)
    GetTimeoutError                        -> DeadlineExceeded
    AuthenticationError                    -> ControlPlaneNotRunning (wrong/missing Ray token)

Use ``mapped(...)`` around any Ray call (sync or async), ``get(ref, timeout_s)`` for blocking
gets, ``init_client(address, env)`` to attach a driver.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from godel_ray import settings
from godel_ray.errors import (
    ClusterUnavailable,
    ControlPlaneNotRunning,
    DeadlineExceeded,
    GodelError,
)

BALANCER_WHAT = "balancer"
SUBMIT_FAILED_PREFIX = "Failed to submit task to actor"  # Ray's bare Exception from .remote()


def translate(exc: BaseException, what: str = "") -> GodelError | None:
    """The GodelError ``exc`` stands for, or None when it is not a Ray error we know."""
    import ray.exceptions as rex

    if isinstance(exc, GodelError) and not isinstance(exc, rex.RayError):
        return exc
    if isinstance(exc, rex.RayTaskError):
        cause = exc.cause
        if isinstance(cause, GodelError):
            # The dual RayTaskError(GodelError) subclass keeps Ray's long traceback as str(): rebuild.
            return type(cause)(cause.message, **cause.fields)
        if isinstance(cause, rex.RayError):
            return translate(cause, what)
        return GodelError(f"{what or 'actor'} failed: {type(cause).__name__}: {cause}")
    if isinstance(exc, (rex.ActorDiedError, rex.ActorUnavailableError, rex.RayActorError)):
        if what == BALANCER_WHAT:
            return ControlPlaneNotRunning(
                "the control plane's balancer is not answering (it may be restarting); retry, or run "
                "`swarmctl up`")
        return ClusterUnavailable(f"{what or 'actor'} is unavailable: {_first_line(exc)}",
                                  cluster_id=what.removeprefix("cluster ") if what else "")
    if isinstance(exc, rex.GetTimeoutError):
        return DeadlineExceeded(f"{what or 'call'} did not answer in time")
    if isinstance(exc, rex.AuthenticationError):
        return ControlPlaneNotRunning(f"Ray refused our credentials: {_first_line(exc)}; check "
                                      "RAY_AUTH_TOKEN or run `swarmctl up`")
    if isinstance(exc, rex.RayError):
        return GodelError(f"{what or 'ray call'} failed: {_first_line(exc)}")
    if type(exc) is Exception and str(exc).startswith(SUBMIT_FAILED_PREFIX):
        # ``.remote()`` on a handle whose actor is gone (dead, or from a previous Ray session): Ray
        # raises a bare Exception, not a RayError.
        if what == BALANCER_WHAT:
            return ControlPlaneNotRunning("the control plane's balancer is gone (was the control plane "
                                          "restarted?): connect again, or run `swarmctl up`")
        return ClusterUnavailable(f"{what or 'actor'} is unavailable: {_first_line(exc)}",
                                  cluster_id=what.removeprefix("cluster ") if what else "")
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def mapped(what: str = "") -> Iterator[None]:
    """Re-raise Ray exceptions raised inside as their GodelError; ``what`` names the callee.

    Works around ``await`` too: ``with mapped("cluster x"): await ref``.
    """
    try:
        yield
    except GodelError as exc:
        err = translate(exc, what)
        if err is exc:
            raise
        raise err from exc  # type: ignore[misc]
    except Exception as exc:
        err = translate(exc, what)
        if err is None:
            raise
        raise err from exc


def get(ref: Any, timeout_s: float | None = None, what: str = "") -> Any:
    import ray

    with mapped(what):
        return ray.get(ref, timeout=timeout_s)


def actor(name: str, what: str = "") -> Any:
    """A named actor's handle in the godel namespace (``ClusterUnavailable`` etc. when missing)."""
    import ray

    try:
        return ray.get_actor(name, namespace=settings.NAMESPACE)
    except ValueError as exc:
        if what == BALANCER_WHAT:
            raise ControlPlaneNotRunning(
                "the control plane's balancer is not running: run `swarmctl up`") from exc
        raise ClusterUnavailable(f"{what or name} has no actor running: is it registered? (`swarmctl cluster list`)",
                                 cluster_id=what.removeprefix("cluster ")) from exc


def put(value: object, what: str = "object store") -> Any:
    """Put ``value`` into the object store; the ref can be passed to another actor unfetched."""
    import ray

    with mapped(what):
        return ray.put(value)


def kill_actor(handle: Any) -> None:
    """End an actor for good (no restart)."""
    import ray

    ray.kill(handle, no_restart=True)


def cluster_resources() -> dict[str, float]:
    """The attached Ray cluster's total resources (``{}`` when not inside Ray)."""
    import ray

    if not ray.is_initialized():
        return {}
    return dict(ray.cluster_resources())  # type: ignore[no-untyped-call]


def remote_actor(cls: type, options: dict[str, Any], *args: Any) -> Any:
    """Create (or, with ``get_if_exists`` in ``options``, find) an actor of plain class ``cls``.

    The only ``ray.remote`` in the project: callers decide names and options (``control.factory``,
    ``agents.actor``), this applies them.
    """
    import ray

    return ray.remote(cls).options(**options).remote(*args)


def init_client(address: str, env: dict[str, str] | None = None) -> None:
    """Attach this process to the Ray cluster at ``address`` as a driver (token auth from ``env``)."""
    import ray

    changed = False
    for key, value in (env or {}).items():
        if key != "RAY_ADDRESS" and os.environ.get(key) != value:
            os.environ[key] = value
            changed = True
    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if current == address:
            return
        ray.shutdown()
    if changed:
        _reload_auth_config()
    with mapped("ray.init"):
        try:
            ray.init(address=address, namespace=settings.NAMESPACE, logging_level=logging.ERROR,
                     log_to_driver=False)
        except ConnectionError as exc:
            raise ControlPlaneNotRunning(f"cannot reach the control plane's Ray at {address}: {exc}; "
                                         "run `swarmctl up`") from exc


def detach() -> None:
    """Leave the Ray cluster this process is attached to (a no-op when it is not attached)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _reload_auth_config() -> None:
    """Ray reads RAY_AUTH_MODE/RAY_AUTH_TOKEN once per process (at import) and caches them: reload."""
    from ray._private.authentication_test_utils import reset_auth_token_state

    reset_auth_token_state()


__all__ = ["BALANCER_WHAT", "actor", "cluster_resources", "detach", "get", "init_client", "kill_actor", "mapped", "put",
           "remote_actor", "translate"]
