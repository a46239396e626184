"""Benchmarks of godel-ray against the raw floor (plain Ray, plain gRPC, plain pipes): ``python -m bench``."""
