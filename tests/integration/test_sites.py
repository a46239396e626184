"""Two real sites, each a `swarmctl site serve` process with its own Ray cluster, over real gRPC.

Sites are shared at module scope to keep the runtime small: ``cpu`` (4 CPUs, no GPU) serves TLS
with a self-signed CA; ``gpu`` (2 simulated ``nvidia-a100`` GPUs) requires mTLS. The last test
stops the ``cpu`` site with SIGTERM and checks nothing of it is left.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from godel_ray import errors as E
from godel_ray.core.cluster_client import collect
from godel_ray.models import AgentStatus, SpawnConfig
from godel_ray.raykit.heads import session_pids
from godel_ray.rpc.client import GrpcClusterClient
from tests.helpers import ECHO_CHILD, process_gone

pytestmark = pytest.mark.ray
T = TypeVar("T")
GPU_TYPE = "nvidia-a100"
POLL_DEADLINE_S = 30.0


# --- TLS material ---------------------------------------------------------------------------------

@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _make_pki(tmp: Path) -> Pki:
    """A self-signed CA, a server certificate for 127.0.0.1/localhost, and a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def write_key(k: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        path.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        path.chmod(0o600)
        return path

    def write_cert(cert: x509.Certificate, path: Path) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = key()
    ca = (x509.CertificateBuilder().subject_name(name("godel test CA")).issuer_name(name("godel test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))

    def leaf(cn: str, usage: x509.ObjectIdentifier, san: list[x509.GeneralName]
             ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        k = key()
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
                   .public_key(k.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), k

    server, server_key = leaf("localhost", ExtendedKeyUsageOID.SERVER_AUTH, [
        x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client, client_key = leaf("godel-control-plane", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    return Pki(ca=write_cert(ca, tmp / "ca.pem"),
               server_cert=write_cert(server, tmp / "server.pem"), server_key=write_key(server_key, tmp / "server.key"),
               client_cert=write_cert(client, tmp / "client.pem"), client_key=write_key(client_key, tmp / "client.key"))


# --- sites ------------------------------------------------------------------------------------------

@dataclass
class Sites:
    cpu: Any  # conftest.SiteProcess
    gpu: Any
    pki: Pki

    def cpu_client(self, **kw: Any) -> GrpcClusterClient:
        kw.setdefault("tls_ca_file", str(self.pki.ca))
        return GrpcClusterClient(f"grpcs://{self.cpu.endpoint}", token=self.cpu.token, cluster_id="cpu", **kw)

    def gpu_client(self, **kw: Any) -> GrpcClusterClient:
        kw.setdefault("tls_ca_file", str(self.pki.ca))
        kw.setdefault("tls_cert_file", str(self.pki.client_cert))
        kw.setdefault("tls_key_file", str(self.pki.client_key))
        return GrpcClusterClient(f"grpcs://{self.gpu.endpoint}", token=self.gpu.token, cluster_id="gpu", **kw)


@pytest.fixture(scope="module")
def sites(site_factory: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sites]:
    pki = _make_pki(tmp_path_factory.mktemp("pki"))
    tls = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    cpu = site_factory("cpu", num_cpus=4, extra=tls)
    gpu = site_factory("gpu", num_cpus=4, num_gpus=2, gpu_type=GPU_TYPE,
                       extra=[*tls, "--tls-client-ca", str(pki.ca), "--region", "gpu-east", "--cost", "3.5"])
    yield Sites(cpu=cpu, gpu=gpu, pki=pki)


def run(make: Callable[[], Awaitable[T]], timeout_s: float = 120.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(make(), timeout_s)
    return asyncio.run(bounded())


def _pid_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def _poll(check: Callable[[], bool], deadline_s: float = POLL_DEADLINE_S) -> bool:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


# --- refusals before anything starts (no Ray needed) ------------------------------------------------

def _serve(args: list[str]) -> Any:
    from godel_cli.main import app
    from typer.testing import CliRunner

    return CliRunner().invoke(app, ["site", "serve", *args])


@pytest.mark.parametrize(("case", "reason"), [
    ("public-host", "non-loopback host 0.0.0.0 without TLS"),
    ("readable-token", "accessible by group or others"),
    ("no-credential", "needs a credential"),
    ("cert-without-key", "--tls-cert and --tls-key go together"),
    ("unknown-config-key", "bogus_option: Extra inputs are not permitted"),
    ("missing-token-file", "cannot read token file"),
])
def test_site_serve_refuses_unsafe_or_wrong_setups(tmp_path: Path, case: str, reason: str) -> None:
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    token.chmod(0o600)
    base = ["--port", "0", "--auth-token-file", str(token)]
    args = {
        "public-host": [*base, "--host", "0.0.0.0"],
        "readable-token": [*base],
        "no-credential": ["--port", "0"],
        "cert-without-key": [*base, "--tls-cert", str(token)],
        "unknown-config-key": [*base, "--config", str(tmp_path / "site.yaml")],
        "missing-token-file": ["--port", "0", "--auth-token-file", str(tmp_path / "nope")],
    }[case]
    if case == "readable-token":
        token.chmod(0o644)
    (tmp_path / "site.yaml").write_text("name: a\nbogus_option: 1\n")
    result = _serve(args)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert reason in lines[0]
    assert "secret-token" not in result.output


def test_site_config_yaml_is_overridden_by_flags(tmp_path: Path) -> None:
    from godel_ray.site.serve import SiteConfig

    path = tmp_path / "site.yaml"
    path.write_text("name: gpu-east\nregion: us-east\nport: 7000\nauth_token_file: /t\nnum_gpus: 2\n"
                    "gpu_type: nvidia-a100\ncost_per_hour: 3.5\n")
    config = SiteConfig.load(path, port=0, region=None, max_agents=7)
    assert (config.name, config.region, config.port, config.max_agents, config.num_gpus, config.gpu_type,
            config.cost_per_hour, config.host) == ("gpu-east", "us-east", 0, 7, 2, "nvidia-a100", 3.5,
                                                   "127.0.0.1")


# --- GPU placement --------------------------------------------------------------------------------

def test_gpu_agent_lands_on_the_gpu_site_and_sees_its_gpu(sites: Sites) -> None:
    async def scenario() -> tuple[Any, Any]:
        client = sites.gpu_client()
        try:
            agent, _ = await client.spawn(SpawnConfig(gpu_type=GPU_TYPE, labels={"t": "gpu"}))
            result = collect([c async for c in client.exec_stream(agent.id, "echo $CUDA_VISIBLE_DEVICES")])
            await client.kill(agent.id)
            return agent, result
        finally:
            await client.close()

    agent, result = run(scenario)
    assert result.exit_code == 0
    assert result.stdout.strip() != "", "Ray should set CUDA_VISIBLE_DEVICES for a GPU agent"
    assert agent.config.gpu_type == GPU_TYPE


def test_gpu_request_on_the_cpu_site_is_refused_with_a_reason(sites: Sites) -> None:
    async def scenario() -> E.GodelError:
        client = sites.cpu_client()
        try:
            with pytest.raises(E.GodelError) as info:
                await client.spawn(SpawnConfig(gpu_type=GPU_TYPE, labels={"t": "refused"}))
            assert await client.list_agents(labels={"t": "refused"}) == []
            return info.value
        finally:
            await client.close()

    err = run(scenario)
    assert isinstance(err, (E.ResourceExhausted, E.FailedPrecondition, E.InvalidArgument))
    assert GPU_TYPE in str(err) or "GPU" in str(err).upper()


def test_heartbeat_capacity_reflects_gpus(sites: Sites) -> None:
    async def scenario() -> tuple[Any, Any]:
        cpu, gpu = sites.cpu_client(), sites.gpu_client()
        try:
            return await cpu.heartbeat(), await gpu.heartbeat()
        finally:
            await cpu.close()
            await gpu.close()

    cpu_cap, gpu_cap = run(scenario)
    assert gpu_cap.name == "gpu" and gpu_cap.region == "gpu-east" and gpu_cap.cost_per_hour == 3.5
    assert gpu_cap.total_gpus == 2 and GPU_TYPE in gpu_cap.gpu_types
    assert cpu_cap.name == "cpu" and cpu_cap.total_gpus == 0 and cpu_cap.gpu_types == []
    assert cpu_cap.total_cpus == 4


# --- exec ----------------------------------------------------------------------------------------

def test_exec_streams_output_before_the_command_ends(sites: Sites, tmp_path: Path) -> None:
    # The command cannot finish until the test opens the gate, which it does only after the first
    # chunk arrived: the chunk must have been streamed while the command was still running. The gate
    # is a port on loopback that starts listening: the agent's sandbox shows it none of the test's files.
    gate = socket.socket()
    gate.bind(("127.0.0.1", 0))
    port = gate.getsockname()[1]
    command = f"echo first; until (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; do sleep 0.05; done; echo second"

    async def scenario() -> list[Any]:
        client = sites.cpu_client()
        chunks = []
        try:
            agent, _ = await client.spawn(SpawnConfig(labels={"t": "stream"}))
            async for chunk in client.exec_stream(agent.id, command, timeout_s=60):
                if not chunks:
                    gate.listen()
                chunks.append(chunk)
            await client.kill(agent.id)
        finally:
            await client.close()
        return chunks

    try:
        chunks = run(scenario)
    finally:
        gate.close()
    assert chunks[0].data == "first\n" and chunks[0].result is None
    result = collect(chunks)
    assert (result.exit_code, result.timed_out, result.stdout) == (0, False, "first\nsecond\n")


def test_a_command_over_its_timeout_is_killed_with_its_children(sites: Sites) -> None:
    async def scenario() -> Any:
        client = sites.cpu_client()
        try:
            agent, _ = await client.spawn(SpawnConfig(labels={"t": "timeout"}))
            result = collect([c async for c in client.exec_stream(
                agent.id, f"sleep 300 & {ECHO_CHILD}; sleep 300; wait", timeout_s=1)])
            await client.kill(agent.id)
            return result
        finally:
            await client.close()

    result = run(scenario)
    assert result.timed_out
    child = result.stdout.strip()
    assert _poll(lambda: process_gone(child)), f"background child {child} survived the timeout"


# --- migration between sites ---------------------------------------------------------------------

def test_export_from_one_site_and_import_on_the_other(sites: Sites) -> None:
    labels = {"t": "move", "run": uuid.uuid4().hex[:8]}

    async def scenario() -> None:
        src, dst = sites.cpu_client(), sites.gpu_client()
        try:
            agent, _ = await src.spawn(SpawnConfig(model="m-move", labels=labels))
            wrote = collect([c async for c in src.exec_stream(agent.id, "mkdir -p d && echo payload > d/file.txt")])
            assert wrote.exit_code == 0
            snapshot = await src.export(agent.id, freeze=True)
            target = snapshot.agent.model_copy(update={"epoch": snapshot.agent.epoch + 1})
            moved = await dst.import_(snapshot.model_copy(update={"agent": target}))
            assert moved.id == agent.id and moved.epoch == agent.epoch + 1 and moved.cluster_id == "gpu"
            await src.kill(agent.id, reason="migrated")

            status = await dst.status(agent.id)
            assert status.config.labels == labels and status.config.model == "m-move"
            assert status.status == AgentStatus.RUNNING
            read = collect([c async for c in dst.exec_stream(agent.id, "cat d/file.txt", epoch=moved.epoch)])
            assert read.stdout == "payload\n"
            with pytest.raises(E.StaleEpoch):
                [c async for c in dst.exec_stream(agent.id, "true", epoch=agent.epoch)]
            again = await dst.export(agent.id)
            commands = [e.command for e in again.journal]
            assert commands[0] == "mkdir -p d && echo payload > d/file.txt"
            assert "cat d/file.txt" in commands
            await dst.kill(agent.id)
        finally:
            await src.close()
            await dst.close()

    run(scenario, timeout_s=180)


# --- TLS -------------------------------------------------------------------------------------------

def test_tls_client_with_the_ca_is_served_and_without_it_is_refused(sites: Sites) -> None:
    async def scenario() -> None:
        good = sites.cpu_client()
        bad = GrpcClusterClient(f"grpcs://{sites.cpu.endpoint}", token=sites.cpu.token)  # system CAs only
        plain = GrpcClusterClient(sites.cpu.endpoint, token=sites.cpu.token)
        try:
            assert (await good.heartbeat()).name == "cpu"
            with pytest.raises(E.ClusterUnavailable, match="TLS handshake refused"):
                await bad.heartbeat()
            with pytest.raises(E.ClusterUnavailable):
                await plain.heartbeat()
        finally:
            for c in (good, bad, plain):
                await c.close()

    run(scenario)


def test_mtls_refuses_a_client_without_a_certificate(sites: Sites) -> None:
    async def scenario() -> None:
        no_cert = GrpcClusterClient(f"grpcs://{sites.gpu.endpoint}", token=sites.gpu.token,
                                    tls_ca_file=str(sites.pki.ca))
        with_cert = sites.gpu_client()
        try:
            with pytest.raises(E.ClusterUnavailable, match="TLS handshake refused"):
                await no_cert.list_agents()
            assert isinstance(await with_cert.list_agents(), list)
        finally:
            await no_cert.close()
            await with_cert.close()

    run(scenario)


# --- shutdown (last: it stops the cpu site) -------------------------------------------------------

def test_sigterm_stops_the_site_cleanly(sites: Sites) -> None:
    site = sites.cpu
    head_sid = site.head_sid
    assert head_sid and session_pids(head_sid), "the site should have reported its Ray head session"

    async def scenario() -> tuple[str, int | None]:
        client = sites.cpu_client()
        agent, _ = await client.spawn(SpawnConfig(labels={"t": "sigterm"}))
        stream = client.exec_stream(agent.id, f"sleep 300 & {ECHO_CHILD}; wait", timeout_s=600)
        child = (await stream.__anext__()).data.strip()
        assert not process_gone(child)
        # SIGTERM while the command runs and the stream is open
        site.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = await asyncio.to_thread(site.proc.wait, 60)
        except subprocess.TimeoutExpired:
            code = None
        try:  # the stream ends: with the killed command's result or an error, either is fine
            async for _ in stream:
                pass
        except E.GodelError:
            pass
        await client.close()
        return child, code

    child, code = run(scenario)
    if code is None:
        site.kill()
        pytest.fail("site did not stop within 60 s of SIGTERM:\n" + "".join(site.output)[-2000:])
    assert code == 0, "".join(site.output)[-2000:]
    assert _poll(lambda: not session_pids(site.proc.pid)), session_pids(site.proc.pid)
    assert _poll(lambda: not session_pids(head_sid)), session_pids(head_sid)
    assert _poll(lambda: process_gone(child)), f"the agent's command {child} outlived the site"
