"""Relay's Discord application: ``python -m cli discord commands`` registers the slash
commands (docs/discord-commands.md)."""

from __future__ import annotations

from typing import Annotated

import typer

discord_app = typer.Typer(
    help="Relay's Discord application: its slash commands (docs/discord-commands.md).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@discord_app.command("commands")
def commands(
    check: Annotated[
        bool, typer.Option("--check", help="write nothing; exit 1 if a scope differs")
    ] = False,
) -> None:
    """Register Relay's slash commands with Discord, globally and per guild, as
    RELAY_DISCORD_COMMANDS says (idempotent: writes only the scopes that differ)."""
    from deployments.discord_commands import main

    raise typer.Exit(main(check=check))
