"""Every exception deployctl defines is a DeployctlError (see communicator/_errors.py)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from communicator import DeployctlError

PACKAGES = ("communicator", "strategies", "flags", "controller")


def defined_exceptions() -> list[type[BaseException]]:
    found = []
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.walk_packages(package.__path__, f"{package_name}."):
            if info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            for _, value in inspect.getmembers(module, inspect.isclass):
                if issubclass(value, BaseException) and value.__module__ == info.name:
                    found.append(value)
    return found


@pytest.mark.parametrize(
    "error", defined_exceptions(), ids=lambda e: f"{e.__module__}.{e.__name__}"
)
def test_every_exception_is_rooted_in_deployctl_error(error: type[BaseException]) -> None:
    assert issubclass(error, DeployctlError), f"derive {error.__name__} from DeployctlError"
