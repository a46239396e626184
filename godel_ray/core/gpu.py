"""GPU types: the one rule for when a requested GPU type is satisfied by an offered one.

Pure (no ray, no grpc). Every comparison of GPU types in the project goes through here: placement
(``core.placement``), the agent runtime's own check before it creates an actor
(``agents.capacity.placement_problem``) and the warm pool (``agents.pool``). Placement and the
site therefore agree: a type that placement accepts for a site is one the site can host.

The rule:

- Names compare case-insensitively, with ``_`` and spaces read as ``-``, and an optional vendor
  prefix (``nvidia-``, ``amd-``, ``intel-``): ``nvidia-a100`` == ``NVIDIA_A100`` == ``A100``.
- A bare model matches every variant of it: ``a100`` matches ``nvidia-a100-80g`` and
  ``A100-40G`` (a variant is the model followed by ``-<suffix>``). ``a10`` does not match
  ``a100``: a variant starts after a ``-``, never mid-name.
- A variant asked for must be offered exactly: ``a100-80g`` matches ``nvidia-a100-80g`` but not
  ``a100-40g`` nor a plain ``a100``.

When several offered types match (``resolve_gpu_type``), the preference is: the same spelling,
then the same model after normalising (``A100`` for ``nvidia-a100``), then the variants in name
order.

GPU types reach Ray as the logical resource ``accelerator_type:<T>`` (``gpu_type_resource``), with
``<T>`` spelled exactly as the cluster advertises it; an agent asks for ``GPU_TYPE_RESOURCE_UNITS``
of it, as Ray's own ``accelerator_type`` option does.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

VENDOR_PREFIXES = ("nvidia-", "amd-", "intel-")
GPU_TYPE_RESOURCE_PREFIX = "accelerator_type:"
GPU_TYPE_RESOURCE_UNITS = 0.001  # what Ray's own ``accelerator_type`` option requests


@functools.lru_cache(maxsize=1024)
def normalise_gpu_type(name: str) -> str:
    """The comparable form of a GPU type: ``"NVIDIA_A100-80G"`` -> ``"a100-80g"``."""
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    for prefix in VENDOR_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


@functools.lru_cache(maxsize=4096)
def gpu_type_matches(wanted: str, offered: str) -> bool:
    """Whether a request for ``wanted`` is satisfied by a GPU of type ``offered`` (module rule)."""
    want = normalise_gpu_type(wanted)
    have = normalise_gpu_type(offered)
    return bool(want) and (have == want or have.startswith(want + "-"))


def matching_gpu_types(wanted: str, offered: Iterable[str]) -> list[str]:
    """The offered types that satisfy ``wanted``, best first (see the module docstring)."""
    want = normalise_gpu_type(wanted)

    def preference(name: str) -> tuple[int, str]:
        if name == wanted:
            return 0, name
        return (1 if normalise_gpu_type(name) == want else 2), name

    return sorted({name for name in offered if gpu_type_matches(wanted, name)}, key=preference)


def resolve_gpu_type(wanted: str, offered: Iterable[str]) -> str | None:
    """The offered spelling that best satisfies ``wanted``, or None when none does."""
    matches = matching_gpu_types(wanted, offered)
    return matches[0] if matches else None


def gpu_type_resource(gpu_type: str) -> str:
    """Ray's logical resource name for GPUs of ``gpu_type`` (spelled as the cluster advertises it)."""
    return GPU_TYPE_RESOURCE_PREFIX + gpu_type


def gpu_types_of(resources: Mapping[str, float]) -> list[str]:
    """The GPU types a Ray resource map advertises (``accelerator_type:<T>`` with a positive amount)."""
    return sorted(name[len(GPU_TYPE_RESOURCE_PREFIX):] for name, amount in resources.items()
                  if name.startswith(GPU_TYPE_RESOURCE_PREFIX) and amount > 0)


__all__ = ["GPU_TYPE_RESOURCE_PREFIX", "GPU_TYPE_RESOURCE_UNITS", "VENDOR_PREFIXES", "gpu_type_matches",
           "gpu_type_resource", "gpu_types_of", "matching_gpu_types", "normalise_gpu_type", "resolve_gpu_type"]
