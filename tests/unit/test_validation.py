"""Input validation: every refusal is InvalidArgument naming the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from godel_ray.core.validation import (
    parse_label,
    validate_agent_id,
    validate_cluster_id,
    validate_command,
    validate_env,
    validate_exec_timeout,
    validate_spawn_config,
)
from godel_ray.errors import InvalidArgument
from godel_ray.models import SpawnConfig
from godel_ray.settings import Limits

SMALL = Limits(max_labels=2, max_label_bytes=16, max_env_vars=2, max_env_bytes=32, max_command_bytes=10,
               max_command_timeout_s=100.0, default_command_timeout_s=7.0)


@pytest.mark.parametrize("agent_id", ["ag-0123456789ab", "a", "x.y_z-1", "9" * 63])
def test_good_agent_ids(agent_id: str) -> None:
    assert validate_agent_id(agent_id) == agent_id


@pytest.mark.parametrize("agent_id", ["", "-a", "A", "a/b", "a b", "a" * 64, "../x", "é"])
def test_bad_agent_ids(agent_id: str) -> None:
    with pytest.raises(InvalidArgument, match="agent id") as info:
        validate_agent_id(agent_id)
    assert info.value.field == "agent_id"


def test_a_plain_config_is_valid() -> None:
    config = SpawnConfig(labels={"task": "dl"}, env={"A_B": "1"}, timeout_s=5, gpu_type="nvidia-a100")
    assert validate_spawn_config(config) is config


@pytest.mark.parametrize(("config", "field", "message"), [
    (SpawnConfig(labels={"a": "1", "b": "2", "c": "3"}), "labels", "3 labels"),
    (SpawnConfig(labels={"-bad": "1"}), "labels", "label key"),
    (SpawnConfig(labels={"k": "v" * 20}), "labels", "over the limit"),
    (SpawnConfig(env={"1X": "a"}), "env", "env name"),
    (SpawnConfig(env={"A-B": "a"}), "env", "env name"),
    (SpawnConfig(env={"A": "1", "B": "2", "C": "3"}), "env", "3 variables"),
    (SpawnConfig(env={"A": "x" * 40}), "env", "bytes, over the limit"),
    (SpawnConfig(env={"A": "a\x00b"}), "env", "NUL"),
    (SpawnConfig(timeout_s=0), "timeout_s", "> 0"),
    (SpawnConfig(timeout_s=-1), "timeout_s", "> 0"),
    (SpawnConfig(cpus=-0.5), "cpus", "0 or at least"),
    (SpawnConfig(cpus=0.00005), "cpus", "0 or at least 0.0001"),
    (SpawnConfig(cpus=1e-300), "cpus", "0 or at least 0.0001"),
    (SpawnConfig(requires_gpu=True, gpu_count=0), "gpu_count", ">= 1"),
    (SpawnConfig(gpu_type="bad type!"), "gpu_type", "gpu_type"),
    (SpawnConfig(checkpoint_interval_s=0), "checkpoint_interval_s", "> 0"),
    (SpawnConfig(model=""), "model", "model"),
])
def test_bad_spawn_configs(config: SpawnConfig, field: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message) as info:
        validate_spawn_config(config, SMALL)
    assert info.value.field == field


def test_the_smallest_cpu_share_ray_schedules_is_valid() -> None:
    for cpus in (0.0, 0.0001, 0.5, 64.0):
        assert validate_spawn_config(SpawnConfig(cpus=cpus), SMALL).cpus == cpus


def test_gpu_count_is_ignored_without_a_gpu() -> None:
    config = SpawnConfig(gpu_count=0)
    assert validate_spawn_config(config, SMALL) is config
    assert config.num_gpus == 0


@pytest.mark.parametrize(("command", "message"), [
    ("", "empty"), ("   ", "empty"), ("echo\x00", "NUL"), ("echo 12345678", "over the limit")])
def test_bad_commands(command: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate_command(command, SMALL)


def test_good_command() -> None:
    assert validate_command("ls -la", SMALL) == "ls -la"


def test_exec_timeouts() -> None:
    assert validate_exec_timeout(None, SMALL) == 7.0
    assert validate_exec_timeout(100, SMALL) == 100.0
    for bad in (0, -1, 100.5, float("nan")):
        with pytest.raises(InvalidArgument, match="command timeout"):
            validate_exec_timeout(bad, SMALL)


def test_parse_label() -> None:
    assert parse_label("task=dl") == ("task", "dl")
    assert parse_label("a=b=c") == ("a", "b=c")
    assert parse_label("empty=") == ("empty", "")
    for bad in ("novalue", "=v", "-k=v"):
        with pytest.raises(InvalidArgument):
            parse_label(bad)


# --- a trailing newline is not part of a name ("$" in re.match matches before a final "\n") ------

@pytest.mark.parametrize("suffix", ["\n", "\r\n", "\n\n", " "])
def test_names_with_a_trailing_newline_are_refused(suffix: str) -> None:
    with pytest.raises(InvalidArgument, match="agent id"):
        validate_agent_id("ag-1" + suffix)
    with pytest.raises(InvalidArgument, match="cluster name"):
        validate_cluster_id("gpu-east" + suffix)
    with pytest.raises(InvalidArgument, match="env name"):
        validate_env({"HOME" + suffix: "x"})
    with pytest.raises(InvalidArgument, match="label key"):
        parse_label(f"task{suffix}=dl")
    with pytest.raises(InvalidArgument, match="gpu_type"):
        validate_spawn_config(SpawnConfig(gpu_type="nvidia-a100" + suffix))


def test_names_without_the_newline_pass() -> None:
    assert validate_agent_id("ag-1") == "ag-1"
    assert validate_cluster_id("gpu-east") == "gpu-east"
    validate_env({"HOME": "x"})
    assert parse_label("task=dl\n") == ("task", "dl\n")  # a value may hold anything but NUL


# --- non-finite numbers ---------------------------------------------------------------------------

NON_FINITE = [float("inf"), float("-inf"), float("nan"), float("1e309")]
FLOAT_FIELDS = ["timeout_s", "cpus", "checkpoint_interval_s", "max_latency_ms", "max_cost_per_hour"]


@pytest.mark.parametrize("value", NON_FINITE, ids=["inf", "-inf", "nan", "1e309"])
@pytest.mark.parametrize("field", FLOAT_FIELDS)
def test_the_python_api_model_refuses_non_finite_numbers(field: str, value: float) -> None:
    """``gr.SpawnConfig(checkpoint_interval_s=float("inf"))``: refused when it is built, naming the field."""
    with pytest.raises(ValidationError, match="finite number") as info:
        SpawnConfig(**{field: value})
    assert info.value.errors()[0]["loc"] == (field,)


@pytest.mark.parametrize("value", NON_FINITE, ids=["inf", "-inf", "nan", "1e309"])
@pytest.mark.parametrize("field", FLOAT_FIELDS)
def test_validation_refuses_non_finite_numbers_on_unvalidated_models(field: str, value: float) -> None:
    """A config built around pydantic (``model_copy(update=...)``) is still refused by the checks."""
    config = SpawnConfig().model_copy(update={field: value})
    with pytest.raises(InvalidArgument, match="finite") as info:
        validate_spawn_config(config)
    assert info.value.field == field


def test_nested_non_finite_numbers_are_named_by_their_path() -> None:
    from godel_ray.core.validation import validate_finite
    from godel_ray.models import Cluster, HealthSettings, SiteCapacity

    cluster = Cluster(id="east", endpoint="h:1").model_copy(
        update={"health": HealthSettings().model_copy(update={"heartbeat_interval_s": float("inf")})})
    with pytest.raises(InvalidArgument, match=r"health\.heartbeat_interval_s must be a finite number") as info:
        validate_finite(cluster)
    assert info.value.field == "health.heartbeat_interval_s"
    capacity = SiteCapacity().model_copy(update={"free_gpus": {"a100": float("nan")}})
    with pytest.raises(InvalidArgument, match=r"free_gpus\.a100"):
        validate_finite(capacity)
    validate_finite(Cluster(id="east", endpoint="h:1"))  # finite everywhere: no error
