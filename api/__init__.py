"""Relay's REST API: intake and status; work is submitted to Prefect, never run inline."""
