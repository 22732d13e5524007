"""Every command a person types: ``python -m cli COMMAND`` (``python -m cli --help``)."""
