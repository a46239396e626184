"""Validation of user input: agent ids, spawn configs, commands, timeouts, ``k=v`` labels.

Pure (no ray, no grpc). Every check raises ``InvalidArgument`` with a message that names the
field and says what to do; the site server maps it to ``INVALID_ARGUMENT``. The site and the
control plane run the same checks, so a request is refused before anything is created.
"""

from __future__ import annotations

import math
import re

from pydantic import BaseModel

from godel_ray.errors import InvalidArgument
from godel_ray.models import LOCAL_CLUSTER_ID, SpawnConfig
from godel_ray.settings import LIMITS, Limits

# Use these with ``fullmatch`` only: ``re.match(r"...$")`` accepts a trailing newline ("$" matches
# before a final "\n"), which would let "ag-1\n" through as an agent id.
AGENT_ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
LABEL_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,62}")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CLUSTER_ID_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")  # a DNS label
RESERVED_CLUSTER_IDS = frozenset({LOCAL_CLUSTER_ID})  # the control plane's own cluster
GPU_TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
REGION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
MAX_MODEL_BYTES = 256
MIN_CPUS = 0.0001  # Ray refuses a fractional resource below its unit (ray_option_utils), after we said yes


def validate_cluster_id(cluster_id: str, *, registering: bool = False) -> str:
    """Return ``cluster_id`` if it is a DNS label (1-63 of ``a-z0-9-``, not starting or ending with
    ``-``); ``registering`` also refuses the reserved ``local``."""
    if not isinstance(cluster_id, str) or not CLUSTER_ID_RE.fullmatch(cluster_id):
        raise InvalidArgument(
            f"cluster name {cluster_id!r} is invalid: use 1-63 characters of a-z, 0-9 and '-', "
            "starting and ending with a letter or digit", field="name")
    if registering and cluster_id in RESERVED_CLUSTER_IDS:
        raise InvalidArgument(f"cluster name {cluster_id!r} is reserved for the control plane's own cluster: "
                              "pick another name", field="name")
    return cluster_id


def validate_agent_id(agent_id: str) -> str:
    """Return ``agent_id`` if it is 1-63 chars of ``a-z0-9._-`` starting with a letter or digit."""
    if not isinstance(agent_id, str) or not AGENT_ID_RE.fullmatch(agent_id):
        raise InvalidArgument(
            f"agent id {agent_id!r} is invalid: use 1-63 characters of a-z, 0-9, '.', '_' or '-', "
            "starting with a letter or digit", field="agent_id")
    return agent_id


def validate_label(key: str, value: str, limits: Limits = LIMITS) -> None:
    if not LABEL_KEY_RE.fullmatch(key):
        raise InvalidArgument(
            f"label key {key!r} is invalid: use 1-63 characters of letters, digits, '.', '_', '/' or '-', "
            "starting with a letter or digit", field="labels")
    if "\x00" in value:
        raise InvalidArgument(f"label {key!r} contains a NUL byte: remove it", field="labels")
    size = len(key.encode()) + len(value.encode())
    if size > limits.max_label_bytes:
        raise InvalidArgument(
            f"label {key!r} is {size} bytes, over the limit of {limits.max_label_bytes}: shorten it",
            field="labels")


