"""The package's public names: what ``import godel_ray as gr`` offers, and nothing leaked by ``import *``."""

from __future__ import annotations

import godel_ray as gr
from godel_ray import errors, models


def test_errors_exports_exactly_the_exception_classes() -> None:
    assert sorted(errors.__all__) == sorted(cls.__name__ for cls in errors.ALL_ERRORS)
    assert all(isinstance(getattr(errors, name), type) and issubclass(getattr(errors, name), errors.GodelError)
               for name in errors.__all__)


def test_every_error_class_and_model_is_public_on_the_package() -> None:
    for name in [*errors.__all__, *models.__all__]:
        assert getattr(gr, name) is getattr(errors if name in errors.__all__ else models, name)
        assert name in gr.__all__
    for name in ("connect", "TransparentClusterProxy", "ClusterRegistry", "ClusterClient",
                 "MultiClusterLoadBalancer", "__version__"):
        assert name in gr.__all__


def test_import_star_of_errors_leaks_no_helpers() -> None:
    """``errors``' helpers and its own imports (``Any``) stay out of the package namespace."""
    namespace: dict[str, object] = {}
    exec("from godel_ray.errors import *", namespace)  # noqa: S102 - the statement under test
    assert set(namespace) - {"__builtins__"} == set(errors.__all__)
    for leaked in ("ALL_ERRORS", "ERRORS_BY_NAME", "Any"):
        assert leaked not in gr.__all__
    assert not hasattr(gr, "ALL_ERRORS") and not hasattr(gr, "ERRORS_BY_NAME")
