"""Relay's command line: one Typer app with a subcommand per thing a person does.

python -m cli transcribe FILE            transcribe a file (embedded Prefect by default)
python -m cli batch import|run|work|status|force|cancel
python -m cli worker --pool POOL         a task worker of one pool
python -m cli workers                    every live worker, as a table
python -m cli api                        the REST API (and the embedded pieces it needs)
python -m cli serve                      serve the deployments from this process
python -m cli stack up|down|status       the whole system on this machine
python -m cli bootstrap                  make a Prefect server ready for Relay
python -m cli db                         migrate the job store, print its revision
python -m cli alerts render              Prometheus alert rules from RELAY_OBJECTIVES_*
python -m cli discord commands           register the slash commands with Discord
"""

from __future__ import annotations

import typer

from cli import admin, alerts, batch, discord_app, services, transcribe, workers

app = typer.Typer(
    help="Relay: transcription, batch video reprocessing and Discord bot requests on Prefect.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.command("transcribe")(transcribe.transcribe)
app.add_typer(batch.app, name="batch")
app.command("worker")(services.worker)
app.command("workers")(workers.workers)
app.command("api")(services.api)
app.command("serve")(services.serve)
app.add_typer(admin.stack_app, name="stack")
app.command("bootstrap")(admin.bootstrap)
app.command("db")(admin.db)
app.add_typer(alerts.alerts_app, name="alerts")
app.add_typer(discord_app.discord_app, name="discord")


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit code (1 with one ``error:`` line on bad input, 2 on a
    usage error)."""
    try:
        app(args=argv, prog_name="python -m cli")
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (1 if done.code else 0)
    return 0
