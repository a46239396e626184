"""Every YAML in ``cluster-configs/`` validates through the model that reads it, and broken ones fail
with a message naming the field.

- ``site-*.yaml``: ``SiteConfig.load`` (what ``swarmctl site serve --config`` uses);
- ``cluster-*.yaml`` / ``clusters-*.yaml``: ``load_cluster_file`` (what ``swarmctl cluster add -f`` uses);
- ``kuberay-*.yaml``: a KubeRay ``RayCluster`` (plus its ``Service``), checked by a small model of the
  fields we rely on; its embedded ``swarmctl site serve`` command is parsed by the real CLI.

No Ray, no sockets.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from godel_cli import site as site_cli
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from typer.testing import CliRunner

from godel_ray.core.endpoint import parse_endpoint
from godel_ray.errors import InvalidArgument
from godel_ray.inputs import describe_validation_error, load_cluster_file
from godel_ray.models import Cluster
from godel_ray.site import serve as site_server
from godel_ray.site.serve import SiteConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "cluster-configs"
ALL_YAML = sorted(CONFIG_DIR.glob("*.yaml")) + sorted(CONFIG_DIR.glob("*.yml"))
SITE_FILES = [p for p in ALL_YAML if p.name.startswith("site-")]
REGISTRATION_FILES = [p for p in ALL_YAML if p.name.startswith(("cluster-", "clusters-"))]
KUBERAY_FILES = [p for p in ALL_YAML if p.name.startswith("kuberay-")]
SITE_COMMAND = ("swarmctl", "site", "serve")


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def test_every_yaml_has_a_validator() -> None:
    assert SITE_FILES and REGISTRATION_FILES and KUBERAY_FILES, f"missing configs in {CONFIG_DIR}"
    unchecked = set(ALL_YAML) - set(SITE_FILES) - set(REGISTRATION_FILES) - set(KUBERAY_FILES)
    assert not unchecked, f"name these site-*, cluster(s)-* or kuberay-* so a test validates them: {unchecked}"


# --------------------------------------------------------------- site configs


@pytest.mark.parametrize("path", SITE_FILES, ids=_ids(SITE_FILES))
def test_site_config_validates(path: Path) -> None:
    config = SiteConfig.load(path)
    assert config.auth_token_file or config.tls_client_ca  # a credential, as serve requires
    if config.num_gpus:
        assert config.gpu_type, "simulated GPUs need a type for accelerator_type scheduling"
    if config.host not in ("127.0.0.1", "localhost", "::1"):
        assert config.tls, f"{path.name}: a non-loopback site must use TLS"


def test_site_gpu_cloud_is_an_a100_site() -> None:
    config = SiteConfig.load(CONFIG_DIR / "site-gpu-cloud.yaml")
    assert (config.gpu_type, config.num_gpus >= 1, config.cost_per_hour > 0) == ("nvidia-a100", True, True)


def test_site_tls_is_mtls_on_an_existing_ray_cluster() -> None:
    config = SiteConfig.load(CONFIG_DIR / "site-tls.yaml")
    assert config.tls and config.tls_client_ca and config.ray_address == "auto"


def test_flags_override_a_site_config() -> None:
    config = SiteConfig.load(CONFIG_DIR / "site-cpu-cheap.yaml", port=0, region="eu-north")
    assert (config.port, config.region, config.name) == (0, "eu-north", "cpu-cheap")


@pytest.mark.parametrize(("text", "field"), [
    ("prot: 50051\n", "prot"),                      # unknown key
    ("num_gpus: many\n", "num_gpus"),               # wrong type
    ("cost_per_hour: -1\n", "cost_per_hour"),       # out of range
])
def test_broken_site_config_names_the_field(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "site-broken.yaml"
    path.write_text("name: broken\nauth_token_file: /x.token\n" + text)
    with pytest.raises(InvalidArgument) as info:
        SiteConfig.load(path)
    assert field in str(info.value) and str(path) in str(info.value)


# --------------------------------------------------------------- cluster registrations


@pytest.mark.parametrize("path", REGISTRATION_FILES, ids=_ids(REGISTRATION_FILES))
def test_registration_file_validates(path: Path) -> None:
    clusters = load_cluster_file(path)
    assert clusters and all(isinstance(c, Cluster) for c in clusters)
    for cluster in clusters:
        assert cluster.endpoint and cluster.auth_token_file
        endpoint = parse_endpoint(cluster.endpoint)
        if cluster.tls_cert_file:
            assert endpoint.tls, f"{cluster.id}: a client certificate needs a TLS endpoint"
        if cluster.capabilities.gpu_types:
            assert cluster.capabilities.gpu


def test_clusters_all_is_a_list_with_an_mtls_site() -> None:
    clusters = {c.id: c for c in load_cluster_file(CONFIG_DIR / "clusters-all.yaml")}
    assert len(clusters) >= 2
    assert any(c.tls_cert_file and c.tls_key_file and c.tls_ca_file for c in clusters.values())


def test_registrations_match_the_sites_they_register() -> None:
    """A registration named like a site config dials that site's port and reports its region and GPUs."""
    sites = {cfg.name: cfg for cfg in (SiteConfig.load(p) for p in SITE_FILES)}
    matched = 0
    for path in REGISTRATION_FILES:
        for cluster in load_cluster_file(path):
            site = sites.get(cluster.id)
            if site is None or site.ray_address:  # the TLS site is a template for another machine
                continue
            matched += 1
            assert cluster.endpoint is not None
            assert parse_endpoint(cluster.endpoint).port == site.port, (path.name, cluster.id)
            assert cluster.region == site.region, (path.name, cluster.id)
            assert (site.gpu_type in cluster.capabilities.gpu_types) if site.gpu_type else not cluster.capabilities.gpu
    assert matched >= 2


