"""Fuzz-style run of the readers over a few hundred generated malformed inputs (issue 11).

Fixed seed, bounded time: malformed images (a folder source), malformed CSV rows (a CSV
source) and malformed ``meta.xml`` files (Darwin Core Archives) go through the source
readers and the build, and the malformed images through the upload decoder. Asserted:
no exception escapes, nothing hangs, resident memory stays bounded, and every input is
accounted for: it is in the manifest or in the report with a reason.
"""

from __future__ import annotations

import csv
import io
import os
import random
import struct
import time
import zlib
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from herbid.data.build import BuildOptions, build_dataset, read_sources
from herbid.data.sources.base import ProblemLog
from herbid.data.sources.tabular import MAX_LINE_BYTES
from peak_rss import PeakRss

SEED = 20261204
#: Kept and reported rows together; "converted" and "reported" notes do not remove a row.
REMOVING = ("dropped", "quarantined")
#: Resident memory the whole fuzz run may add (the images are small; bombs are refused).
MAX_EXTRA_RSS = 600 * 2**20


# --- generators --------------------------------------------------------------------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(width: int, height: int, bit_depth: int = 8, colour: int = 2) -> bytes:
    """A valid PNG signature and header that claims a huge image, with no pixel data."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IEND", b"")


def _png_bomb(side: int) -> bytes:
    """A 1-bit ``side``×``side`` PNG of zeros: tiny on disk, ``side²`` pixels decoded."""
    row = b"\x00" * (1 + (side + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def _valid_images(rng: random.Random) -> list[tuple[str, bytes]]:
    images = []
    for fmt, suffix in (("JPEG", ".jpg"), ("PNG", ".png"), ("TIFF", ".tif"), ("GIF", ".gif"), ("WEBP", ".webp"),
                        ("BMP", ".bmp")):
        image = Image.effect_noise((48 + rng.randrange(32), 64 + rng.randrange(32)), 40).convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        images.append((suffix, buffer.getvalue()))
    return images


def malformed_images(rng: random.Random, count: int) -> list[tuple[str, bytes]]:
    """``count`` (suffix, bytes) pairs: truncations, bit flips, garbage, lying headers, bombs."""
    valid = _valid_images(rng)
    fixed = [(".png", _png_header_only(60_000, 60_000)), (".png", _png_header_only(1, 1, bit_depth=16, colour=6)),
             (".png", _png_header_only(0, 0)), (".png", _png_bomb(20_000)), (".jpg", b""), (".jpg", b"\xff\xd8"),
             (".tif", b"II*\x00" + b"\xff" * 64), (".gif", b"GIF89a" + b"\x00" * 10)]
    out = list(fixed)
    while len(out) < count:
        suffix, data = rng.choice(valid)
        kind = rng.randrange(5)
        if kind == 0:  # truncated anywhere
            data = data[: rng.randrange(len(data))]
        elif kind == 1:  # a few flipped bytes
            mutable = bytearray(data)
            for _ in range(rng.randrange(1, 12)):
                mutable[rng.randrange(len(mutable))] = rng.randrange(256)
            data = bytes(mutable)
        elif kind == 2:  # random garbage under an image name
            data = rng.randbytes(rng.randrange(1, 4096))
        elif kind == 3:  # another format's bytes under this name
            suffix = rng.choice(valid)[0]
        else:  # a valid header, then garbage
            data = data[:32] + rng.randbytes(rng.randrange(1, 2048))
        out.append((suffix, data))
    return out


def malformed_csv(rng: random.Random, folder: Path, rows: int) -> bytes:
    """A CSV of ``rows`` rows, most of them malformed, its media beside it or pointing away."""
    good = []
    for index, (suffix, data) in enumerate(_valid_images(rng)):
        name = f"good{index}{suffix}"
        (folder / name).write_bytes(data)
        good.append(name)
    os.mkfifo(folder / "pipe.jpg")
    media = [*good, "missing.jpg", "../outside.jpg", "/etc/hostname", "file:///etc/passwd", "file:///dev/zero",
             "pipe.jpg", "gopher://example.org/x", "ftp://example.org/a.jpg", "", " ", "\x00", ".", "..",
             "good0.jpg\x00.png", "%2e%2e/%2e%2e/etc/passwd", "C:\\Windows\\win.ini", "good1.png" * 40]
    names = ["Quercus robur", "Quercus alba L.", "", "?", "cf. Quercus", "Quercus", "×", "Ab cd ef gh ij",
             "Quercus\x00robur", "Q" * 5000, "Quercus robur\nsubsp. x", "Viola riviniana Rchb.",
             "\udcff".encode("utf-8", "surrogatepass").decode("utf-8", "replace")]
    lines = ["catalogNumber,scientificName,recordedBy,associatedMedia"]
    for row in range(rows):
        fields = [f"FZ{row:04d}", rng.choice(names), rng.choice(["A. Smith", "", "s.n.", "a;b&c"]), rng.choice(media)]
        kind = rng.randrange(8)
        if kind == 0:
            fields = fields[: rng.randrange(len(fields))]  # too few fields
        elif kind == 1:
            fields += ["extra"] * rng.randrange(1, 4)  # too many
        elif kind == 2:
            fields[rng.randrange(len(fields))] = '"' + fields[1]  # an unclosed quote
        elif kind == 3:
            fields = [f'"{field}"' for field in fields]  # properly quoted
        elif kind == 4:
            fields[3] = "x" * rng.randrange(1, 200_000)  # a very long field
        lines.append(",".join(fields))
    lines.append("FZLONG,Quercus robur,A. Smith," + "y" * (1 << 20 | 5))  # over the line limit
    text = "\n".join(lines) + "\n"
    return text.encode("utf-8", "surrogateescape") + b"FZBYTES,Quercus \xe9\xff robur,A,good0.jpg\n"


META_XML = """<?xml version="1.0" encoding="UTF-8"?>
<archive xmlns="http://rs.tdwg.org/dwc/text/">
  <core encoding="UTF-8" fieldsTerminatedBy="," linesTerminatedBy="\\n" ignoreHeaderLines="1"
        rowType="http://rs.tdwg.org/dwc/terms/Occurrence">
    <files><location>occurrence.csv</location></files>
    <id index="0"/>
    <field index="1" term="http://rs.tdwg.org/dwc/terms/scientificName"/>
    <field index="2" term="http://rs.tdwg.org/dwc/terms/associatedMedia"/>
  </core>
