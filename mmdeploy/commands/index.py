"""CLI commands for this area (to be filled in)."""
from __future__ import annotations

import typer


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    """Add this area's commands to the app."""
