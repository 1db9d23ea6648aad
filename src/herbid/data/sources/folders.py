"""Plain image folders: one sub-folder per species, or names carried by the file names.

These are what most people have on disk: ``Viola_mandshurica/IMG_001.jpg`` or a flat
``Anemone_canadensis.88488.1718.jpg``. The species label comes from the folder or the
file name; there is no collector, so only ``--by none`` or ``--by specimen`` splits apply.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from herbid.data.names import parse_scientific_name
from herbid.data.records import SourceRecord
from herbid.data.sources.base import ProblemLog, Source, is_image_file, register_source

# ".88488.1718" id runs in "Anemone_canadensis.88488.1718"
_ID_RUNS = re.compile(r"\.\d+")
_SAMPLE = 20


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def name_from_file(path: Path) -> str:
    """The name part of a file name: ``Carex tonsa (Fernald) E.P.Bicknell24.jpeg`` → the stem
    without trailing ids, authorship kept (the build strips it)."""
    return _ID_RUNS.sub(" ", path.stem).replace("_", " ").strip()


def _flat_image_folder(folder: Path) -> Path | None:
    """The folder holding the images: ``folder`` itself or its ``images/`` sub-folder."""
    if not folder.is_dir() or (folder / "meta.xml").exists():
        return None
    for candidate in (folder, folder / "images"):
        if candidate.is_dir() and _image_files(candidate):
            return candidate
    return None


@register_source
class FileNameSource(Source):
    """A flat folder (or its ``images/`` sub-folder) whose file names carry the species."""

    name = "filenames"
    priority = 80

    @classmethod
    def detect(cls, location: str) -> bool:
        folder = _flat_image_folder(Path(location))
        if folder is None:
            return False
        sample = _image_files(folder)[:_SAMPLE]
        named = sum(parse_scientific_name(name_from_file(p)).is_species for p in sample)
        return named * 2 >= len(sample)

    def records(self, problems: ProblemLog) -> Iterator[SourceRecord]:
        folder = _flat_image_folder(Path(self.location))
        if folder is None:
            problems.add("source", self.location, "no image files in folder")
            return
        for path in _image_files(folder):
            name = name_from_file(path)
            yield SourceRecord(
                source_path=str(path.resolve()),
                source=self.name,
                scientificName=name,
                verbatimScientificName=name,
                origin=str(path),
            )


@register_source
class SpeciesFolderSource(Source):
    """A folder with one sub-folder of images per species; the sub-folder name is the label.

    Folder names that are not scientific names (``V01``) are kept as opaque labels.
    """

    name = "folders"
    priority = 90

    @classmethod
    def detect(cls, location: str) -> bool:
        folder = Path(location)
        if not folder.is_dir() or (folder / "meta.xml").exists():
            return False
        return any(sub.is_dir() and _image_files(sub) for sub in folder.iterdir())

    def records(self, problems: ProblemLog) -> Iterator[SourceRecord]:
        root = Path(self.location)
        for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            files = _image_files(sub)
            if not files:
                problems.add("source", sub, "species folder has no images", action="reported")
                continue
            label = sub.name.replace("_", " ").strip()
            for path in files:
                yield SourceRecord(
                    source_path=str(path.resolve()),
                    source=self.name,
                    scientificName=label,
                    verbatimScientificName=sub.name,
                    origin=str(path),
                    extra={"label_is_folder": True},
                )
        for stray in _image_files(root):
            problems.add("source", stray, "image outside any species folder (no label)")
