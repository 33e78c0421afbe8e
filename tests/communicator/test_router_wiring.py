"""The router's wiring: collaborators get narrow ports, and no import goes in a circle.

``Router`` builds its collaborators and hands each only what it uses
(:mod:`communicator.router._ports`); none of them may import the router back.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import re

import grimp
import pytest

from communicator.router._control import Control
from communicator.router._delivery import Delivery
from communicator.router._directory_sync import DirectorySync
from communicator.router._dispatch import Dispatcher
from communicator.router._housekeeping import Housekeeping
from communicator.router._identity import Probes
from communicator.router._intake import Intake
from communicator.router._outcomes import Outcomes
from communicator.router._ownership import Ownership
from communicator.router._registration import Registration
from communicator.router._requests import Requests
from communicator.router._session import BrokerSession
from communicator.router._shadow import Shadow
from communicator.router._watches import HandoffSeal, Watches

ROUTER = "communicator.router._router"
#: The only modules that may import the router: the package's face and the daemon's
#: (its health records read a running router from outside; nothing it is built from).
MAY_IMPORT_ROUTER = {
    "communicator.router",
    "communicator.router._daemon",
    "communicator.router._health",
}
#: Circles allowed anywhere in the communicator: none.
KNOWN_CYCLES: set[frozenset[str]] = set()
COLLABORATORS = [
    BrokerSession,
    Control,
    Delivery,
    DirectorySync,
    Dispatcher,
    HandoffSeal,
    Housekeeping,
    Intake,
    Outcomes,
    Ownership,
    Probes,
    Registration,
    Requests,
    Shadow,
    Watches,
]


@functools.cache
def graph() -> grimp.ImportGraph:
    """Every import among the communicator's modules, those under TYPE_CHECKING included."""
    return grimp.build_graph("communicator", exclude_type_checking_imports=False)


def cycles() -> set[frozenset[str]]:
    """Each pair of modules where one imports the other directly and the other leads back."""
    found = set()
    imports = graph()
    for module in imports.modules:
        for imported in imports.find_modules_directly_imported_by(module):
            if imports.find_shortest_chain(importer=imported, imported=module):
                found.add(frozenset({module, imported}))
    return found


def test_only_the_daemon_and_the_package_import_the_router() -> None:
    """A collaborator importing ``_router`` (even for a type) would close a circle."""
    importers = graph().find_modules_that_directly_import(ROUTER)
    assert importers <= MAY_IMPORT_ROUTER, importers - MAY_IMPORT_ROUTER


def test_no_import_circle_among_the_communicators_modules() -> None:
    """No module can reach, through its imports, a module that imports it (but the known one)."""
    new = cycles() - KNOWN_CYCLES
    assert not new, sorted(sorted(pair) for pair in new)


def test_no_router_module_is_on_an_import_circle() -> None:
    """The router's room is free of circles, whatever happens elsewhere."""
    imports = graph()
    modules = sorted(m for m in imports.modules if m.startswith("communicator.router"))
    for first, second in itertools.combinations(modules, 2):
        there = imports.find_shortest_chain(importer=first, imported=second)
        back = imports.find_shortest_chain(importer=second, imported=first)
        assert not (there and back), (there, back)


@pytest.mark.parametrize("collaborator", COLLABORATORS, ids=lambda c: c.__name__)
def test_collaborators_take_only_keyword_ports_never_the_router(collaborator: type) -> None:
    """Each constructor names what it uses, by keyword; none is given the whole router."""
    parameters = list(inspect.signature(collaborator).parameters.values())
    assert parameters, f"{collaborator.__name__} takes nothing?"
    for parameter in parameters:
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, parameter
        assert not re.search(r"\bRouter\b", str(parameter.annotation)), parameter
