"""A minimal site for the failure-detector signal tests: the real gRPC stack (``rpc.server`` options
through ``grpc.aio``), a ``ClusterFederation`` servicer that answers only ``Heartbeat``. No Ray.

Run as ``python -m tests.rpc.heartbeat_site PORT_FILE``: it binds 127.0.0.1 on port 0 and writes
the port to ``PORT_FILE`` once it serves.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc
import grpc.aio

from godel_ray.rpc.gen import federation_pb2 as pb
from godel_ray.rpc.gen import federation_pb2_grpc as pb_grpc
from godel_ray.rpc.server import MIN_PING_INTERVAL_MS


class HeartbeatOnly(pb_grpc.ClusterFederationServicer):
    async def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext
                        ) -> pb.HeartbeatResponse:
        return pb.HeartbeatResponse(capacity=pb.SiteCapacity(name="heartbeat-site", max_agents=1))


async def serve(port_file: Path) -> None:
    server = grpc.aio.server(options=[
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
        ("grpc.http2.max_ping_strikes", 0),
    ])
    pb_grpc.add_ClusterFederationServicer_to_server(HeartbeatOnly(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(port))
    tmp.replace(port_file)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1])))
