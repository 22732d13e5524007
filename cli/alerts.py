"""Prometheus alert rules from Relay's settings: ``python -m cli alerts render``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

alerts_app = typer.Typer(
    help="Prometheus alert rules rendered from RELAY_OBJECTIVES_* (docs/ops-alerts.md).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@alerts_app.command("render")
def render(
    out: Annotated[
        Path | None, typer.Option(help="file to write (default: infra/prometheus/rules.yml)")
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="write nothing; exit 1 if the file differs")
    ] = False,
) -> None:
    """Write the alert rules for the objectives in the environment (RELAY_OBJECTIVES_*)."""
    from deployments.alert_rules import RULES_FILE, render, write
    from relay_settings import get_settings

    path = out or RULES_FILE
    try:
        if check:
            current = path.read_text() if path.exists() else ""
            if current != render(get_settings()):
                print(f"{path} differs from the rules the settings give", file=sys.stderr)
                raise typer.Exit(1)
            print(f"{path} is up to date")
            return
        changed = write(get_settings(), path)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        raise typer.Exit(1) from None
    print(f"{'wrote' if changed else 'unchanged:'} {path}")
