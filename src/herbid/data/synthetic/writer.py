"""Writing a synthetic collection to disk: sheet images as JPEG files in one of the
source layouts, plus the Darwin Core ``occurrences.csv`` (:func:`make_synthetic_collection`)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from herbid.data.synthetic.catalogue import SPECIES, SYNTHETIC_LABEL, _plan, _Sheet
from herbid.data.synthetic.sheet import render_sheet
from herbid.errors import InvalidOption

LAYOUTS = ("csv", "folders", "filenames")
#: Darwin Core columns of ``occurrences.csv`` (``layout="csv"``), in file order.
CSV_COLUMNS: tuple[str, ...] = (
    "occurrenceID",
    "catalogNumber",
    "institutionCode",
    "scientificName",
    "genus",
    "family",
    "recordedBy",
    "recordNumber",
    "eventDate",
    "country",
    "associatedMedia",
)


def sheet_rng(seed: int, species: int, index: int) -> np.random.Generator:
    """The generator :func:`make_synthetic_collection` renders sheet ``index`` of ``species``
    with, so a test can re-render a collection's sheet and get its :class:`SheetLayout`."""
    return np.random.default_rng([seed, species, index])


def _image_path(sheet: _Sheet, layout: str) -> Path:
    """Where a sheet's JPEG goes, relative to the collection folder."""
    spec = SPECIES[sheet.species]
    if layout == "csv":
        return Path("images") / f"{sheet.catalog_number}.jpg"
    if layout == "folders":
        return Path(spec.file_stem) / f"{sheet.catalog_number}.jpg"
    return Path(f"{spec.file_stem}.{sheet.number}.{sheet.index + 1}.jpg")


def _csv_row(sheet: _Sheet, media: Path) -> dict[str, str]:
    spec = SPECIES[sheet.species]
    return {
        "occurrenceID": f"urn:{SYNTHETIC_LABEL}:{sheet.institution}:{sheet.number:06d}",
        "catalogNumber": sheet.catalog_number,
        "institutionCode": sheet.institution,
        "scientificName": spec.name_with_authorship,
        "genus": spec.genus,
        "family": spec.family,
        "recordedBy": sheet.collector,
        "recordNumber": str(sheet.record_number),
        "eventDate": sheet.event_date,
        "country": sheet.country,
        "associatedMedia": media.as_posix(),
    }


def make_synthetic_collection(
    out_dir: str | Path,
    *,
    n_species: int = 4,
    per_species: int = 6,
    collectors_per_species: int = 3,
    size: tuple[int, int] = (400, 600),
    seed: int = 0,
    layout: str = "csv",
    shared_collectors: bool = True,
    quality: int = 90,
) -> Path:
    """Write a collection of synthetic sheets (species ``0 .. n_species-1`` of
    :data:`SPECIES`) to ``out_dir``; return the location a source reads it from.

    That is ``out_dir/occurrences.csv`` for ``layout="csv"`` (the folder alone would look
    like a species folder named ``images``) and ``out_dir`` for the other layouts.

    ``layout`` chooses the on-disk form a source module would meet:

    * ``"csv"``: ``images/<catalogNumber>.jpg`` plus ``occurrences.csv`` with the Darwin
      Core columns :data:`CSV_COLUMNS` (``associatedMedia`` relative to the CSV);
    * ``"folders"``: ``<Genus_epithet>/<catalogNumber>.jpg``;
    * ``"filenames"``: flat ``<Genus_epithet>.<sheet number>.<index in species>.jpg``.

    Each species' sheets go round-robin to ``collectors_per_species`` collectors. Sheet
    ``i`` of species ``s`` is ``render_sheet(s, sheet_rng(seed, s, i), size=size)``; the
    whole output is byte-identical for the same arguments.
    """
    if layout not in LAYOUTS:
        raise InvalidOption(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    if not 1 <= n_species <= len(SPECIES):
        raise InvalidOption(f"n_species must be 1..{len(SPECIES)}, got {n_species}")
    if per_species < 1 or collectors_per_species < 1:
        raise InvalidOption("per_species and collectors_per_species must be >= 1")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    for sheet in _plan(n_species, per_species, collectors_per_species, seed, shared_collectors):
        relative = _image_path(sheet, layout)
        image, _ = render_sheet(sheet.species, sheet_rng(seed, sheet.species, sheet.index), size=size)
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / relative, format="JPEG", quality=quality)
        rows.append(_csv_row(sheet, relative))
    if layout == "csv":
        with open(root / "occurrences.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        return root / "occurrences.csv"
    return root
