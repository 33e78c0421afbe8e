"""An import-linter contract of our own: no package reaches into another's private modules.

``communicator``, ``flags``, ``strategies`` and ``controller`` each show a public
face (their ``__init__`` and public sub-packages); what sits in a module whose
name starts with ``_`` may change without notice, so only its own package
imports it. Configured in ``pyproject.toml`` and run by ``make lint``.
"""

from __future__ import annotations

from grimp import ImportGraph
from importlinter import Contract, ContractCheck, fields, output


def _private(module: str) -> bool:
    return any(part.startswith("_") and part != "__init__" for part in module.split("."))


class PrivateImportsContract(Contract):
    """Imports between ``packages`` go through public modules only."""

    packages = fields.ListField(subfield=fields.StringField())

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        roots = set(self.packages)  # type: ignore[arg-type]
        broken = []
        for imported in sorted(graph.modules):
            root = imported.split(".")[0]
            if root not in roots or not _private(imported):
                continue
            for importer in sorted(graph.find_modules_that_directly_import(imported)):
                if importer.split(".")[0] in roots - {root}:
                    lines = graph.get_import_details(importer=importer, imported=imported)
                    where = ", ".join(str(d["line_number"]) for d in lines) or "?"
                    broken.append(f"{importer} (line {where}) imports {imported}")
        return ContractCheck(kept=not broken, metadata={"broken": broken})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for line in check.metadata["broken"]:
            output.print_error(f"- {line}")
        output.new_line()
        output.print("Import the name from the package's public face instead (its __init__).")
