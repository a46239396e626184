"""godel-ray: multi-region federation for long-lived agents, on Ray.

    import godel_ray as gr
    proxy = gr.connect()
    agent = proxy.spawn(gr.SpawnConfig(model="claude-sonnet-4", requires_gpu=True))
    print(proxy.exec(agent.id, "nvidia-smi").stdout)

Importing this package is cheap: Ray and gRPC load only when ``connect()`` is called.
"""

from __future__ import annotations

from typing import Any

from godel_ray.errors import *
from godel_ray.errors import __all__ as _errors_all
from godel_ray.models import *
from godel_ray.models import __all__ as _models_all
from godel_ray.settings import VERSION as __version__

_LAZY = {
    "connect": ("godel_ray.client.proxy", "connect"),
    "TransparentClusterProxy": ("godel_ray.client.proxy", "TransparentClusterProxy"),
    "ClusterRegistry": ("godel_ray.client.proxy", "ClusterRegistry"),
    "AsyncTransparentClusterProxy": ("godel_ray.client.aio", "AsyncTransparentClusterProxy"),
    "StateReader": ("godel_ray.client.reader", "StateReader"),
    "ClusterClient": ("godel_ray.core.cluster_client", "ClusterClient"),
    "MultiClusterLoadBalancer": ("godel_ray.control.balancer", "MultiClusterLoadBalancer"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'godel_ray' has no attribute {name!r}")


__all__ = [*_models_all, *_errors_all, *_LAZY, "__version__"]  # noqa: PLE0604 - strings, from models and errors
