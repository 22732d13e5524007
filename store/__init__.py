"""Relay's job store: SQLModel tables and the queries that need care."""
