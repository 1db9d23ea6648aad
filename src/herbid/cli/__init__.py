"""Command-line interface (``herbid``)."""
