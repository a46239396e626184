"""What the failure detector reads from the gRPC client, against a real server process (no Ray).

Proves: ``probe()`` is one attempt; a killed site's failures say ``refused`` (connection refused or
reset: the detector's evidence of death) and its channel leaves READY; a frozen (SIGSTOPped) site's
failures never say refused -- they are silence -- and its channel leaves READY once a ping goes
unanswered, then comes back READY when the site resumes; ``channel_changes`` reports each change.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from godel_ray.core.detector import ChannelState, ProbeFailure, probe_failure
from godel_ray.errors import ClusterUnavailable, GodelError
from godel_ray.rpc.client import GrpcClusterClient
from godel_ray.rpc.errors import is_tls_refusal, transport_cause

T = TypeVar("T")
DEADLINE_S = 60.0
POLL_S = 0.05
ROOT = Path(__file__).resolve().parents[2]


class HeartbeatSite:
    def __init__(self, tmp: Path) -> None:
        port_file = tmp / "port"
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.rpc.heartbeat_site", str(port_file)], cwd=ROOT,
                                     start_new_session=True)
        deadline = time.monotonic() + DEADLINE_S
        while not port_file.exists():
            assert self.proc.poll() is None, "the heartbeat site exited"
            assert time.monotonic() < deadline, "the heartbeat site did not start"
            time.sleep(POLL_S)
        self.endpoint = f"127.0.0.1:{port_file.read_text()}"

    def signal(self, sig: signal.Signals) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[HeartbeatSite]:
    s = HeartbeatSite(tmp_path)
    try:
        yield s
    finally:
        s.stop()


async def until(probe: Callable[[], Awaitable[T | None]], what: str) -> T:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        value = await probe()
        if value:
            return value
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"timed out after {DEADLINE_S:g} s waiting for {what}")


async def probe_error(client: GrpcClusterClient) -> GodelError | None:
    try:
        await client.probe()
    except GodelError as exc:
        return exc
    return None


async def watch(client: GrpcClusterClient, seen: list[ChannelState]) -> None:
    async for state in client.channel_changes():
        seen.append(state)


def test_a_killed_site_reads_refused_and_its_channel_drops(site: HeartbeatSite) -> None:
    async def scenario() -> None:
        client = GrpcClusterClient(site.endpoint, token="", heartbeat_timeout_s=1.0)
        seen: list[ChannelState] = []
        watcher = asyncio.create_task(watch(client, seen))
        try:
            assert (await client.probe()).name == "heartbeat-site"
            await until(lambda: _true(client.channel_state() is ChannelState.READY), "a READY channel")
            site.signal(signal.SIGKILL)
            error = await until(lambda: probe_error(client), "a failed probe")
            assert isinstance(error, ClusterUnavailable) and error.fields["cause"] == "refused", error
            assert probe_failure(error) is ProbeFailure.REFUSED
            await until(lambda: _true(client.channel_state() is not ChannelState.READY), "the channel to drop")
            await until(lambda: _true(ChannelState.READY in seen and seen[-1] is not ChannelState.READY),
                        "channel_changes to report the drop")
        finally:
            watcher.cancel()
            await client.close()

    asyncio.run(scenario())


def test_a_frozen_site_reads_silent_never_refused_and_comes_back(site: HeartbeatSite) -> None:
    async def scenario() -> None:
        client = GrpcClusterClient(site.endpoint, token="", heartbeat_timeout_s=1.0)
        kinds: list[ProbeFailure] = []

        async def failed_probe_after_drop() -> bool:
            error = await probe_error(client)
            if error is not None:
                kinds.append(probe_failure(error))
            return error is not None and client.channel_state() is not ChannelState.READY

        try:
            await client.probe()
            site.signal(signal.SIGSTOP)
            await until(failed_probe_after_drop, "a failed probe once the unanswered pings dropped the channel")
            assert kinds and set(kinds) == {ProbeFailure.TIMEOUT}, kinds
            site.signal(signal.SIGCONT)
            await until(lambda: _answered(client), "an answer after SIGCONT")
            await until(lambda: _true(client.channel_state() is ChannelState.READY), "a READY channel again")
        finally:
            await client.close()

    asyncio.run(scenario())


async def _true(value: bool) -> bool:
    return value


async def _answered(client: GrpcClusterClient) -> bool:
    return await probe_error(client) is None


@pytest.mark.parametrize(("details", "cause"), [
    (("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Failed to connect to remote "
     "host: Connection refused"), "refused"),
    ("Stream removed (recvmsg:Connection reset by peer (104))", "refused"),
    (("failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.0.2:1: Failed to connect to remote "
     "host: Network is unreachable"), "unreachable"),
    ("Stream removed (ping timeout)", "silent"),
    (("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: connection attempt timed out "
     "before receiving SETTINGS frame"), "silent"),
    ("Socket closed", ""),
])
def test_transport_cause(details: str, cause: str) -> None:
    assert transport_cause(details) == cause


@pytest.mark.parametrize(("details", "tls_channel", "refused_by_tls"), [
    ("failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.0.2:1: tcp handshaker shutdown", False, False),
    ("failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.0.2:1: tcp handshaker shutdown", True, False),
    (("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Ssl handshake failed: "
     "SSL_ERROR_SSL: CERTIFICATE_VERIFY_FAILED"), True, True),
    ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Ssl handshake failed", False, False),
    ("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: Socket closed", True, True),
])
def test_only_a_tls_channel_is_refused_by_tls(details: str, tls_channel: bool, refused_by_tls: bool) -> None:
    """A partition's aborted TCP connect ("tcp handshaker shutdown") is not a TLS refusal: read as one, it
    made a silent site look alive (the site's TLS layer answering) to the failure detector."""
    assert is_tls_refusal(details, tls_channel) is refused_by_tls
