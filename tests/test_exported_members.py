"""Each package's ``__all__`` is sorted, complete and honest."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = ["communicator", "flags", "strategies", "controller"]


def _isort_key(name: str) -> tuple[int, str]:
    """Constants, then classes, then the rest, as ruff's RUF022 sorts ``__all__``."""
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_and_resolves(name: str) -> None:
    """Every name in ``__all__`` exists, and the list is sorted."""
    module = importlib.import_module(name)
    exported = module.__all__
    assert exported == sorted(exported, key=_isort_key)
    for member in exported:
        assert hasattr(module, member), member


@pytest.mark.parametrize("name", PACKAGES)
def test_public_names_are_exported(name: str) -> None:
    """No public name of a package's face is missing from ``__all__``."""
    module = importlib.import_module(name)
    public = {
        n
        for n, v in vars(module).items()
        if not n.startswith("_")
        and getattr(v, "__module__", name).startswith(name)
        and not isinstance(v, type(importlib))
    }
    assert public <= set(module.__all__)