@pytest.mark.parametrize(("text", "field"), [
    ("name: gpu-x\nendpoint: 127.0.0.1:1\nendpiont: 127.0.0.1:2\n", "endpiont"),          # unknown key
    ("name: gpu-x\nendpoint: 127.0.0.1:1\nmax_agents: lots\n", "max_agents"),              # wrong type
    ("clusters:\n  - name: a\n    endpoint: 127.0.0.1:1\n    cost_per_hour: cheap\n", "clusters[0].cost_per_hour"),
    ("name: gpu-x\nendpoint: ftp://host:1\n", "endpoint"),
])
def test_broken_registration_names_the_field(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "cluster-broken.yaml"
    path.write_text(text)
    with pytest.raises(InvalidArgument) as info:
        load_cluster_file(path)
    assert f"{field}:" in str(info.value) and str(path) in str(info.value)


# --------------------------------------------------------------- the KubeRay manifest
# A model of the fields we rely on. Kubernetes objects carry many more fields: pod specs and
# containers allow them; the RayCluster spec and its groups list KubeRay v1's fields and forbid others,
# so a misspelt group is caught here, not by a silently missing worker pool.


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Resources(_Open):
    requests: dict[str, str | int | float] = Field(default_factory=dict)
    limits: dict[str, str | int | float] = Field(default_factory=dict)


class EnvVar(_Open):
    name: str
    value: str | None = None


class Port(_Open):
    container_port: int = Field(alias="containerPort", ge=1, le=65535)
    name: str | None = None


class Mount(_Open):
    name: str
    mount_path: str = Field(alias="mountPath")


class Container(_Open):
    name: str
    image: str
    command: list[str] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list)
    env: list[EnvVar] = Field(default_factory=list)
    ports: list[Port] = Field(default_factory=list)
    resources: Resources = Field(default_factory=Resources)
    volume_mounts: list[Mount] = Field(default_factory=list, alias="volumeMounts")


class SecretSource(_Open):
    secret_name: str = Field(alias="secretName")
    default_mode: int | None = Field(None, alias="defaultMode")


class Volume(_Open):
    name: str
    secret: SecretSource | None = None


class PodSpec(_Open):
    containers: list[Container] = Field(min_length=1)
    volumes: list[Volume] = Field(default_factory=list)


class PodTemplate(_Open):
    spec: PodSpec


class HeadGroupSpec(_Closed):
    ray_start_params: dict[str, str] = Field(default_factory=dict, alias="rayStartParams")
    template: PodTemplate
    service_type: str | None = Field(None, alias="serviceType")
    head_service: dict[str, Any] | None = Field(None, alias="headService")
    enable_ingress: bool | None = Field(None, alias="enableIngress")


