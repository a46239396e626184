"""The base of every domain model (``DomainModel``) and the clock the models stamp times with.

Its own module so that the model modules (``godel_ray.models``, ``godel_ray.migration_models``,
``godel_ray.event_models``) share one base without importing each other.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict


def now_s() -> float:
    return time.time()


class DomainModel(BaseModel):
    """Every domain model: unknown fields and non-finite numbers (``inf``, ``nan``, ``1e309``) are
    refused when a model is built, naming the field; JSON and SQLite cannot hold them anyway (they
    would be stored as null, and every later read of the row would fail)."""

    model_config = ConfigDict(extra="forbid", use_enum_values=False, allow_inf_nan=False)


__all__ = ["DomainModel", "now_s"]
