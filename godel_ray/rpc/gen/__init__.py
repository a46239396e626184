"""Generated from proto/godel/federation/v1/federation.proto by godel_ray.rpc.protogen. Do not edit."""