</archive>
"""

_XML_ATTACKS = [
    '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]><archive>&b;</archive>',
    '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><archive>&x;</archive>',
    '<?xml version="1.0"?><!DOCTYPE a SYSTEM "http://example.org/a.dtd"><archive/>',
    "", "not xml at all", "<archive>", "<archive/>", "\x00\x01\x02", "<a>" * 10_000,
]


def malformed_meta(rng: random.Random, count: int) -> list[str]:
    """``count`` meta.xml texts: attacks, broken XML and plausible files with wrong values."""
    out = list(_XML_ATTACKS)
    swaps = [('index="0"', 'index="-1"'), ('index="1"', 'index="99"'), ('index="2"', 'index="x"'),
             ("occurrence.csv", "../../etc/passwd"), ("occurrence.csv", "/etc/hostname"),
             ("occurrence.csv", "missing.csv"), ('fieldsTerminatedBy=","', 'fieldsTerminatedBy=",,"'),
             ('fieldsTerminatedBy=","', 'fieldsTerminatedBy="\\t"'), ('ignoreHeaderLines="1"', 'ignoreHeaderLines="x"'),
             ('ignoreHeaderLines="1"', 'ignoreHeaderLines="-5"'), ('encoding="UTF-8" f', 'encoding="nonsense" f'),
             ("<core ", "<extension "), ("</core>", ""), ('linesTerminatedBy="\\n"', 'linesTerminatedBy=""'),
             ("rowType=", "rowtype="), ("http://rs.tdwg.org/dwc/terms/scientificName", "")]
    harmless = [("\n", "\r\n"), ("<files>", "<!-- a comment --><files>"), ("<core ", '<core dateFormat="YYYY" '),
                ("</core>", '<field term="http://rs.tdwg.org/dwc/terms/country" default="France"/></core>'),
                ('encoding="UTF-8" f', 'encoding="utf-8" f'), ("</archive>", "<unknown>x</unknown></archive>")]
    while len(out) < count:
        text = META_XML
        if rng.random() < 0.3:  # still a valid archive: readers must not refuse what is merely unusual
            edits = rng.sample(harmless, rng.randrange(1, 4))
        else:
            edits = rng.sample(swaps, rng.randrange(1, 4))
            if rng.random() < 0.2:
                text = text[: rng.randrange(len(text))]
        for old, new in edits:
            text = text.replace(old, new)
        out.append(text)
    return out


def _csv_records(data: bytes) -> int:
    """Records as the csv module delimits them (the oracle for "every row").

    With its default field limit, a record it cannot parse counting as one; a line over
    herbid's line limit is one record of its own (herbid skips and reports it unparsed).
    """
    lines = data.splitlines(keepends=True)
    long_lines = sum(len(line) > MAX_LINE_BYTES for line in lines)
    text = b"".join(b"\n" if len(line) > MAX_LINE_BYTES else line for line in lines).decode("utf-8", "replace")
    reader = csv.reader(io.StringIO(text, newline=""))
    records = long_lines
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return records - 1  # minus the header
        except csv.Error:
            row = ["unparseable"]
        records += len(row) > 1 or bool(row and row[0].strip())


def _removed(report: dict) -> int:
    return sum(1 for problem in report["problems"] if problem["action"] in REMOVING)


# --- the run -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rng() -> random.Random:
    return random.Random(SEED)


def test_fuzz_sources_account_for_every_input(rng: random.Random, tmp_path: Path) -> None:
    images_dir = tmp_path / "images" / "Quercus robur"
    images_dir.mkdir(parents=True)
    images = malformed_images(rng, 200)
    for index, (suffix, data) in enumerate(images):
        (images_dir / f"sheet{index:03d}{suffix}").write_bytes(data)
    table_dir = tmp_path / "table"
    table_dir.mkdir()
    (tmp_path / "outside.jpg").write_bytes(_valid_images(rng)[0][1])
    table = malformed_csv(rng, table_dir, 200)
    (table_dir / "occurrences.csv").write_bytes(table)
    metas = malformed_meta(rng, 60)

    options = BuildOptions(workers=1, progress=False, download_timeout=1.0)
    started = time.monotonic()
    with PeakRss().watching() as memory:
        from_images = build_dataset([tmp_path / "images"], tmp_path / "ds-images", options)
        from_table = build_dataset([table_dir / "occurrences.csv"], tmp_path / "ds-table", options)
        archives: list[tuple[int, ProblemLog]] = []
        for index, text in enumerate(metas):
            archive = tmp_path / "dwca" / f"a{index:02d}"
            archive.mkdir(parents=True)
            (archive / "meta.xml").write_text(text, encoding="utf-8", errors="surrogateescape")
            (archive / "occurrence.csv").write_text("id,scientificName,associatedMedia\n1,Quercus robur,x.jpg\n"
                                                    "2,,\n3,Viola,../../../etc/passwd\n")
            problems = ProblemLog()
            records, _ = read_sources([archive], problems, kind="dwca")
            archives.append((len(records), problems))
    elapsed = time.monotonic() - started

    assert elapsed < 50, f"fuzz run took {elapsed:.0f} s"
    assert memory.extra < MAX_EXTRA_RSS, f"resident memory grew by {memory.extra / 2**20:.0f} MiB"

    # every image file: in the manifest or removed with a reason
    manifest = pd.read_parquet(tmp_path / "ds-images" / "manifest.parquet")
    assert len(manifest) + _removed(from_images.report) == len(images)
    assert 0 < len(manifest) < len(images)  # some mutations still decode, most do not
    reasons = from_images.report["problems_by_reason"]
    assert any("decompression bomb" in reason or "pixels" in reason for reason in reasons), reasons

    # every CSV record: in the manifest or removed with a reason; nothing outside was read
    table_manifest = pd.read_parquet(tmp_path / "ds-table" / "manifest.parquet")
    assert len(table_manifest) + _removed(from_table.report) == _csv_records(table)
    assert not table_manifest["source_path"].astype(str).str.contains("outside|/etc/|/dev/").any()
    table_reasons = " | ".join(from_table.report["problems_by_reason"])
    for expected in ("outside the source folder", "unsupported URL scheme", "not a regular file", "line too long"):
        assert expected in table_reasons, (expected, table_reasons)

    # every archive: records read, or at least one problem naming it
    assert all(count > 0 or len(problems) > 0 for count, problems in archives)
    assert sum(count > 0 for count, _ in archives) >= 5  # some mutations leave a readable archive


def test_fuzz_upload_decoder_answers_every_upload(rng: random.Random, tmp_path_factory: pytest.TempPathFactory
                                                 ) -> None:
    from fastapi.testclient import TestClient

    from herbid.web.app import create_app
    from test_web import LOCAL, upload, web_assets

    assets = web_assets(tmp_path_factory)
    images = malformed_images(random.Random(SEED + 1), 200)
    statuses: list[int] = []
    details: list[str] = []
    started = time.monotonic()
    with TestClient(create_app(service=assets.service), base_url=LOCAL) as client, PeakRss().watching() as memory:
        for suffix, data in images:
            reply = client.post("/api/identify", files=upload(data, f"sheet{suffix}", "application/octet-stream"))
            statuses.append(reply.status_code)
            body = reply.json()
            details.append(body.get("detail", ""))
            # a one-line reason for every refusal, an identification for every success
            assert ("top" in body) if reply.status_code == 200 else (body["detail"] and "\n" not in body["detail"])
    elapsed = time.monotonic() - started

    assert len(statuses) == len(images)
    assert set(statuses) <= {200, 400, 413, 415, 422}, sorted(set(statuses))
    assert statuses.count(200) > 0 and sum(status >= 400 for status in statuses) > len(images) // 2
    # the header-only 60 000² PNG and the 1-bit 20 000² bomb: refused from the header, never decoded
    assert sum("decompression bomb" in detail for detail in details) >= 2, set(details)
    assert elapsed < 40, f"200 uploads took {elapsed:.0f} s"
    assert memory.extra < MAX_EXTRA_RSS, f"resident memory grew by {memory.extra / 2**20:.0f} MiB"
