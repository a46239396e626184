"""Shared fixtures: real Ray heads and real site servers as separate processes on loopback.

Every fixture that starts a process stops it: by its session id (SIGTERM, wait, SIGKILL), never
with ``ray stop``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings

from godel_ray.raykit import heads
from godel_ray.site.launcher import SiteProcess, start_site, write_token
from tests.helpers import in_ci

__all__ = ["SiteProcess", "start_site", "write_token"]

# Under CI, hypothesis draws the same examples every run (a red CI run is reproducible, not bad luck);
# locally every run draws new ones. `settings(...)` objects made later inherit this profile.
hypothesis_settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if in_ci():
    hypothesis_settings.load_profile("ci")


@pytest.fixture(scope="module")
def site_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Start sites on demand; every one is stopped at the end of the test module (memory: ~1 GB each)."""
    started: list[SiteProcess] = []
    base = tmp_path_factory.mktemp("sites")

    def factory(name: str, **kwargs: object) -> SiteProcess:
        site = start_site(base, name, **kwargs)  # type: ignore[arg-type]
        started.append(site)
        return site

    yield factory
    for site in started:
        site.terminate(timeout_s=20)


@pytest.fixture(scope="session")
def ray_head() -> Iterator[heads.RayHead]:
    """One private Ray head for tests that host agents in-process (runtime tier)."""
    head = heads.start_head(num_cpus=8, num_gpus=2, gpu_type="nvidia-a100",
                                 auth_token=secrets.token_hex(16))
    yield head
    head.stop()


@pytest.fixture(scope="module")
def ray_client(ray_head: heads.RayHead) -> Iterator[heads.RayHead]:
    """This test process attached to ``ray_head`` as a Ray driver (token auth handled), detached after."""
    import ray

    from godel_ray.raykit import rayapi

    saved = {key: os.environ.get(key) for key in ray_head.env()}
    rayapi.init_client(ray_head.address, ray_head.env())
    try:
        yield ray_head
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """One real PostgreSQL server for the session (about 2 s to start), deleted after.

    Its data dir is a fresh ``mkdtemp`` rather than pytest's tmp dir: run as root, pgserver starts
    the server as another user, who must be able to reach the directory (pytest keeps its base
    dir 0700 and re-tightens it whenever another pytest run starts).
    """
    import tempfile

    try:
        import pgserver
        import psycopg

        server = pgserver.get_server(tempfile.mkdtemp(prefix="godel-pg-"), cleanup_mode="delete")
        with psycopg.connect(server.get_uri(), autocommit=True) as admin:
            admin.execute("ALTER SYSTEM SET fsync = off")  # a throwaway server: speed over durability
            admin.execute("SELECT pg_reload_conf()")
    except Exception as exc:  # noqa: BLE001 - any reason it cannot start is reported
        reason = f"PostgreSQL could not start here (pgserver): {type(exc).__name__}: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    yield server
    server.cleanup()


@contextlib.contextmanager
def two_control_planes(tmp_path: Path, pg_server: Any, **env: str) -> Iterator[tuple[Path, Path]]:
    """The state dirs of two control planes (the test starts them) on one PostgreSQL, in a fresh
    schema (no other test's lease or rows), with ``env`` set for both; their heads are stopped after."""
    import psycopg

    from godel_ray.control import controlplane
    from godel_ray.raykit import rayapi

    schema = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_server.get_uri(), autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    a, b = tmp_path / "plane-a", tmp_path / "plane-b"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GODEL_LOCAL_WARM_POOL", "0")
        patch.setenv("GODEL_STATE_URL", f"{pg_server.get_uri()}&options=-csearch_path%3D{schema}")
        for key, value in env.items():
            patch.setenv(key, value)
        try:
            yield a, b
        finally:
            rayapi.detach()
            for root in (a, b):
                head = controlplane.read_head(root)
                if head is not None:
                    head.stop()
