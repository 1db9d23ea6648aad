"""Wording shared by the table sources' errors and problems: one line each, one stage."""

from __future__ import annotations

#: The ``stage`` of every problem the table sources report.
STAGE = "source"


def one_line(text: object, limit: int = 300) -> str:
    """Collapse whitespace so that every error and problem is a single readable line."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
