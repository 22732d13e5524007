"""Relay's flows: orchestration only."""
