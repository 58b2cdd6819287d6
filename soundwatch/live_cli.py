"""``soundwatch devices``, ``listen`` and ``subscribe``."""

import typer


def register(app: typer.Typer) -> None:
    """Add the live-line commands to ``app``."""
