"""The raw floors: what plain Ray, plain gRPC and a plain pipe do on this machine.

Needs ``ray`` initialised (the floors run on the same Ray cluster as the local agents). The gRPC
server is in-process on loopback, with a generic handler and bytes serializers (no proto).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import ray

SERVICE = "bench.Raw"


class RawActor:
    """The floor's actor: returns a value, runs ``bash -c true``, receives bytes."""

    def ping(self) -> int:
        return 1

    def shell(self) -> int:
        return subprocess.run(["bash", "-c", "true"], check=False).returncode

    def size(self, data: bytes) -> int:
        return len(data)

    def pid(self) -> int:
        return os.getpid()


def raw_actor(cpus: float = 0.01) -> Any:
    return ray.remote(RawActor).options(num_cpus=cpus).remote()


def timed(fn: Callable[[], Any], n: int, warmup: int = 2) -> list[float]:
    """``n`` wall times of ``fn()`` in seconds (after ``warmup`` untimed calls)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def actor_creation(n: int) -> list[float]:
    """Create a raw actor and wait for its first call (the floor of a cold spawn)."""
    out = []
    for _ in range(n):
        start = time.perf_counter()
        actor = raw_actor()
        ray.get(actor.ping.remote())
        out.append(time.perf_counter() - start)
        ray.kill(actor)
    return out


def pipe_throughput(command: str, n: int) -> tuple[list[float], int]:
    """MB/s of ``command``'s stdout read through a plain pipe; also the byte count."""
    rates, size = [], 0
    for _ in range(n):
        start = time.perf_counter()
        out = subprocess.run(["bash", "-c", command], stdout=subprocess.PIPE, check=True).stdout
        size = len(out)
        rates.append(size / 1e6 / (time.perf_counter() - start))
    return rates, size


def ray_transfer(actor: Any, data: bytes, n: int) -> list[float]:
    """MB/s of ``ray.put`` here + ``ray.get`` in another process (the actor)."""
    rates = []
    for _ in range(n):
        start = time.perf_counter()
        ref = ray.put(data)
        assert ray.get(actor.size.remote(ref)) == len(data)
        rates.append(len(data) / 1e6 / (time.perf_counter() - start))
        del ref
    return rates


class RawGrpc:
    """A loopback gRPC server with a unary echo and a client-streaming byte counter."""

    def __init__(self) -> None:
        ident: Callable[[bytes], bytes] = lambda b: b
        handlers = {
            "Echo": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req, ident, ident),
            "Sink": grpc.stream_unary_rpc_method_handler(
                lambda it, ctx: str(sum(len(c) for c in it)).encode(), ident, ident),
        }
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=[
            ("grpc.max_receive_message_length", 8 << 20)])
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.echo = self.channel.unary_unary(f"/{SERVICE}/Echo", ident, ident)
        self.sink = self.channel.stream_unary(f"/{SERVICE}/Sink", ident, ident)

    def unary(self, n: int) -> list[float]:
        return timed(lambda: self.echo(b"x"), n, warmup=5)

    def stream(self, data: bytes, n: int, chunk_bytes: int = 1 << 20) -> list[float]:
        """MB/s of streaming ``data`` in ``chunk_bytes`` chunks to the server."""
        def chunks() -> Iterator[bytes]:
            view = memoryview(data)
            for i in range(0, len(data), chunk_bytes):
                yield bytes(view[i:i + chunk_bytes])

        rates = []
        for _ in range(n):
            start = time.perf_counter()
            assert int(self.sink(chunks())) == len(data)
            rates.append(len(data) / 1e6 / (time.perf_counter() - start))
        return rates

    def close(self) -> None:
        self.channel.close()
        self.server.stop(None)


def memory_kib(pid: int) -> tuple[float, float]:
    """(USS, RSS) of ``pid`` in KiB, from /proc/PID/smaps_rollup."""
    fields: dict[str, float] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                fields[parts[0][:-1]] = float(parts[1])
    return fields.get("Private_Clean", 0.0) + fields.get("Private_Dirty", 0.0), fields.get("Rss", 0.0)


__all__ = ["RawActor", "RawGrpc", "actor_creation", "memory_kib", "pipe_throughput", "raw_actor",
           "ray_transfer", "timed"]
