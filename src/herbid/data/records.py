"""The data model every source produces and every later stage reads.

A *source* yields :class:`SourceRecord` objects, one per image, carrying the Darwin Core
terms it knows and where the image lives (a local path or an http(s) URL). Anything it
cannot turn into a record is reported as a :class:`Problem` instead of being dropped
silently. The build stage turns records into manifest rows (:data:`MANIFEST_COLUMNS`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from functools import cache
from typing import Any

#: Darwin Core terms a record may carry, in manifest order.
DWC_TERMS: tuple[str, ...] = (
    "occurrenceID",
    "catalogNumber",
    "institutionCode",
    "scientificName",
    "verbatimScientificName",
    "genus",
    "family",
    "recordedBy",
    "recordNumber",
    "eventDate",
    "country",
)

#: Columns of ``manifest.parquet``; ``split`` is filled by ``herbid dataset split``.
MANIFEST_COLUMNS: tuple[str, ...] = (
    "image_id",
    *DWC_TERMS,
    "source",
    "source_path",
    "image_path",
    "large_image_path",
    "sha256",
    "phash",
    "width",
    "height",
    "split",
)


@dataclass
class SourceRecord:
    """One image of one specimen, as a source module read it.

    ``scientificName`` is the name as written (authorship and all); the build normalises
    it. ``source_path`` is a local file path or an http(s) URL.
    """

    source_path: str
    source: str = ""
    occurrenceID: str | None = None
    catalogNumber: str | None = None
    institutionCode: str | None = None
    scientificName: str | None = None
    verbatimScientificName: str | None = None
    genus: str | None = None
    family: str | None = None
    recordedBy: str | None = None
    recordNumber: str | None = None
    eventDate: str | None = None
    country: str | None = None
    #: Where in the source the record came from (file and row), for reports.
    origin: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, mapping: dict[str, Any], **overrides: Any) -> "SourceRecord":
        """Build a record from a Darwin Core row, ignoring unknown terms and blanks."""
        known = _field_names(cls)
        values = {k: clean_value(v) for k, v in mapping.items() if k in known}
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True)
class Problem:
    """An input that did not become (or will not stay) a dataset image, and why.

    ``stage`` is where it was found (``source``, ``fetch``, ``image``, ``curation``);
    ``action`` is what happened to it (``dropped``, ``quarantined``, ``converted``,
    ``reported``). ``reason`` is a short category shared by many inputs (``exact
    duplicate``, ``truncated image``); ``detail`` says what is specific to this one.
    """

    stage: str
    where: str
    reason: str
    action: str = "dropped"
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@cache
def _field_names(cls: type) -> frozenset[str]:
    # dataclasses.fields() per record was a tenth of a million-row archive's read
    return frozenset(f.name for f in fields(cls))


def clean_value(value: Any) -> Any:
    """Blank strings and NaN-like values become ``None``; strings are stripped."""
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN
        return None
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value