class WorkerGroupSpec(_Closed):
    group_name: str = Field(alias="groupName")
    replicas: int = Field(ge=0)
    min_replicas: int = Field(0, ge=0, alias="minReplicas")
    max_replicas: int = Field(ge=0, alias="maxReplicas")
    ray_start_params: dict[str, str] = Field(default_factory=dict, alias="rayStartParams")
    template: PodTemplate
    idle_timeout_seconds: int | None = Field(None, alias="idleTimeoutSeconds")
    num_of_hosts: int | None = Field(None, alias="numOfHosts")
    suspend: bool | None = None
    scale_strategy: dict[str, Any] | None = Field(None, alias="scaleStrategy")


class RayClusterSpec(_Closed):
    ray_version: str = Field(alias="rayVersion")
    head_group_spec: HeadGroupSpec = Field(alias="headGroupSpec")
    worker_group_specs: list[WorkerGroupSpec] = Field(default_factory=list, alias="workerGroupSpecs")
    enable_in_tree_autoscaling: bool | None = Field(None, alias="enableInTreeAutoscaling")
    autoscaler_options: dict[str, Any] | None = Field(None, alias="autoscalerOptions")
    head_service_annotations: dict[str, str] | None = Field(None, alias="headServiceAnnotations")
    suspend: bool | None = None
    managed_by: str | None = Field(None, alias="managedBy")
    gcs_fault_tolerance_options: dict[str, Any] | None = Field(None, alias="gcsFaultToleranceOptions")


class Metadata(_Open):
    name: str
    annotations: dict[str, str] = Field(default_factory=dict)


class RayCluster(_Closed):
    api_version: str = Field(alias="apiVersion")
    kind: str
    metadata: Metadata
    spec: RayClusterSpec

    @field_validator("api_version")
    @classmethod
    def _api(cls, value: str) -> str:
        if value != "ray.io/v1":
            raise ValueError(f"expected ray.io/v1, got {value!r}")
        return value


class ServicePort(_Open):
    port: int
    target_port: int | str = Field(alias="targetPort")


class ServiceSpec(_Open):
    selector: dict[str, str]
    ports: list[ServicePort] = Field(min_length=1)


class Service(_Open):
    kind: str
    metadata: Metadata
    spec: ServiceSpec


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _ray_cluster(doc: dict[str, Any]) -> RayCluster:
    try:
        return RayCluster.model_validate(doc)
    except ValidationError as exc:
        raise InvalidArgument(f"RayCluster: {describe_validation_error(exc)}") from None


def _site_argv(container: Container) -> list[str]:
    """The options of the ``swarmctl site serve`` in the container's shell command line."""
    script = " ".join(container.command[3:] + container.args) if container.command[:1] == ["/bin/bash"] \
        else " ".join(container.command + container.args)
    for part in re.split(r"&&|;|\|\|", script):
        words = shlex.split(part)
        if words[:1] == ["exec"]:
            words = words[1:]
        if tuple(words[:3]) == SITE_COMMAND:
            return words[3:]
    raise AssertionError(f"no `swarmctl site serve` in the {container.name} container's command")


def _swarmctl_site() -> typer.Typer:
    """A root app with ``site`` mounted exactly as ``godel_cli.main`` mounts it."""
    root = typer.Typer()
    root.add_typer(site_cli.app, name="site")
    return root


def _serve_command() -> Any:
    """The click command behind ``swarmctl site serve`` (typer ships its own click: duck-typed)."""
    group = typer.main.get_command(_swarmctl_site())
    site_group = group.get_command(group.make_context("swarmctl", ["site"]), "site")  # type: ignore[attr-defined]
    serve = site_group.get_command(site_group.make_context("site", ["serve"]), "serve")
    assert serve is not None and serve.params
    return serve


def _site_config_from_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> SiteConfig:
    """Run the real ``swarmctl site serve`` with ``argv``, stopping just before it serves."""
    captured: list[SiteConfig] = []

    def fake_run(config: SiteConfig) -> int:
        captured.append(config)
        return 0

    monkeypatch.setattr(site_server, "run", fake_run)
    result = CliRunner().invoke(_swarmctl_site(), ["site", "serve", *argv])
    assert result.exit_code == 0, result.output
    return captured[0]


