"""Setting Relay up: the local stack, a Prefect server's pools and blocks, the job store."""

from __future__ import annotations

import typer

stack_app = typer.Typer(
    help="The whole system on this machine, without Docker (`make stack`).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@stack_app.command("up")
def stack_up() -> None:
    """Start Prefect on PostgreSQL, warm Dask, a worker per pool and the API."""
    from deployments.stack import up

    raise typer.Exit(up())


@stack_app.command("down")
def stack_down() -> None:
    """Stop exactly what `stack up` started."""
    from deployments.stack import down

    raise typer.Exit(down())


@stack_app.command("status")
def stack_status() -> None:
    """The stack's processes that are alive."""
    from deployments.stack import running

    for name, pid in running().items():
        print(f"{name:20} pid {pid}")


def bootstrap() -> None:
    """Make the Prefect server at PREFECT_API_URL ready for Relay (idempotent): pools,
    queues, limits, blocks, key pools, the failure alert. Prints what it did."""
    from deployments.bootstrap import main

    raise typer.Exit(main())


def db() -> None:
    """Migrate RELAY_DATABASE_URL to the newest schema and print its revision."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from relay_settings import get_settings
    from store.db import get_engine

    url = make_url(get_settings().database_url)
    with get_engine().connect() as connection:
        revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    print(f"{url.render_as_string(hide_password=True)}: schema revision {revision}")
