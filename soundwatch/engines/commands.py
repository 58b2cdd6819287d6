"""``soundwatch export``, ``calibrate``, ``build-engine`` and ``bench``."""

import typer


def register(app: typer.Typer) -> None:
    """Add the engine commands to ``app``."""
