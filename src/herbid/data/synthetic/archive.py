"""A synthetic Darwin Core Archive of any size, for scale tests of the source readers.

The archive looks like a GBIF or iDigBio bulk download: a tab-separated, unquoted
``occurrence.txt`` core and a ``multimedia.txt`` extension (GBIF Simple Multimedia) with
one or two image URLs per occurrence on a few loopback hosts, described by ``meta.xml``.
Some rows are built to be dropped or merged, at fixed rates, so a reader's counts can be
checked: names without a species, blank names, non-image media rows, orphaned media rows
and URLs shared by two occurrences.

Rows are written in chunks (a million take seconds, and memory stays flat), and the
archive is a pure function of its arguments.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from herbid.data.synthetic.catalogue import INSTITUTIONS, SPECIES_NAMES, SYNTHETIC_LABEL, collector_name

CORE = "occurrence.txt"
MULTIMEDIA = "multimedia.txt"
CORE_COLUMNS = ("id", "scientificName", "recordedBy", "institutionCode", "catalogNumber", "basisOfRecord")
MEDIA_COLUMNS = ("coreid", "type", "format", "identifier", "license")
_DWC = "http://rs.tdwg.org/dwc/terms/"
_DC = "http://purl.org/dc/terms/"
_LICENSE = "http://creativecommons.org/licenses/by/4.0/"
_CHUNK = 100_000
#: One name in 25 cannot be a species label: (name, why the build drops it).
UNUSABLE_NAMES: tuple[tuple[str, str], ...] = (
    ("", "no scientific name"),
    ("Viola sp.", "identified to genus only"),
    ("Viola cf. canadensis L.", "uncertain identification (cf./aff.)"),
    ("Carex", "identified to genus only"),
)
_AUTHORS = ("L.", "(L.) Mill.", "Nutt.", "A. Gray", "Raf. ex DC.")


@dataclass(frozen=True)
class ArchiveSummary:
    """What was written, for checks: every count a reader can be held to."""

    path: Path
    occurrences: int
    media_rows: int
    #: Occurrence rows whose name is one of :data:`UNUSABLE_NAMES`.
    unusable_names: int
    #: Media rows that are not images (``format`` audio), and rows whose coreid is in no occurrence.
    not_images: int
    orphans: int


def write_dwca(path: str | Path, occurrences: int, *, port: int = 8765, seed: int = 0,
               hosts: tuple[str, ...] = ("127.0.0.1", "127.0.0.2", "localhost")) -> ArchiveSummary:
    """Write a DwC-A zip of ``occurrences`` rows and their images to ``path``.

    Image URLs are ``http://HOST:PORT/<institution>/<catalogue number>-<n>.jpg``; one
    occurrence in 50 reuses its predecessor's first URL (a shared sheet), one in 200 has an
    audio row, and every 1000th chunk row adds a media row for an occurrence that does not
    exist. The multimedia chunks are written in reverse order so that the extension is not
    sorted like the core (readers must not rely on it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    chunks = [(start, min(start + _CHUNK, occurrences)) for start in range(0, occurrences, _CHUNK)]
    plans = [_chunk_plan(rng, start, stop) for start, stop in chunks]
    media_rows = not_images = orphans = 0
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("meta.xml", _meta_xml())
        with archive.open(CORE, "w", force_zip64=True) as handle:
            handle.write(("\t".join(CORE_COLUMNS) + "\n").encode())
            for plan in plans:
                handle.write(_core_text(plan).encode())
        with archive.open(MULTIMEDIA, "w", force_zip64=True) as handle:
            handle.write(("\t".join(MEDIA_COLUMNS) + "\n").encode())
            for plan in reversed(plans):
                text, counts = _media_text(plan, port, hosts)
                handle.write(text.encode())
                media_rows, not_images, orphans = (a + b for a, b in zip((media_rows, not_images, orphans), counts))
    unusable = sum(int(plan.unusable.sum()) for plan in plans)
    return ArchiveSummary(path, occurrences, media_rows, unusable, not_images, orphans)


@dataclass(frozen=True)
class _ChunkPlan:
    ids: np.ndarray
    species: np.ndarray
    authors: np.ndarray
    unusable: np.ndarray
    institutions: np.ndarray
    collectors: np.ndarray
    second_image: np.ndarray


def _chunk_plan(rng: np.random.Generator, start: int, stop: int) -> _ChunkPlan:
    n = stop - start
    ids = np.arange(start, stop)
    return _ChunkPlan(
        ids=ids,
        species=rng.integers(0, len(SPECIES_NAMES), n),
        authors=rng.integers(0, len(_AUTHORS), n),
        unusable=(ids % 25 == 7),
        institutions=rng.integers(0, len(INSTITUTIONS), n),
        collectors=rng.integers(0, 300, n),
        second_image=rng.random(n) < 0.5,
    )


def _occurrence_id(i: int) -> str:
    return f"urn:{SYNTHETIC_LABEL}:occ:{i:08d}"


def _core_text(plan: _ChunkPlan) -> str:
    lines = []
    for i, species, author, unusable, institution, collector in zip(
        plan.ids.tolist(), plan.species.tolist(), plan.authors.tolist(), plan.unusable.tolist(),
        plan.institutions.tolist(), plan.collectors.tolist(), strict=True,
    ):
        name = UNUSABLE_NAMES[i // 25 % len(UNUSABLE_NAMES)][0] if unusable else (
            f"{SPECIES_NAMES[species]} {_AUTHORS[author]}")
        lines.append(f"{_occurrence_id(i)}\t{name}\t{collector_name(collector)}\t{INSTITUTIONS[institution]}"
                     f"\t{i:08d}\tPreservedSpecimen\n")
    return "".join(lines)


def _media_text(plan: _ChunkPlan, port: int, hosts: tuple[str, ...]) -> tuple[str, tuple[int, int, int]]:
    lines = []
    not_images = orphans = 0

    def url(i: int, n: int) -> str:
        return f"http://{hosts[i % len(hosts)]}:{port}/{INSTITUTIONS[i % len(INSTITUTIONS)]}/{i:08d}-{n}.jpg"

    for i, second in zip(plan.ids.tolist(), plan.second_image.tolist(), strict=True):
        core = _occurrence_id(i)
        first = url(i - 1, 1) if i % 50 == 49 else url(i, 1)  # a sheet shared with the previous occurrence
        lines.append(f"{core}\tStillImage\timage/jpeg\t{first}\t{_LICENSE}\n")
        if second:
            lines.append(f"{core}\tStillImage\timage/jpeg\t{url(i, 2)}\t{_LICENSE}\n")
        if i % 200 == 3:
            lines.append(f"{core}\tSound\taudio/mpeg\thttp://{hosts[0]}:{port}/audio/{i:08d}.mp3\t{_LICENSE}\n")
            not_images += 1
        if i % 1000 == 11:
            lines.append(f"urn:{SYNTHETIC_LABEL}:gone:{i:08d}\tStillImage\timage/jpeg\t{url(i, 9)}\t{_LICENSE}\n")
            orphans += 1
    return "".join(lines), (len(lines), not_images, orphans)


def _meta_xml() -> str:
    core = "".join(f'<field index="{k}" term="{_DWC}{term}"/>' for k, term in enumerate(CORE_COLUMNS) if k)
    media_terms = {"type": _DC, "format": _DC, "identifier": _DC, "license": _DC}
    media = "".join(f'<field index="{k}" term="{media_terms[term]}{term}"/>'
                    for k, term in enumerate(MEDIA_COLUMNS) if k)
    dialect = 'encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy="" ignoreHeaderLines="1"'
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<archive xmlns="http://rs.tdwg.org/dwc/text/">\n'
        f'<core rowType="{_DWC}Occurrence" {dialect}><files><location>{CORE}</location></files>'
        f'<id index="0"/>{core}</core>\n'
        f'<extension rowType="http://rs.gbif.org/terms/1.0/Multimedia" {dialect}>'
        f'<files><location>{MULTIMEDIA}</location></files><coreid index="0"/>{media}</extension>\n'
        "</archive>\n"
    )
