"""Helpers every table shares: UTC moments, ids, the Core table behind a model."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, overload

from pydantic import AfterValidator
from sqlalchemy import Table, inspect
from sqlmodel import SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def as_utc(moment: datetime) -> datetime: ...
@overload
def as_utc(moment: None) -> None: ...
def as_utc(moment: datetime | None) -> datetime | None:
    """The moment with its zone: SQLite hands datetimes back naive, and Relay stores UTC."""
    if moment is None or moment.tzinfo:
        return moment
    return moment.replace(tzinfo=UTC)


# A datetime that always leaves Relay as RFC 3339 with its zone (API bodies, callbacks).
UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]


def new_id() -> str:
    return uuid.uuid4().hex


def table_of(model: type[SQLModel]) -> Table:
    """The Core table behind a model, for what SQLModel cannot say (upserts, bulk inserts)."""
    table = inspect(model).local_table
    if not isinstance(table, Table):
        raise TypeError(f"{model.__name__} is not mapped to one table")
    return table
