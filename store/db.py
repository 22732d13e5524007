"""Engine and sessions for the job store (SQLite by default, PostgreSQL when configured)."""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Table, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, CursorResult, Engine, Result, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry
from sqlmodel import Session, create_engine

from relay_settings import get_settings

# Connections each process keeps open to PostgreSQL (api/reads.py holds its reads to this).
POOL_SIZE = 10


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    """One engine per database URL per process; SQLite runs in WAL mode with a busy timeout."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        # The URL object itself: str() of it masks the password ("***"), which then fails
        # every password login (the multi-host tests' database asks for one, as compose's does).
        parsed = parsed.set(drivername="postgresql+psycopg")
    # pool_recycle rather than a ping per checkout: a ping is one more round trip per query.
    return create_engine(parsed, pool_recycle=300, pool_size=POOL_SIZE)


def _sqlite_pragmas(connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Any constant shared by every Relay process: serialises migrations on PostgreSQL.
_MIGRATION_LOCK = 0x52454C4159


def get_engine() -> Engine:
    """The engine of the configured job store, migrated to the current schema."""
    engine = engine_for(get_settings().database_url)
    if id(engine) not in _migrated:
        with _migrating:  # threads of one process: the first migrates, the others wait
            if id(engine) not in _migrated:
                migrate(engine)
    return engine


_migrated: set[int] = set()
_migrating = threading.Lock()


def alembic_config() -> Config:
    """Alembic configuration without an ini file (the script folder is store/migrations)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def migrate(engine: Engine) -> None:
    """Upgrade the store to the newest schema; safe to run from several processes at once
    (API replicas, workers starting together): one migrates, the others wait and find the
    schema current."""
    config = alembic_config()
    with (
        _sqlite_migration_lock(engine),
        engine.connect() as connection,
        _foreign_keys_off_on_sqlite(connection),
        connection.begin(),
    ):
        if connection.dialect.name == "postgresql":
            lock = text("SELECT pg_advisory_xact_lock(:key)")
            connection.execute(lock, {"key": _MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    _migrated.add(id(engine))


@contextmanager
def _sqlite_migration_lock(engine: Engine) -> Iterator[None]:
    """One migration at a time on a SQLite file, across processes. Its transactions take
    the write lock only at their first write, so two processes starting on a new file both
    found no schema and the second failed ("table ... already exists"): an API with
    RELAY_API_WORKERS=2 lost a worker that way. PostgreSQL uses an advisory lock instead."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    with Path(f"{database}.migrate-lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


@contextmanager
def _foreign_keys_off_on_sqlite(connection: Connection) -> Iterator[None]:
    """SQLite alters a table by copying it, dropping the old one and renaming the copy. With
    foreign keys on, the drop would first delete every row that references the table
    (``ON DELETE CASCADE``: every chunk of every job). SQLite's own procedure for such
    changes turns them off for the change, outside any transaction; so do we."""
    if connection.dialect.name != "sqlite":
        yield
        return
    connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
    connection.commit()
    try:
        yield
    finally:
        connection.exec_driver_sql("PRAGMA foreign_keys=ON")
        connection.commit()


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(get_engine(), expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except Exception:
            session.rollback()
            raise


def rows_matched(result: Result[*tuple[Any, ...]]) -> int:
    """How many rows an UPDATE or DELETE run through a ``Session`` matched. The session types
    every result as a plain ``Result``; a DML statement's is a ``CursorResult``, which counts."""
    if not isinstance(result, CursorResult):
        raise TypeError(f"not the result of an UPDATE or DELETE: {type(result).__name__}")
    return result.rowcount


@lru_cache(maxsize=8)
def _autocommit(engine: Engine) -> Engine:
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def reader() -> Engine:
    """The store's engine in autocommit mode, for single reads on hot paths (no BEGIN or
    ROLLBACK round trips). Never write through it."""
    return _autocommit(get_engine())


def dialect_insert(connection: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT that can say ON CONFLICT, in the connection's dialect (both spell it alike)."""
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def insert_ignoring_conflicts(connection: Connection, table: Table, row: dict[str, object]) -> bool:
    """INSERT the row unless its key is taken (ON CONFLICT DO NOTHING); whether it went in.
    Told by RETURNING: psycopg reports no row count for this statement."""
    key = next(iter(table.primary_key.columns))
    statement = (
        dialect_insert(connection, table).values(**row).on_conflict_do_nothing().returning(key)
    )
    return connection.execute(statement).first() is not None
