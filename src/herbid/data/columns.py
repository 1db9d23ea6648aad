"""Manifest columns as clean Python strings: one spelling (``None``) of "missing".

Split grouping, evaluation, inference and the similar-specimen index all read manifest
columns whose blanks may be NaN, ``None`` or empty text; :func:`text_column` gives them one.
"""

from __future__ import annotations

from typing import Any

import pandas as pd


def _clean(value: Any) -> str | None:
    if value is None:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    text = str(value).strip()
    return text or None


def text_column(frame: pd.DataFrame, column: str) -> pd.Series:
    """A column as Python strings with blanks and NaN as ``None`` (all ``None`` if absent).

    Parquet round-trips and pandas' string dtype turn missing values into NaN; grouping
    code wants one spelling of "missing".
    """
    if column not in frame.columns:
        return pd.Series([None] * len(frame), index=frame.index, dtype=object)
    return pd.Series([_clean(v) for v in frame[column].tolist()], index=frame.index, dtype=object)
