"""Turning one row of an occurrence table into records or problems, shared by the CSV and
Darwin Core Archive sources: column-name normalisation, media resolution rules, and the
problems a bad row or file gets.

Keeping these rules in one place means a CSV export and a Darwin Core Archive with the
same content produce the same records and the same problems. Problem reporting, decided
once for both sources:

* a bad row (wrong number of fields, no image, no scientific name, an unusable media
  location) is one problem, ``where`` = ``<file>:<line>``, ``reason`` a short category
  (``wrong number of fields``) and ``detail`` the specifics (``row has 3 fields,
  expected 4``);
* a file that has no image column at all (GBIF simple CSV, an archive without a
  multimedia extension or ``associatedMedia``) is *one* summary problem,
  ``where`` = ``<file>``, ``detail`` = ``all N rows``, instead of N identical per-row
  problems: every row fails for the same file-level reason, and a 2.5-million-row GBIF
  download should not produce 2.5 million report lines. The same holds for a file with
  no name column.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from herbid.data.records import DWC_TERMS, SourceRecord
from herbid.data.sources.base import ProblemLog
from herbid.data.sources.media import URL_SCHEMES, MediaError, MediaRef, resolve_media
from herbid.data.sources.messages import STAGE

#: Columns that may hold an image location, in order of preference.
IMAGE_COLUMNS: tuple[str, ...] = (
    "associatedMedia",
    "identifier",
    "accessURI",
    "image",
    "image_path",
    "imageURL",
    "media_url",
    "file",
)
#: Terms kept in ``SourceRecord.extra`` because curation can use them.
EXTRA_TERMS: tuple[str, ...] = (
    "scientificNameAuthorship",
    "taxonRank",
    "identificationQualifier",
    "typeStatus",
    "basisOfRecord",
)
#: Terms that carry an image's licence, in order of preference.
LICENSE_TERMS: tuple[str, ...] = ("license", "rights", "UsageTerms", "accessRights")
NAME_TERMS: tuple[str, ...] = ("scientificName", "verbatimScientificName")
_KNOWN_TERMS = (*DWC_TERMS, *EXTRA_TERMS, *IMAGE_COLUMNS, *LICENSE_TERMS, "type", "format")
_CANONICAL = {term.lower(): term for term in _KNOWN_TERMS}


# --------------------------------------------------------------------------- column names


def term_name(term: str) -> str:
    """The bare term name: ``http://rs.tdwg.org/dwc/terms/genus`` and ``dwc:genus`` → ``genus``.

    Darwin Core identifies terms by URI, exporters abbreviate them with a namespace
    prefix, and portals use the bare name; matching on the last segment accepts all three.
    """
    name = term.strip().strip("\ufeff").strip('"').strip()
    if "/" in name or "#" in name:
        name = re.split(r"[/#]", name.rstrip("/#"))[-1]
    if ":" in name:
        name = name.rsplit(":", 1)[-1]
    return name


def canonical_column(header: str) -> str:
    """A header as the term herbid knows, case-insensitively (``scientificname`` → ``scientificName``)."""
    name = term_name(header)
    return _CANONICAL.get(name.lower(), name)


def put_value(values: dict[str, str | None], name: str, value: str | None) -> None:
    """Set ``values[name]`` unless an earlier column already gave it a non-blank value."""
    if value is not None:
        value = value.strip() or None
    if values.get(name) is None:
        values[name] = value


# --------------------------------------------------------------------------- row problems


def field_count_problem(problems: ProblemLog, where: str, got: int, expected: int) -> None:
    problems.add(STAGE, where, "wrong number of fields", detail=f"row has {got} fields, expected {expected}")


def missing_column_problem(problems: ProblemLog, display: str, rows: int, reason: str) -> None:
    """The one summary problem for a file where every row lacks the same column."""
    if rows:
        problems.add(STAGE, display, reason, detail=f"all {rows} rows" if rows > 1 else "its only row")


# --------------------------------------------------------------------------- rows → records


@dataclass(frozen=True)
class RowRules:
    """What turns a row into records: where media resolve and who the records say made them."""

    source: str
    base: Path
    confine: bool = False
    #: Extra check on a resolved local path (a DwC-A zip reports images stored inside it).
    check_local: Callable[[str, str], None] | None = None
    #: Folders the user named (``--media-root``) that confined paths may also point into.
    roots: tuple[Path, ...] = ()
    #: Let a path that is inside by name follow a symlink out (``--follow-symlinks``).
    follow_symlinks: bool = False
    #: The problem reason for a confined path that leads out.
    outside: str = "media path outside the archive"

    def resolve(self, value: str) -> str:
        location = resolve_media(value, self.base, confine=self.confine, roots=self.roots,
                                 follow_symlinks=self.follow_symlinks, outside=self.outside)
        if self.check_local and urlsplit(location).scheme.lower() not in URL_SCHEMES:
            self.check_local(value, location)
        return location


def row_records(
    values: Mapping[str, str | None],
    media: Sequence[MediaRef],
    origin: str,
    rules: RowRules,
    problems: ProblemLog,
    extra: Mapping[str, Any] | None = None,
) -> list[SourceRecord]:
    """The records of one row, one per image, or the problems that stop it.

    Checks run in a fixed order so each bad row gets exactly one reason: first the image
    (a row without one is no training example), then the name. A row whose only name is
    ``verbatimScientificName`` is kept with ``scientificName=None``: the build decides
    whether a verbatim label is good enough.
    """
    locations = _resolved(media, origin, rules, problems)
    if locations is None:
        return []
    if not locations:
        problems.add(STAGE, origin, "no image")
        return []
    if not any((values.get(term) or "").strip() for term in NAME_TERMS):
        problems.add(STAGE, origin, "no scientific name")
        return []
    row_extra = {k: values[k] for k in EXTRA_TERMS if values.get(k)} | dict(extra or {})
    return [
        SourceRecord.from_mapping(
            dict(values),
            source_path=location,
            source=rules.source,
            origin=origin,
            extra=_media_extra(ref, origin) | row_extra,
        )
        for ref, location in locations
    ]


def _resolved(
    media: Sequence[MediaRef], origin: str, rules: RowRules, problems: ProblemLog
) -> list[tuple[MediaRef, str]] | None:
    """Resolved media; ``None`` when every item was unusable (each already reported)."""
    locations: list[tuple[MediaRef, str]] = []
    seen: set[str] = set()
    for ref in media:
        try:
            location = rules.resolve(ref.value)
        except MediaError as exc:
            problems.add(STAGE, ref.origin or origin, exc.reason, detail=exc.detail)
            continue
        if location not in seen:
            seen.add(location)
            locations.append((ref, location))
    if media and not locations:
        return None
    return locations


def _media_extra(ref: MediaRef, origin: str) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if ref.origin and ref.origin != origin:
        extra["media_origin"] = ref.origin
    if ref.license:
        extra["license"] = ref.license
    return extra


def first_license(values: Mapping[str, str | None]) -> str | None:
    return next((values[t] for t in LICENSE_TERMS if values.get(t)), None)
