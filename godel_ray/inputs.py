"""User-facing configuration input: cluster registrations (CLI flags or YAML files) and ``k=v`` lists.

A registration is what an operator writes to add a remote cluster; ``ClusterRegistration`` checks
it (unknown keys rejected, names, costs, GPU types, endpoint form) and turns it into the domain
``Cluster``. A file holds one mapping or a list under ``clusters:``:

    clusters:
      - name: gpu-east
        endpoint: grpc://10.0.0.5:50051
        auth_token_file: tokens/gpu-east.token     # relative to the file
        region: us-east
        gpu_types: [nvidia-a100]                  # implies gpu: true
        cost_per_hour: 3.2
        heartbeat_interval_s: 2

Every failure is ``InvalidArgument`` with a message naming the file and the field. Pure: no ray, no grpc.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from godel_ray.core.endpoint import parse_endpoint
from godel_ray.core.validation import (
    GPU_TYPE_RE,
    REGION_RE,
    parse_label,
    validate_cluster_id,
    validate_env,
    validate_spawn_config,
)
from godel_ray.errors import InvalidArgument
from godel_ray.models import BusyPolicy, Cluster, ClusterCapabilities, HealthSettings, SpawnConfig


class ClusterRegistration(BaseModel):
    """One remote cluster as an operator declares it. Unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str
    endpoint: str
    auth_token_file: str | None = None
    region: str = "default"
    gpu: bool = False
    gpu_types: list[str] = Field(default_factory=list)
    flags: list[str] = Field(default_factory=list)
    max_agents: int = Field(default=100, ge=1)
    cost_per_hour: float = Field(default=0.0, ge=0.0)
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    heartbeat_interval_s: float | None = Field(default=None, gt=0)
    heartbeat_timeout_s: float | None = Field(default=None, gt=0)
    grace_period_s: float | None = Field(default=None, ge=0)
    dead_grace_period_s: float | None = Field(default=None, ge=0)
    load_threshold: float = Field(default=0.8, gt=0, le=1)
    warm_pool_size: int = Field(default=0, ge=0)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        try:
            return validate_cluster_id(value, registering=True)
        except InvalidArgument as exc:
            raise ValueError(exc.message) from None

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        try:
            parse_endpoint(value)
        except InvalidArgument as exc:
            raise ValueError(exc.message) from None
        return value.strip()

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not REGION_RE.fullmatch(value):
            raise ValueError(f"region {value!r} is invalid: use letters, digits, '.', '_' or '-'")
        return value

    @field_validator("gpu_types")
    @classmethod
    def _gpu_types(cls, value: list[str]) -> list[str]:
        for gpu_type in value:
            if not GPU_TYPE_RE.fullmatch(gpu_type):
                raise ValueError(f"gpu type {gpu_type!r} is invalid: use a name like 'nvidia-a100'")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _consistent(self) -> ClusterRegistration:
        if self.gpu_types:
            self.gpu = True  # naming GPU types says the cluster has GPUs
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: give both or neither")
        if (self.heartbeat_interval_s is not None and self.heartbeat_timeout_s is not None
                and self.heartbeat_timeout_s > self.heartbeat_interval_s):
            raise ValueError("heartbeat_timeout_s must not exceed heartbeat_interval_s")
        return self

    def to_cluster(self, base_dir: Path | None = None) -> Cluster:
        """The registry entry. Relative file paths resolve against ``base_dir`` (a YAML file's folder)."""
        health: dict[str, Any] = {}
        if self.heartbeat_interval_s is not None:
            health["heartbeat_interval_s"] = self.heartbeat_interval_s
        if self.heartbeat_timeout_s is not None:
            health["heartbeat_timeout_s"] = self.heartbeat_timeout_s
        elif self.heartbeat_interval_s is not None:
            health["heartbeat_timeout_s"] = min(HealthSettings().heartbeat_timeout_s, self.heartbeat_interval_s)
        if self.grace_period_s is not None:
            health["grace_period_s"] = self.grace_period_s
        if self.dead_grace_period_s is not None:
            health["dead_grace_period_s"] = self.dead_grace_period_s
        return Cluster(
            id=self.name, endpoint=self.endpoint, region=self.region, cost_per_hour=self.cost_per_hour,
            max_agents=self.max_agents,
            capabilities=ClusterCapabilities(gpu=self.gpu, gpu_types=self.gpu_types, flags=self.flags),
            auth_token_file=_path(self.auth_token_file, base_dir),
            tls_ca_file=_path(self.tls_ca_file, base_dir), tls_cert_file=_path(self.tls_cert_file, base_dir),
            tls_key_file=_path(self.tls_key_file, base_dir), health=HealthSettings(**health),
            load_threshold=self.load_threshold, warm_pool_size=self.warm_pool_size)


class ClusterFile(BaseModel):
    """A YAML file with several registrations under ``clusters:``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    clusters: list[ClusterRegistration] = Field(min_length=1)


# How the CLI spells a registration field where it is not simply ``--field-name``.
CLI_NAMES = {"name": "NAME", "endpoint": "ENDPOINT", "cost_per_hour": "--cost", "tls_ca_file": "--tls-ca",
             "gpu_types": "--gpu-types"}


def registration(**fields: Any) -> ClusterRegistration:
    """Build a registration from the CLI's flags; ``InvalidArgument`` naming the flag."""
    try:
        return ClusterRegistration(**fields)
    except ValidationError as exc:
        raise InvalidArgument(describe_validation_error(exc, names=CLI_NAMES), field="cluster") from None


