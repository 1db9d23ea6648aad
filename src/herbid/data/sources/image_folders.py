"""Plain image folders: one sub-folder per species, or names carried by the file names.

These are what most people have on disk: ``Viola_mandshurica/IMG_001.jpg`` or a flat
``Anemone_canadensis.88488.1718.jpg``. The species label comes from the folder or the
file name; there is no collector, so only ``--by none`` or ``--by specimen`` splits apply.

What a folder may hand over is confined like an archive's media paths: an entry named
like an image that is a symlink leading out of the source folder (a file or a species
sub-folder) is refused and reported unless the user opts in (``follow_symlinks`` /
``--follow-symlinks``), and one that is not a regular file (a named pipe would block the
reader forever, a device never ends) is reported and never read.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from herbid.data.names import parse_scientific_name
from herbid.data.records import SourceRecord
from herbid.data.safe_files import file_kind
from herbid.data.sources.base import IMAGE_SUFFIXES, ProblemLog, Source, register_source

# ".88488.1718" id runs in "Anemone_canadensis.88488.1718"
_ID_RUNS = re.compile(r"\.\d+")
_SAMPLE = 20
_STAGE = "source"
OUTSIDE = "symlink outside the source folder"


@dataclass
class _Listing:
    """The images of one folder, and the image-named entries refused with a reason."""

    images: list[Path] = field(default_factory=list)
    refused: list[tuple[Path, str, str]] = field(default_factory=list)

    def report(self, problems: ProblemLog) -> None:
        for path, reason, detail in self.refused:
            problems.add(_STAGE, path, reason, detail=detail)


def _candidates(folder: Path) -> list[os.DirEntry[str]]:
    """Entries named like an image (not hidden, not a folder), sorted by name."""
    with os.scandir(folder) as entries:
        found = [
            e for e in entries
            if not e.name.startswith(".") and Path(e.name).suffix.lower() in IMAGE_SUFFIXES and not _is_dir(e)
        ]
    return sorted(found, key=lambda e: e.name)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _image_files(folder: Path) -> list[Path]:
    """Paths named like images (for detection: cheap, nothing is opened)."""
    return [folder / e.name for e in _candidates(folder)]


def _outside(path: Path, root: Path) -> Path | None:
    """Where ``path`` really leads if that is outside ``root`` (resolved), else ``None``."""
    target = path.resolve()
    return None if target.is_relative_to(root) else target


def _listing(folder: Path, root: Path, follow_symlinks: bool) -> _Listing:
    """Sort ``folder``'s image-named entries into images and refusals (never opening one)."""
    listing = _Listing()
    root = root.resolve()
    folder_inside = follow_symlinks or _outside(folder, root) is None
    for entry in _candidates(folder):
        path = folder / entry.name
        try:
            info = entry.stat()  # follows a symlink; never opens
        except OSError as exc:
            broken = isinstance(exc, FileNotFoundError) and entry.is_symlink()
            listing.refused.append(
                (path, "broken symlink", os.readlink(path)) if broken
                else (path, "unreadable file", exc.strerror or str(exc))
            )
            continue
        if not follow_symlinks and (entry.is_symlink() or not folder_inside):
            target = _outside(path, root)
            if target is not None:
                listing.refused.append((path, OUTSIDE, str(target)))
                continue
        if not stat.S_ISREG(info.st_mode):
            listing.refused.append((path, f"not a regular file ({file_kind(info.st_mode)})", ""))
            continue
        listing.images.append(path)
    return listing


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
        root = Path(self.location)
        folder = _flat_image_folder(root)
        if folder is None:
            problems.add(_STAGE, self.location, "no image files in folder")
            return
        listing = _listing(folder, root, bool(self.options.get("follow_symlinks")))
        listing.report(problems)
        for path in listing.images:
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
        follow = bool(self.options.get("follow_symlinks"))
        for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            target = None if follow or not sub.is_symlink() else _outside(sub, root.resolve())
            if target is not None:
                problems.add(_STAGE, sub, OUTSIDE, detail=str(target))
                continue
            listing = _listing(sub, root, follow)
            listing.report(problems)
            if not listing.images:
                problems.add(_STAGE, sub, "species folder has no images", action="reported")
                continue
            label = sub.name.replace("_", " ").strip()
            for path in listing.images:
                yield SourceRecord(
                    source_path=str(path.resolve()),
                    source=self.name,
                    scientificName=label,
                    verbatimScientificName=sub.name,
                    origin=str(path),
                    extra={"label_is_folder": True},
                )
        strays = _listing(root, root, follow)
        strays.report(problems)
        for stray in strays.images:
            problems.add(_STAGE, stray, "image outside any species folder (no label)")
