"""The README and docs/ point at what exists: every relative link, every path in a layout table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
TABLE_PATH = re.compile(r"^\| `([\w./-]+/)` \|", re.M)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_reach_files(page: Path) -> None:
    text = page.read_text()
    missing = [
        target
        for target in LINK.findall(text)
        if "://" not in target and not (page.parent / target).exists()
    ]
    assert not missing, f"{page.name} links to files that do not exist: {missing}"


def test_the_readme_layout_table_matches_the_tree() -> None:
    paths = TABLE_PATH.findall((ROOT / "README.md").read_text())
    assert len(paths) >= 10
    missing = [p for p in paths if not (ROOT / p).is_dir()]
    assert not missing, f"README.md's layout names folders that do not exist: {missing}"


def test_every_room_is_in_the_readme_layout_table() -> None:
    """A new sub-package of ours gets a line in the layout table."""
    listed = set(TABLE_PATH.findall((ROOT / "README.md").read_text()))
    rooms = {
        f"{room.parent.name}/{room.name}/"
        for package in ("communicator", "controller")
        for room in (ROOT / package).iterdir()
        if (room / "__init__.py").exists()
    }
    assert rooms <= listed, f"rooms missing from README.md's layout: {sorted(rooms - listed)}"
