"""strategies (see DESIGN.md §2)."""

__all__: list[str] = []
