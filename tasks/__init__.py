"""Relay's units of work: each module holds one concern, usable as a plain function."""