@pytest.mark.parametrize("path", KUBERAY_FILES, ids=_ids(KUBERAY_FILES))
def test_kuberay_manifest(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = _documents(path)
    clusters = [_ray_cluster(d) for d in docs if d.get("kind") == "RayCluster"]
    assert len(clusters) == 1
    cluster = clusters[0]
    assert cluster.metadata.annotations.get("ray.io/overwrite-container-cmd") == "true", \
        "without this annotation KubeRay replaces our head command with its own `ray start`"

    head_pod = cluster.spec.head_group_spec.template.spec
    head = head_pod.containers[0]
    argv = _site_argv(head)

    # every option is one the real `swarmctl site serve` has
    serve = _serve_command()
    known = {opt for param in serve.params for opt in param.opts}
    used = {word.split("=", 1)[0] for word in argv if word.startswith("--")}
    assert used <= known, f"unknown swarmctl site serve options: {sorted(used - known)}"
    serve.make_context("serve", list(argv))  # types and arity parse

    config = _site_config_from_cli(argv, monkeypatch)
    assert config.ray_address == "auto", "the site attaches to the Ray head in its own pod"
    assert config.tls and config.tls_client_ca, "a site reachable from outside the pod uses TLS + mTLS"

    # the files the site reads are mounted from Secrets, not world-readable
    mounts = {m.mount_path.rstrip("/"): m.name for m in head.volume_mounts}
    secrets = {v.name: v.secret for v in head_pod.volumes if v.secret is not None}
    for file in (config.auth_token_file, config.tls_cert, config.tls_key, config.tls_client_ca):
        assert file is not None
        volume = mounts.get(str(Path(file).parent))
        assert volume in secrets, f"{file} is not in a volume mounted from a Secret"
        mode = secrets[volume].default_mode  # type: ignore[union-attr]
        assert mode is not None and mode & 0o077 == 0, f"{file}: the site refuses group/other-readable files"
    assert config.port in {p.container_port for p in head.ports}

    # Ray token auth on every node; a GPU group that Ray schedules nvidia-a100 agents on
    for group_pod in [head_pod] + [g.template.spec for g in cluster.spec.worker_group_specs]:
        env = {e.name: e.value for e in group_pod.containers[0].env}
        assert env.get("RAY_AUTH_MODE") == "token" and env.get("RAY_AUTH_TOKEN_PATH")
    gpu_groups = [g for g in cluster.spec.worker_group_specs
                  if "nvidia.com/gpu" in g.template.spec.containers[0].resources.limits]
    assert gpu_groups, "no worker group with nvidia.com/gpu limits"
    for group in gpu_groups:
        assert "accelerator_type:nvidia-a100" in group.ray_start_params.get("resources", ""), group.group_name
        assert "KUBERAY_GEN_RAY_START_CMD" in " ".join(group.template.spec.containers[0].args)

    # the Service exposes the site's port on the head pod of this cluster
    services = [Service.model_validate(d) for d in docs if d.get("kind") == "Service"]
    assert any(s.spec.selector.get("ray.io/cluster") == cluster.metadata.name
               and s.spec.selector.get("ray.io/node-type") == "head"
               and config.port in {p.target_port for p in s.spec.ports} for s in services)


def _kuberay_doc() -> dict[str, Any]:
    return next(d for d in _documents(KUBERAY_FILES[0]) if d.get("kind") == "RayCluster")


def test_broken_kuberay_manifest_names_the_field() -> None:
    doc = _kuberay_doc()
    doc["spec"]["workerGroupSpec"] = doc["spec"].pop("workerGroupSpecs")  # misspelt: no workers at all
    with pytest.raises(InvalidArgument, match=r"spec\.workerGroupSpec: unknown key"):
        _ray_cluster(doc)

    doc = _kuberay_doc()
    doc["spec"]["headGroupSpec"]["rayStartParams"]["port"] = 6379  # KubeRay wants strings here
    with pytest.raises(InvalidArgument, match=r"spec\.headGroupSpec\.rayStartParams\.port"):
        _ray_cluster(doc)


def test_unknown_site_option_is_refused_by_the_cli() -> None:
    """The check above is only as good as the CLI's own parsing: a misspelt option does not slip through."""
    known = {opt for param in _serve_command().params for opt in param.opts}
    assert {"--ray-address", "--auth-token-file", "--tls-client-ca", "--cost"} <= known
    result = CliRunner().invoke(_swarmctl_site(), ["site", "serve", "--auth-token", "/x"])
    assert result.exit_code == 2 and "--auth-token" in result.output
