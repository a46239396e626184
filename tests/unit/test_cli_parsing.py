"""swarmctl's parsing and rendering, without Ray or sockets: k=v lists, cluster files, JSON redaction,
and the one-line `error:` contract for input the CLI refuses before it contacts anything."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import typer
from godel_cli import render, safetext, tables
from godel_cli.main import app
from rich.console import Console
from typer.testing import CliRunner

from godel_ray import errors, inputs
from godel_ray.models import Agent, CandidateScore, ClusterStatus, PlacementDecision, SpawnConfig

# --------------------------------------------------------------- k=v lists and csv


def test_labels_parse_and_last_value_wins() -> None:
    assert inputs.parse_labels(["task=dl", "team=ml", "task=rl", "empty="]) == {
        "task": "rl", "team": "ml", "empty": ""}
    assert inputs.parse_labels(None) == {}


@pytest.mark.parametrize("bad", ["novalue", "=v", "bad key=v", "-x=1"])
def test_malformed_label_is_invalid_argument(bad: str) -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        inputs.parse_labels([bad])
    assert "label" in str(info.value)


def test_env_parses_values_with_equals_signs() -> None:
    assert inputs.parse_env(["A=1", "TOKEN=x=y=z"]) == {"A": "1", "TOKEN": "x=y=z"}


def test_malformed_env_never_echoes_the_value() -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        inputs.parse_env(["=supersecret"])
    assert "supersecret" not in str(info.value)
    with pytest.raises(errors.InvalidArgument) as info:
        inputs.parse_env(["1BAD=supersecret"])
    assert "1BAD" in str(info.value) and "supersecret" not in str(info.value)


def test_gpu_types_csv() -> None:
    assert inputs.parse_csv(" nvidia-a100, h100,,") == ["nvidia-a100", "h100"]
    assert inputs.parse_csv(None) == []


# --------------------------------------------------------------- registrations from flags


def test_registration_maps_flags_onto_cluster() -> None:
    reg = inputs.registration(name="gpu-east", endpoint="grpc://127.0.0.1:5000", region="us-east",
                              gpu_types=["nvidia-a100"], cost_per_hour=3.5, heartbeat_interval_s=0.5,
                              heartbeat_timeout_s=0.4, auth_token_file="/tmp/t.token")
    cluster = reg.to_cluster()
    assert cluster.id == "gpu-east" and cluster.region == "us-east"
    assert cluster.capabilities.gpu is True, "--gpu-types implies --gpu"
    assert cluster.capabilities.gpu_types == ["nvidia-a100"]
    assert cluster.health.heartbeat_interval_s == 0.5 and cluster.health.heartbeat_timeout_s == 0.4
    assert cluster.auth_token_file == "/tmp/t.token"


def test_short_heartbeat_interval_caps_the_default_timeout() -> None:
    cluster = inputs.registration(name="a", endpoint="h:1", heartbeat_interval_s=0.5).to_cluster()
    assert cluster.health.heartbeat_timeout_s <= 0.5


@pytest.mark.parametrize(("fields", "needle"), [
    ({"cost_per_hour": -1.0}, "--cost"),
    ({"name": "Bad_Name"}, "NAME"),
    ({"name": "local"}, "reserved"),
    ({"endpoint": "ftp://h:1"}, "scheme"),
    ({"endpoint": "nohost"}, "port"),
    ({"max_agents": 0}, "--max-agents"),
    ({"gpu_types": ["bad type"]}, "gpu type"),
    ({"heartbeat_interval_s": 1.0, "heartbeat_timeout_s": 2.0}, "heartbeat_timeout_s"),
    ({"cost_per_hour": float("inf")}, "--cost: Input should be a finite number"),
    ({"cost_per_hour": float("nan")}, "--cost: Input should be a finite number"),
    ({"load_threshold": float("nan")}, "--load-threshold: Input should be a finite number"),
    ({"heartbeat_interval_s": float("inf")}, "finite"),
    ({"grace_period_s": float("inf")}, "finite"),
    ({"name": "ok\n"}, "NAME"),
    ({"region": "us-east\n"}, "region"),
    ({"gpu_types": ["nvidia-a100\n"]}, "gpu type"),
    ({"endpoint": "host:\u00b2"}, "not a number"),
])
def test_registration_rejects_bad_input_naming_the_field(fields: dict[str, object], needle: str) -> None:
    base: dict[str, object] = {"name": "ok", "endpoint": "127.0.0.1:1"}
    with pytest.raises(errors.InvalidArgument) as info:
        inputs.registration(**{**base, **fields})
    assert needle in str(info.value)


# --------------------------------------------------------------- cluster files


def test_cluster_file_with_one_mapping(tmp_path: Path) -> None:
    (tmp_path / "tokens").mkdir()
    file = tmp_path / "one.yaml"
    file.write_text("name: gpu-west\nendpoint: grpcs://gpu.example.com:443\n"
                    "auth_token_file: tokens/west.token\ngpu: true\ncost_per_hour: 2\n")
    [cluster] = inputs.load_cluster_file(file)
    assert cluster.id == "gpu-west" and cluster.capabilities.gpu
    assert cluster.auth_token_file == str(tmp_path / "tokens" / "west.token"), "relative to the file"


def test_cluster_file_with_a_list(tmp_path: Path) -> None:
    file = tmp_path / "many.yaml"
    file.write_text("clusters:\n"
                    "  - {name: a, endpoint: '127.0.0.1:1'}\n"
                    "  - {name: b, endpoint: '127.0.0.1:2', gpu_types: [nvidia-h100], region: eu}\n")
    clusters = inputs.load_cluster_file(file)
    assert [c.id for c in clusters] == ["a", "b"]
    assert clusters[1].capabilities.gpu and clusters[1].region == "eu"


@pytest.mark.parametrize(("text", "needle"), [
    ("clusters:\n  - {name: a, endpoint: 'h:1'}\n  - {name: b, endpoint: 'h:2', cots: 1}\n", "clusters[1].cots"),
    ("clusters:\n  - {name: a, endpoint: 'h:1', cost_per_hour: -2}\n", "clusters[0].cost_per_hour"),
    ("name: a\n", "endpoint"),
    ("clusters: []\n", "clusters"),
    ("- a\n- b\n", "mapping"),
    ("name: [unclosed\n", "YAML"),
    ("clusters:\n  - {name: a, endpoint: 'h:1'}\n  - {name: a, endpoint: 'h:2'}\n", "more than once"),
    ("clusters:\n  - {name: a, endpoint: 'h:1', cost_per_hour: .inf}\n", "clusters[0].cost_per_hour: Input should be a finite"),
    ("name: a\nendpoint: 'h:1'\nheartbeat_interval_s: .nan\n", "heartbeat_interval_s: Input should be a finite"),
])
def test_bad_cluster_file_names_the_file_and_field(tmp_path: Path, text: str, needle: str) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(text)
    with pytest.raises(errors.InvalidArgument) as info:
        inputs.load_cluster_file(file)
    assert needle in str(info.value) and "bad.yaml" in str(info.value)


def test_missing_cluster_file(tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidArgument, match="does not exist"):
        inputs.load_cluster_file(tmp_path / "nope.yaml")


def test_spawn_flags_build_a_validated_config() -> None:
    cfg = inputs.build_spawn_config(model="m", gpu_type="nvidia-a100", cpus=None, priority="cost")
    assert cfg.needs_gpu and cfg.cpus == SpawnConfig().cpus and cfg.priority.value == "cost"
    with pytest.raises(errors.InvalidArgument, match="--priority"):
        inputs.build_spawn_config(priority="fastest")
    with pytest.raises(errors.InvalidArgument, match="timeout"):
        inputs.build_spawn_config(timeout_s=-5)


# --------------------------------------------------------------- JSON rendering


def _agent() -> Agent:
    return Agent(id="ag-1", cluster_id="local",
                 config=SpawnConfig(env={"API_KEY": "sk-secret"}, labels={"task": "dl"}))


def test_json_redacts_env_values_everywhere() -> None:
    agent = _agent()
    for value in (agent, [agent], {"agent": agent, "n": 1}):
        text = json.dumps(render.jsonable(value))
        assert "sk-secret" not in text and "API_KEY" in text
    data = render.jsonable(agent)
    assert data["id"] == "ag-1" and data["cluster_id"] == "local" and data["labels"] == {"task": "dl"}


def test_json_of_plain_models() -> None:
    decision = PlacementDecision(agent_id="ag-1", chosen="local", rule="local-under-threshold",
                                 candidates=[CandidateScore(cluster_id="local", score=80, factors={"cost": 100})],
                                 rejections={"gpu-east": "offline"})
    data = render.jsonable(decision)
    assert data["chosen"] == "local" and data["rejections"] == {"gpu-east": "offline"}
    assert data["candidates"][0]["factors"] == {"cost": 100.0}


def test_tables_have_no_colour_codes_off_a_terminal() -> None:
    buf = io.StringIO()
    console = Console(file=buf, width=120)
    decision = PlacementDecision(chosen="b", rule="best-score",
                                 candidates=[CandidateScore(cluster_id="a", score=40, factors={"cost": 10}),
                                             CandidateScore(cluster_id="b", score=90, factors={"cost": 90})],
                                 rejections={"c": "no GPU of type nvidia-a100"})
    console.print(tables.placement_table(decision))
    console.print(tables.rejections_table(decision))
    console.print(safetext.cluster_status(ClusterStatus.OFFLINE))
    text = buf.getvalue()
    assert "\x1b[" not in text
    assert text.index(" b ") < text.index(" a "), "best candidate first"
    assert "no GPU of type nvidia-a100" in text and "offline" in text


# --------------------------------------------------------------- the error contract


def test_exit_codes_follow_the_error_tree() -> None:
    assert render.exit_code_for(errors.NoPlacement("x")) == render.EXIT_CODES[errors.ResourceExhausted]
    assert render.exit_code_for(errors.AgentNotFound("x")) == render.EXIT_CODES[errors.NotFound]
    assert render.exit_code_for(errors.GodelError("x")) == 1


def _run(args: list[str], **env: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, args, env={"GODEL_STATE_DIR": "/nonexistent/godel", **env})
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("args", [
    ["agent", "spawn", "--label", "nokeyvalue"],
    ["agent", "spawn", "--env", "1X=y"],
    ["agent", "spawn", "--priority", "fastest"],
    ["cluster", "add", "x", "127.0.0.1:1", "--cost", "-1"],
    ["cluster", "add", "Bad_Name", "127.0.0.1:1"],
    ["cluster", "add", "x", "ftp://h:1"],
    ["cluster", "add"],
    ["cluster", "maintenance", "x", "sideways"],
    ["agent", "list", "--status", "sleeping"],
    ["cluster", "add", "x", "host:\u00b2"],
])
def test_bad_input_is_one_error_line_before_anything_is_contacted(args: list[str]) -> None:
    code, stdout, stderr = _run(args)
    assert code == render.EXIT_CODES[errors.InvalidArgument]
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert stdout == ""


@pytest.mark.parametrize("number", ["inf", "-inf", "nan", "1e309", "Infinity"])
@pytest.mark.parametrize(("args", "flag"), [
    (["agent", "spawn", "--checkpoint-interval"], "--checkpoint-interval"),
    (["agent", "spawn", "--timeout"], "--timeout"),
    (["agent", "spawn", "--cpus"], "--cpus"),
    (["cluster", "add", "x", "127.0.0.1:1", "--cost"], "--cost"),
])
def test_non_finite_numbers_are_refused_naming_the_flag(args: list[str], flag: str, number: str) -> None:
    """`--checkpoint-interval inf` used to spawn (and poison the agent table): one error line now."""
    code, stdout, stderr = _run([*args, number])
    assert code == render.EXIT_CODES[errors.InvalidArgument], stderr
    assert stderr.startswith(f"error: {flag}: ") and "finite" in stderr and stderr.count("\n") == 1, stderr
    assert stdout == ""


def test_godel_errors_map_to_one_line_and_unexpected_ones_hint_at_debug(monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    @render.guarded
    def not_running() -> None:
        raise errors.ControlPlaneNotRunning("no control plane at /x: run `swarmctl up` first")

    @render.guarded
    def broken() -> None:
        raise KeyError("boom")

    @render.guarded
    def no_fit() -> None:
        raise errors.NoPlacement("no cluster can host this agent", reasons={"gpu-east": "offline"})

    monkeypatch.delenv(render.DEBUG_ENV, raising=False)
    with pytest.raises(typer.Exit) as info:
        not_running()
    assert info.value.exit_code == render.EXIT_CODES[errors.ControlPlaneNotRunning]
    assert capsys.readouterr().err == "error: no control plane at /x: run `swarmctl up` first\n"

    with pytest.raises(typer.Exit) as info:
        no_fit()
    assert "gpu-east: offline" in capsys.readouterr().err

    with pytest.raises(typer.Exit) as info:
        broken()
    err = capsys.readouterr().err
    assert info.value.exit_code == render.UNEXPECTED_EXIT_CODE
    assert err.count("\n") == 1 and "KeyError" in err and "GODEL_DEBUG=1" in err

    monkeypatch.setenv(render.DEBUG_ENV, "1")
    with pytest.raises(typer.Exit):
        broken()
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("error: unexpected KeyError")


def test_multi_line_messages_become_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit):
        render.fail("no cluster can take this agent (1 GPU):\n  cpu: no GPU\n  gpu: status offline\n", 7)
    assert capsys.readouterr().err == "error: no cluster can take this agent (1 GPU): cpu: no GPU; gpu: status offline\n"


def test_read_only_commands_never_import_ray_or_grpc(tmp_path: Path) -> None:
    """The light path: list/health/status read SQLite only (a fresh interpreter, a real state file)."""
    import subprocess
    import sys

    from godel_ray.control.store import StateStore

    StateStore.for_state_dir(tmp_path).close()
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from godel_cli.main import app\n"
        f"for args in (['cluster', 'list'], ['cluster', 'health'], ['cluster', 'stats'], ['agent', 'list'],\n"
        f"             ['events'], ['status'], ['agent', 'status', 'ag-none']):\n"
        f"    r = CliRunner().invoke(app, [*args, '--state-dir', {str(tmp_path)!r}, '--json'])\n"
        "    assert r.exit_code in (0, 3), (args, r.exit_code, r.output)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'grpc')))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout


# --------------------------------------------------------------- exec argv


@pytest.mark.parametrize(("argv", "line"), [
    (["make test && ls"], "make test && ls"),  # one argument: a shell line, as it is
    (["sh", "-c", "echo a; echo b"], "sh -c 'echo a; echo b'"),  # several: argv survives
    (["printf", "%s|", "a b", "c'd", "$HOME"], "printf '%s|' 'a b' 'c'\"'\"'d' '$HOME'"),
    (["printf", "hi"], "printf hi"),
])
def test_exec_arguments_follow_kubectl_and_docker(argv: list[str], line: str) -> None:
    import shlex

    from godel_cli.agent import shell_line

    assert shell_line(argv) == line
    if len(argv) > 1:
        assert shlex.split(shell_line(argv)) == argv


def test_exec_help_says_how_arguments_are_passed() -> None:
    result = CliRunner().invoke(app, ["agent", "exec", "--help"], env={"COLUMNS": "200"})
    assert "sh -c" in result.stdout and "shell line" in result.stdout


# --------------------------------------------------------------- --env-file


def _env_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "agent.env"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_env_file_lines_comments_and_blanks(tmp_path: Path) -> None:
    from godel_cli.envfile import read_env_file

    path = _env_file(tmp_path, "# secrets\n\nAPI_KEY=sk-1=2\n  TOKEN=\"quoted\" \r\n   # indented comment\nEMPTY=\n")
    assert read_env_file(path) == ["API_KEY=sk-1=2", 'TOKEN="quoted" ', "EMPTY="]
    assert inputs.parse_env(read_env_file(path)) == {"API_KEY": "sk-1=2", "TOKEN": '"quoted" ', "EMPTY": ""}


@pytest.mark.parametrize(("text", "needle"), [
    ("OK=1\nsk-supersecret\n", "agent.env:2: not of the form NAME=value"),
    ("OK=1\n=supersecret\n", "agent.env:2: not of the form NAME=value"),
    ("1BAD=supersecret\n", "agent.env:1: env name '1BAD' is invalid"),
    ("export X=supersecret\n", "agent.env:1: env name 'export X' is invalid"),
])
def test_bad_env_file_line_names_file_and_line_never_the_value(tmp_path: Path, text: str, needle: str) -> None:
    from godel_cli.envfile import read_env_file

    with pytest.raises(errors.InvalidArgument) as info:
        read_env_file(_env_file(tmp_path, text))
    assert needle in str(info.value) and "supersecret" not in str(info.value)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_env_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    code, stdout, stderr = _run(["agent", "spawn", "--env-file", str(_env_file(tmp_path, "A=secret\n", mode))])
    assert code == render.EXIT_CODES[errors.InvalidArgument] and stdout == ""
    assert "accessible by group or others" in stderr and "chmod 600" in stderr and "secret\n" not in stderr


@pytest.mark.parametrize(("text", "needle"), [("A=1\nnot a pair\n", "agent.env:2"), ("9X=1\n", "agent.env:1")])
def test_spawn_with_a_bad_env_file_is_one_error_line_before_anything_is_contacted(
        tmp_path: Path, text: str, needle: str) -> None:
    code, stdout, stderr = _run(["agent", "spawn", "--env-file", str(_env_file(tmp_path, text))])
    assert code == render.EXIT_CODES[errors.InvalidArgument] and stdout == ""
    assert stderr.startswith("error: ") and stderr.count("\n") == 1 and needle in stderr


def test_missing_env_file(tmp_path: Path) -> None:
    code, _, stderr = _run(["agent", "spawn", "--env-file", str(tmp_path / "nope.env")])
    assert code == render.EXIT_CODES[errors.InvalidArgument] and "cannot read env file" in stderr
