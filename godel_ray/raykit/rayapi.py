"""The one place that talks to Ray's API and maps Ray's exceptions to the GodelError tree.

    RayTaskError(cause)                    -> cause, when it is a GodelError (else GodelError)
    ActorUnavailableError                  -> ActorUnreachable (a ClusterUnavailable: may come back)
    ActorDiedError / RayActorError, or     -> ActorDied (a ClusterUnavailable: gone for good)
      ``.remote()`` on a gone actor
      ... both ControlPlaneNotRunning when the callee is the balancer
    GetTimeoutError                        -> DeadlineExceeded
    AuthenticationError                    -> ControlPlaneNotRunning (wrong/missing Ray token)

``ActorUnreachable`` and ``ActorDied`` refine ``ClusterUnavailable`` (whoever catches that sees no
change) so that an owner with its own policy, such as the agent runtime marking a dead agent
failed, can tell the two apart without importing Ray.

Use ``mapped(...)`` around any Ray call (sync or async), ``get(ref, timeout_s)`` for blocking
gets, ``init_client(address, env)`` to attach a driver, ``attach(address, namespace)`` for a
server process (a site) that hosts actors. Reading the cluster: ``cluster_resources``,
``available_resources``, ``alive_node_resources``, ``node_resources`` (per node, with what is free),
``node_lost`` (whether a node is gone), and ``current_placement`` inside an actor.
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


class ActorUnreachable(ClusterUnavailable):
    """The actor is alive but cannot be reached right now (Ray's ``ActorUnavailableError``): retry."""


class ActorDied(ClusterUnavailable):
    """The actor's process is gone for good (died, killed, or from an earlier Ray session)."""


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
        kind = ActorUnreachable if isinstance(exc, rex.ActorUnavailableError) else ActorDied
        return kind(f"{what or 'actor'} is unavailable: {_first_line(exc)}",
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
        return ActorDied(f"{what or 'actor'} is unavailable: {_first_line(exc)}",
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


def gcs_address() -> str:
    """The attached Ray cluster's address (``""`` when not inside Ray)."""
    import ray

    if not ray.is_initialized():
        return ""
    return str(ray.get_runtime_context().gcs_address)


def cluster_resources() -> dict[str, float]:
    """The attached Ray cluster's total resources (``{}`` when not inside Ray)."""
    import ray

    if not ray.is_initialized():
        return {}
    return dict(ray.cluster_resources())  # type: ignore[no-untyped-call]


def available_resources() -> dict[str, float]:
    """The attached Ray cluster's free resources right now (``{}`` when not inside Ray)."""
    import ray

    if not ray.is_initialized():
        return {}
    return dict(ray.available_resources())  # type: ignore[no-untyped-call]


def alive_node_resources() -> list[dict[str, float]]:
    """The TOTAL resources of each alive node of the attached Ray cluster (``[]`` when not inside Ray)."""
    import ray

    if not ray.is_initialized():
        return []
    return [dict(node.get("Resources", {})) for node in ray.nodes()  # type: ignore[no-untyped-call]
            if node.get("Alive")]


def node_resources() -> list[tuple[str, bool, dict[str, float], dict[str, float]]]:
    """Each alive node of the attached Ray cluster: (node id, is the head, total resources, free now).

    ``[]`` when not inside Ray. Free resources come from Ray's per-node view (a developer API that
    may lag a running task by a moment, as ``available_resources`` does).
    """
    import ray

    if not ray.is_initialized():
        return []
    from ray._private.state import available_resources_per_node

    free = available_resources_per_node()  # type: ignore[no-untyped-call]
    out = []
    for node in ray.nodes():  # type: ignore[no-untyped-call]
        if not node.get("Alive"):
            continue
        total = {k: float(v) for k, v in node.get("Resources", {}).items()}
        node_id = str(node.get("NodeID", ""))
        out.append((node_id, "node:__internal_head__" in total, total,
                    {k: float(v) for k, v in free.get(node_id, {}).items()}))
    return out


def node_lost(node_id: str, timeout_s: float = 1.0) -> str | None:
    """Why node ``node_id`` of the attached cluster is gone, or None (alive, or not known).

    Ray takes its health-check window (about 15 s by default) to mark a dead node; a raylet that no
    longer accepts connections on its node-manager port is lost already, so that is checked too.
    """
    import socket

    import ray

    if not node_id or not ray.is_initialized():
        return None
    node = next((n for n in ray.nodes() if n.get("NodeID") == node_id), None)  # type: ignore[no-untyped-call]
    if node is None:
        return None
    if not node.get("Alive"):
        why = str(node.get("DeathReasonMessage") or "").strip()
        return f"Ray marked it dead{': ' + why[:120] if why else ''}"
    address = (str(node.get("NodeManagerAddress", "")), int(node.get("NodeManagerPort", 0)))
    try:
        with socket.create_connection(address, timeout=timeout_s):
            return None
    except OSError as exc:
        return f"its raylet at {address[0]}:{address[1]} does not answer ({exc.strerror or exc})"


def current_placement() -> tuple[str, list[str]]:
    """Inside an actor: (the id of the node it runs on, the GPU ids Ray assigned it).

    ``("", [])`` outside a Ray worker (a plain-class use, as in unit tests).
    """
    try:
        import ray

        return ray.get_runtime_context().get_node_id(), [str(g) for g in ray.get_gpu_ids()]
    except Exception:  # noqa: BLE001 - not inside a Ray worker
        return "", []


def cancel(ref: Any) -> None:
    """Cancel a submitted call or streaming generator (best effort: it may have finished)."""
    import ray

    with contextlib.suppress(Exception):
        ray.cancel(ref)


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


def attach(address: str, namespace: str) -> None:
    """Attach this server process (a site) to the Ray cluster at ``address``, in ``namespace``.

    Ray reads its auth settings from the environment when it is first imported: put them in place
    (``heads.RayHead.env()``) before the first call into this module that imports Ray.
    """
    import ray

    with mapped(f"ray cluster at {address}"):
        ray.init(address=address, namespace=namespace, logging_level=logging.ERROR, log_to_driver=False)


def detach() -> None:
    """Disconnect this process from Ray (nothing when it is not attached)."""
    import sys

    ray = sys.modules.get("ray")  # never import Ray just to find it was not in use
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def _reload_auth_config() -> None:
    """Ray reads RAY_AUTH_MODE/RAY_AUTH_TOKEN once per process (at import) and caches them: reload."""
    from ray._private.authentication_test_utils import reset_auth_token_state

    reset_auth_token_state()


def is_initialized() -> bool:
    """Whether this process is attached to a Ray cluster (``ray.init`` done, no ``ray.shutdown`` since)."""
    import ray

    return bool(ray.is_initialized())


__all__ = ["BALANCER_WHAT", "ActorDied", "ActorUnreachable", "actor", "alive_node_resources", "attach",
           "available_resources", "cancel", "cluster_resources", "current_placement", "detach", "get",
           "init_client", "is_initialized", "kill_actor", "mapped", "node_lost", "node_resources", "put",
           "remote_actor", "translate"]
