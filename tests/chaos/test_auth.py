"""Every wrong credential is refused, and a refused call changes nothing.

Two real site processes (``swarmctl site serve``, each with its own Ray cluster), loopback only:
``tls`` serves TLS with a test CA and token A; ``mtls`` requires a client certificate and token B.
The refusals: no token, a wrong token, the other site's token (UNAUTHENTICATED), plaintext to a
TLS site and a client without a certificate to an mTLS site ("TLS handshake refused"). After each,
the site lists its agents with the right credentials: nothing was spawned. Last, the control
plane's (the chaos folder's ``chaos_plane``) ``swarmctl cluster add`` with a wrong token fails and
registers nothing, while the same command with the right credentials succeeds.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from godel_ray import errors as E
from godel_ray.client.reader import StateReader
from godel_ray.models import SpawnConfig
from godel_ray.rpc.client import GrpcClusterClient
from godel_ray.site.launcher import write_token
from tests.integration.test_sites import Pki, _make_pki

pytestmark = [pytest.mark.chaos, pytest.mark.ray]
T = TypeVar("T")
CALL_TIMEOUT_S = 60.0
CLI_TIMEOUT_S = 120.0


@dataclass
class AuthSites:
    tls: Any  # SiteProcess: TLS + token A
    mtls: Any  # SiteProcess: mTLS + token B
    pki: Pki

    def client(self, site: Any, *, token: str | None = None, scheme: str = "grpcs", ca: bool = True,
               cert: bool | None = None) -> GrpcClusterClient:
        """A client for ``site``; by default with the right token, CA and (for mtls) certificate."""
        cert = (site is self.mtls) if cert is None else cert
        kw: dict[str, Any] = {}
        if ca:
            kw["tls_ca_file"] = str(self.pki.ca)
        if cert:
            kw["tls_cert_file"], kw["tls_key_file"] = str(self.pki.client_cert), str(self.pki.client_key)
        return GrpcClusterClient(f"{scheme}://{site.endpoint}", token=site.token if token is None else token, **kw)


@pytest.fixture(scope="module")
def auth_sites(site_factory: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthSites]:
    pki = _make_pki(tmp_path_factory.mktemp("auth-pki"))
    tls = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    site_tls = site_factory("auth-tls", num_cpus=2, extra=tls)
    site_mtls = site_factory("auth-mtls", num_cpus=2, extra=[*tls, "--tls-client-ca", str(pki.ca)])
    assert site_tls.token != site_mtls.token
    yield AuthSites(tls=site_tls, mtls=site_mtls, pki=pki)


def run(make: Callable[[], Awaitable[T]], timeout_s: float = 120.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(make(), timeout_s)
    return asyncio.run(bounded())


async def _attempt_everything(client: GrpcClusterClient, labels: dict[str, str]) -> list[E.GodelError]:
    """Try a spawn, an exec, a list and a heartbeat; return the error each raised (all must raise)."""
    errors: list[E.GodelError] = []
    attempts: list[Callable[[], Awaitable[Any]]] = [
        lambda: client.spawn(SpawnConfig(labels=labels, cpus=0.05)),
        lambda: _drain(client.exec_stream("ag-intruder", "touch /tmp/godel-pwned")),
        lambda: client.list_agents(),
        lambda: client.heartbeat(),
    ]
    for attempt in attempts:
        try:
            await asyncio.wait_for(attempt(), CALL_TIMEOUT_S)
        except E.GodelError as err:
            errors.append(err)
        else:
            raise AssertionError(f"{client} was served without valid credentials")
    return errors


async def _drain(stream: Any) -> list[Any]:
    return [chunk async for chunk in stream]


def _refused_with_no_side_effect(sites: AuthSites, site: Any, make_intruder: Callable[[], GrpcClusterClient],
                                 expected: type[E.GodelError], match: str) -> None:
    labels = {"intruder": uuid.uuid4().hex[:10]}

    async def scenario() -> tuple[list[E.GodelError], list[Any]]:
        intruder, owner = make_intruder(), sites.client(site)
        try:
            errors = await _attempt_everything(intruder, labels)
            return errors, await owner.list_agents(labels=labels)
        finally:
            await intruder.close()
            await owner.close()

    errors, spawned = run(scenario)
    for err in errors:
        assert isinstance(err, expected), f"{type(err).__name__}: {err}"
        assert match in str(err), str(err)
    assert spawned == [], "a refused spawn left an agent behind"


# --- bearer tokens -------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["no-token", "wrong-token", "other-sites-token"])
@pytest.mark.parametrize("target", ["tls", "mtls"])
def test_bad_tokens_are_unauthenticated_and_change_nothing(auth_sites: AuthSites, case: str, target: str) -> None:
    """Over a valid TLS (or mTLS) channel, a missing, wrong or other site's token is refused with
    UNAUTHENTICATED for spawn, exec, list and heartbeat, and no agent appears."""
    site = getattr(auth_sites, target)
    other = auth_sites.mtls if site is auth_sites.tls else auth_sites.tls
    token = {"no-token": "", "wrong-token": "wrong-" + uuid.uuid4().hex, "other-sites-token": other.token}[case]
    refusal = "missing credential" if case == "no-token" else "invalid bearer token"  # the site's own words
    _refused_with_no_side_effect(auth_sites, site, lambda: auth_sites.client(site, token=token),
                                 E.Unauthenticated, f"{site.endpoint} refused our credential: {refusal}")


# --- transport security --------------------------------------------------------------------------

def test_plaintext_to_a_tls_site_is_refused(auth_sites: AuthSites) -> None:
    """A plaintext client with the right token never reaches the TLS site's service."""
    site = auth_sites.tls
    _refused_with_no_side_effect(auth_sites, site, lambda: auth_sites.client(site, scheme="grpc", ca=False),
                                 E.ClusterUnavailable, f"site {site.endpoint} is unavailable")


