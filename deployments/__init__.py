"""Registering what prefect.yaml cannot say alone, and the embedded-mode serve entry."""