def parse_label(text: str, limits: Limits = LIMITS) -> tuple[str, str]:
    """Parse ``"k=v"`` (as given to ``--label``) into a validated ``(key, value)``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise InvalidArgument(f"label {text!r} is not of the form key=value", field="labels")
    validate_label(key, value, limits)
    return key, value


def validate_env(env: dict[str, str], limits: Limits = LIMITS) -> None:
    if len(env) > limits.max_env_vars:
        raise InvalidArgument(
            f"env has {len(env)} variables, over the limit of {limits.max_env_vars}: pass fewer", field="env")
    total = 0
    for name, value in env.items():
        if not ENV_NAME_RE.fullmatch(name):
            raise InvalidArgument(
                f"env name {name!r} is invalid: use letters, digits and '_', not starting with a digit",
                field="env")
        if "\x00" in value:
            raise InvalidArgument(f"env {name} contains a NUL byte: remove it", field="env")
        total += len(name.encode()) + len(value.encode())
    if total > limits.max_env_bytes:
        raise InvalidArgument(
            f"env is {total} bytes, over the limit of {limits.max_env_bytes}: pass large values as files",
            field="env")


def validate_finite(model: BaseModel, prefix: str = "") -> None:
    """Refuse ``inf`` and ``nan`` in any number of ``model`` (nested models, dict values and list
    items included), naming the field (``health.heartbeat_interval_s``).

    The models refuse them when they are built; this catches a model built without validation
    (``model_construct``, ``model_copy(update=...)``, unpickled on the far side of a Ray call), where
    a NaN would slip past every ``> 0`` check and an ``inf`` would be stored as null.
    """
    for name, value in model:
        _require_finite(value, prefix + name)


def _require_finite(value: object, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidArgument(f"{where} must be a finite number; got {value}", field=where)
    if isinstance(value, BaseModel):
        validate_finite(value, where + ".")
    elif isinstance(value, dict):
        for key, item in value.items():
            _require_finite(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _require_finite(item, f"{where}[{index}]")


def validate_spawn_config(config: SpawnConfig, limits: Limits = LIMITS) -> SpawnConfig:
    """Check everything a spawn request carries; return ``config`` unchanged when it is valid."""
    validate_finite(config)
    if not config.model or len(config.model.encode()) > MAX_MODEL_BYTES or "\x00" in config.model:
        raise InvalidArgument(
            f"model must be 1-{MAX_MODEL_BYTES} bytes without NUL; got {config.model[:40]!r}", field="model")
    if len(config.labels) > limits.max_labels:
        raise InvalidArgument(
            f"{len(config.labels)} labels, over the limit of {limits.max_labels}: pass fewer", field="labels")
    for key, value in config.labels.items():
        validate_label(key, value, limits)
    validate_env(config.env, limits)
    if config.timeout_s is not None and not config.timeout_s > 0:
        raise InvalidArgument(
            f"timeout_s must be > 0 seconds (or unset for no lifetime limit); got {config.timeout_s}",
            field="timeout_s")
    if not (config.cpus == 0 or config.cpus >= MIN_CPUS):
        raise InvalidArgument(f"cpus must be 0 or at least {MIN_CPUS:g} (the smallest unit Ray schedules); "
                              f"got {config.cpus}", field="cpus")
    if config.needs_gpu and config.gpu_count < 1:
        raise InvalidArgument(
            f"gpu_count must be >= 1 when a GPU is required; got {config.gpu_count}", field="gpu_count")
    if config.gpu_type is not None and not GPU_TYPE_RE.fullmatch(config.gpu_type):
        raise InvalidArgument(
            f"gpu_type {config.gpu_type!r} is invalid: use a name like 'nvidia-a100' or 'A100'",
            field="gpu_type")
    if not config.checkpoint_interval_s > 0:
        raise InvalidArgument(
            f"checkpoint_interval_s must be > 0 seconds; got {config.checkpoint_interval_s}",
            field="checkpoint_interval_s")
    if config.idempotency_key is not None:
        validate_idempotency_key(config.idempotency_key)
    return config


MAX_IDEMPOTENCY_KEY_CHARS = 256


def validate_idempotency_key(key: str) -> str:
    """An idempotency key is 1-256 characters without NUL."""
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_CHARS or "\x00" in key:
        raise InvalidArgument(f"idempotency_key must be 1-{MAX_IDEMPOTENCY_KEY_CHARS} characters without NUL; "
                              f"got {len(key)}", field="idempotency_key")
    return key


def validate_command(command: str, limits: Limits = LIMITS) -> str:
    """A command is non-empty text without NUL, at most ``limits.max_command_bytes``."""
    if not isinstance(command, str) or not command.strip():
        raise InvalidArgument("command is empty: pass the shell command to run", field="command")
    if "\x00" in command:
        raise InvalidArgument("command contains a NUL byte: remove it", field="command")
    size = len(command.encode())
    if size > limits.max_command_bytes:
        raise InvalidArgument(
            f"command is {size} bytes, over the limit of {limits.max_command_bytes}: "
            "put long scripts in a file in the agent's working directory", field="command")
    return command


def validate_exec_timeout(timeout_s: float | None, limits: Limits = LIMITS) -> float:
    """Return the effective command timeout: the default when unset, else 0 < t <= the maximum."""
    if timeout_s is None:
        return limits.default_command_timeout_s
    if not 0 < timeout_s <= limits.max_command_timeout_s:
        raise InvalidArgument(
            f"command timeout must be > 0 and <= {limits.max_command_timeout_s:.0f} s; got {timeout_s}",
            field="timeout_s")
    return float(timeout_s)


__all__ = [
    "AGENT_ID_RE", "CLUSTER_ID_RE", "ENV_NAME_RE", "GPU_TYPE_RE", "LABEL_KEY_RE", "REGION_RE", "parse_label",
    "validate_agent_id", "validate_cluster_id", "validate_command", "validate_env", "validate_exec_timeout",
    "validate_finite", "validate_idempotency_key", "validate_label", "validate_spawn_config",
]