SPAWN_CLI_NAMES = {"requires_gpu": "--gpu", "timeout_s": "--timeout", "preferred_region": "--region",
                   "checkpoint_interval_s": "--checkpoint-interval"}


def build_spawn_config(**fields: Any) -> SpawnConfig:
    """A validated ``SpawnConfig`` from the CLI's flags (``None`` values mean "not given")."""
    given = {k: v for k, v in fields.items() if v is not None}
    try:
        config = SpawnConfig(**given)
    except ValidationError as exc:
        raise InvalidArgument(describe_validation_error(exc, names=SPAWN_CLI_NAMES), field="spawn") from None
    return validate_spawn_config(config)


def load_cluster_file(path: str | os.PathLike[str]) -> list[Cluster]:
    """Read ``path`` (one mapping, or a list under ``clusters:``) into validated ``Cluster`` entries."""
    import yaml

    file = Path(path).expanduser()
    try:
        data = yaml.safe_load(file.read_text())
    except FileNotFoundError:
        raise InvalidArgument(f"cluster file {str(file)!r} does not exist", field="file") from None
    except OSError as exc:
        raise InvalidArgument(f"cluster file {str(file)!r} cannot be read: {exc.strerror}", field="file") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise InvalidArgument(f"{file}: not valid YAML{line}", field="file") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"{file}: expected a mapping (one cluster) or 'clusters:' with a list",
                              field="file")
    try:
        registrations = (ClusterFile(**data).clusters if "clusters" in data
                         else [ClusterRegistration(**data)])
    except ValidationError as exc:
        raise InvalidArgument(f"{file}: {describe_validation_error(exc)}", field="file") from None
    names = [reg.name for reg in registrations]
    if duplicates := sorted({n for n in names if names.count(n) > 1}):
        raise InvalidArgument(f"{file}: cluster name {duplicates[0]!r} appears more than once", field="file")
    return [reg.to_cluster(base_dir=file.resolve().parent) for reg in registrations]


def describe_validation_error(exc: ValidationError, *, names: dict[str, str] | None = None) -> str:
    """The first error as ``field: message``; with ``names``, fields are spelled as CLI flags."""
    err = exc.errors()[0]
    loc = ".".join(f"[{part}]" if isinstance(part, int) else str(part) for part in err["loc"]).replace(".[", "[")
    if names is not None and loc:
        loc = names.get(loc, "--" + loc.replace("_", "-"))
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown key (check the spelling)"
    return f"{loc}: {message}" if loc else message


def parse_labels(items: list[str] | None) -> dict[str, str]:
    """``["k=v", ...]`` (repeated ``--label``) into a validated dict; the last value of a key wins."""
    return dict(parse_label(item) for item in items or [])


def parse_env(items: list[str] | None) -> dict[str, str]:
    """``["NAME=value", ...]`` (repeated ``--env``) into a validated dict."""
    env: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:  # never echo the item: it may be a secret value
            raise InvalidArgument(f"env {name if not sep else '(empty name)'!r} is not of the form NAME=value",
                                  field="env")
        env[name] = value
    validate_env(env)
    return env


def parse_csv(text: str | None) -> list[str]:
    """``"a, b,,c"`` into ``["a", "b", "c"]`` (as given to ``--gpu-types``)."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def busy_policy(value: BusyPolicy | str) -> BusyPolicy:
    """``--busy wait|interrupt``: what a move does with a running command."""
    try:
        return BusyPolicy(value.strip().lower() if isinstance(value, str) else value)
    except ValueError:
        raise InvalidArgument(f"--busy must be 'wait', 'interrupt' or 'live_process', not {value!r}",
                              field="busy") from None


def move_policy(*, interrupt: bool, live_process: bool) -> BusyPolicy:
    """``cluster migrate [--interrupt | --live-process]``: at most one of the two."""
    if interrupt and live_process:
        raise InvalidArgument("--interrupt and --live-process exclude each other: pick one", field="busy")
    return BusyPolicy.INTERRUPT if interrupt else BusyPolicy.LIVE_PROCESS if live_process else BusyPolicy.WAIT


def busy_timeout(value: float | None) -> float | None:
    """``--busy-timeout S``: a positive, finite number of seconds (None: the default)."""
    if value is not None and not 0 < value < float("inf"):
        raise InvalidArgument(f"--busy-timeout must be a positive number of seconds, not {value!r}",
                              field="busy_timeout_s")
    return value


def _path(value: str | None, base_dir: Path | None) -> str | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    return str(path.resolve())


__all__ = [
    "ClusterFile",
    "ClusterRegistration",
    "build_spawn_config",
    "busy_policy",
    "busy_timeout",
    "describe_validation_error",
    "load_cluster_file",
    "move_policy",
    "parse_csv",
    "parse_env",
    "parse_labels",
    "registration",
]