def test_tls_without_the_ca_is_refused(auth_sites: AuthSites) -> None:
    """A TLS client that does not trust the site's CA refuses the handshake (right token or not)."""
    site = auth_sites.tls
    _refused_with_no_side_effect(auth_sites, site, lambda: auth_sites.client(site, ca=False),
                                 E.ClusterUnavailable, "TLS handshake refused")


def test_mtls_without_a_client_certificate_is_refused(auth_sites: AuthSites) -> None:
    """The mTLS site refuses a client with the right token and CA but no certificate."""
    site = auth_sites.mtls
    _refused_with_no_side_effect(auth_sites, site, lambda: auth_sites.client(site, cert=False),
                                 E.ClusterUnavailable, "TLS handshake refused")


def test_right_credentials_are_served(auth_sites: AuthSites) -> None:
    """The control case: the right token (and certificate, for mtls) is served on both sites."""
    async def scenario() -> list[str]:
        names = []
        for site in (auth_sites.tls, auth_sites.mtls):
            client = auth_sites.client(site)
            try:
                names.append((await client.heartbeat()).name)
                assert isinstance(await client.list_agents(), list)
            finally:
                await client.close()
        return names

    assert run(scenario) == ["auth-tls", "auth-mtls"]


def test_a_tls_key_readable_by_group_or_others_is_refused(tmp_path: Path) -> None:
    """`swarmctl site serve` refuses a TLS private key that group or others can read, like a token
    file, before it starts anything, saying how to fix it; the key never reaches the output. (The
    module's sites, served with 0600 keys, are the control case.)"""
    pki = _make_pki(tmp_path)
    token = tmp_path / "site.token"
    write_token(token)
    for mode in (0o640, 0o604):
        pki.server_key.chmod(mode)
        result = subprocess.run(
            [sys.executable, "-m", "godel_cli.main", "site", "serve", "--port", "0", "--auth-token-file",
             str(token), "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)],
            check=False, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
        output = result.stdout + result.stderr
        assert result.returncode != 0, output
        assert f"TLS key file {pki.server_key} is accessible by group or others" in output, output
        assert f"chmod 600 {pki.server_key}" in output and "listening on" not in output, output
        assert "PRIVATE KEY" not in output


# --- the control plane ---------------------------------------------------------------------------

def _swarmctl(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "godel_cli.main", *args, "--state-dir", str(state_dir)],
                          check=False, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)


def test_cluster_add_with_a_wrong_token_registers_nothing(auth_sites: AuthSites, chaos_plane: Any,
                                                          tmp_path: Path) -> None:
    """`swarmctl cluster add` probes the site with the token file: a wrong token, another site's
    token, or a missing client certificate (mtls) fails with a message and registers nothing; the
    same command with the right credentials succeeds (so the refusals were about the credentials)."""
    state_dir = chaos_plane.state_dir
    wrong = tmp_path / "wrong.token"
    write_token(wrong, "wrong-" + uuid.uuid4().hex)
    tls, mtls, pki = auth_sites.tls, auth_sites.mtls, auth_sites.pki
    ca = ["--tls-ca", str(pki.ca)]
    cert = ["--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
    before = {c.cluster.id for c in StateReader(state_dir).clusters()}
    refused = {
        "wrong token": _swarmctl(state_dir, "cluster", "add", "impostor-1", f"grpcs://{tls.endpoint}",
                                 "--auth-token-file", str(wrong), *ca),
        "other site's token": _swarmctl(state_dir, "cluster", "add", "impostor-2", f"grpcs://{tls.endpoint}",
                                        "--auth-token-file", str(mtls.token_file), *ca),
        "no client certificate": _swarmctl(state_dir, "cluster", "add", "impostor-3", f"grpcs://{mtls.endpoint}",
                                           "--auth-token-file", str(mtls.token_file), *ca),
    }
    for case, result in refused.items():
        output = result.stdout + result.stderr
        assert result.returncode != 0, f"{case}: {output}"
        assert "error" in output.lower(), f"{case}: {output}"
        assert tls.token not in output and mtls.token not in output, f"{case} leaked a token"
    reader = StateReader(state_dir)
    assert {c.cluster.id for c in reader.clusters()} == before
    assert not any(e.cluster_id.startswith("impostor") for e in reader.events(limit=100_000))

    good = _swarmctl(state_dir, "cluster", "add", "auth-mtls", f"grpcs://{mtls.endpoint}",
                     "--auth-token-file", str(mtls.token_file), *ca, *cert)
    try:
        assert good.returncode == 0, good.stdout + good.stderr
        assert {c.cluster.id for c in StateReader(state_dir).clusters()} == before | {"auth-mtls"}
    finally:  # the site goes away with this module: leave the shared plane as it was
        if "auth-mtls" in {c.cluster.id for c in StateReader(state_dir).clusters()}:
            chaos_plane.proxy.registry.unregister("auth-mtls", force=True)
    assert {c.cluster.id for c in StateReader(state_dir).clusters()} == before
