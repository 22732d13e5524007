"""Throw-away PostgreSQL databases on 127.0.0.1:5432 (trust auth), for tests and benchmarks."""

from __future__ import annotations

import uuid

import psycopg

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def create_database(prefix: str = "relay_test") -> tuple[str, str]:
    """Create an empty database; returns its name and its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return name, f"postgresql://postgres@127.0.0.1:5432/{name}"


def drop_database(name: str) -> None:
    """Drop it again, closing whatever connections are left."""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
