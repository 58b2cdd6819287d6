"""``soundwatch train`` and ``soundwatch eval``."""

import typer


def register(app: typer.Typer) -> None:
    """Add the offline-line commands to ``app``."""
