"""Typed configuration kept in Prefect blocks: Discord destinations, API-key pools, ASR."""
