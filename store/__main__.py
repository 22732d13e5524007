"""``python -m store``: upgrade the configured job store and print its schema revision."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import make_url

from relay_settings import get_settings
from store.db import get_engine


def main() -> None:
    """Migrate ``RELAY_DATABASE_URL`` to the newest schema and say where it stands."""
    url = make_url(get_settings().database_url)
    with get_engine().connect() as connection:
        revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    print(f"{url.render_as_string(hide_password=True)}: schema revision {revision}")


if __name__ == "__main__":
    main()
