"""Streaming sources and the plan-only build (issue 14).

The DwC-A reader joins the multimedia extension from Arrow columns, a chunk of core rows
at a time; these tests hold it to the row-by-row dictionary join it replaced (same
records, same problems), hold ``herbid dataset build --plan`` to the list-based read the
full build does (same counts, same URLs), and bound the memory both take.
"""

from __future__ import annotations

import json
import tracemalloc
import zipfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import SHARED_DATA, needs_shared_data
from herbid.cli.main import main
from herbid.data.build import BuildOptions, is_url, normalise_names, read_sources
from herbid.data.plan import PLAN, PLAN_URLS, plan_build
from herbid.data.sources import dwca, media_index
from herbid.data.sources.base import ProblemLog
from herbid.data.sources.media import MediaRef
from herbid.data.synthetic.archive import ArchiveSummary, write_dwca
from test_sources_dwc import write_archive

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
DWC = "http://rs.tdwg.org/dwc/terms/"
DC = "http://purl.org/dc/terms/"


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> ArchiveSummary:
    return write_dwca(tmp_path_factory.mktemp("dwca") / "archive.zip", 20_000, seed=1)


# --------------------------------------------------------------------------- the plan


def test_plan_counts_equal_the_full_read(archive: ArchiveSummary, tmp_path: Path) -> None:
    problems = ProblemLog()
    records, described = read_sources([archive.path], problems)
    read = int(described[0]["records"])
    records = normalise_names(records, problems, {})
    urls = sorted({r.source_path for r in records if is_url(r.source_path)})

    plan = plan_build([archive.path], tmp_path, BuildOptions(progress=False))

    counts = plan["counts"]
    assert (counts["records"], counts["with_usable_name"], counts["unique_urls"]) == (read, len(records), len(urls))
    assert (tmp_path / PLAN_URLS).read_text().splitlines() == urls
    assert plan["dropped_by_reason"] == problems.by_reason()  # every problem here drops something
    assert plan["hosts"] == dict(Counter(urlsplit(url).netloc for url in urls))
    assert (plan["sources"][0]["kind"], plan["sources"][0]["records"]) == ("dwca", read)
    # the generator's own bookkeeping, and URLs shared by two occurrences counted once
    assert plan["dropped_by_reason"]["orphaned multimedia row"] == archive.orphans == 20
    assert plan["dropped_by_reason"]["not an image"] == archive.not_images == 100
    assert counts["records"] == archive.media_rows - archive.orphans - archive.not_images - _unnamed_images(archive)
    assert counts["records_with_url"] - counts["unique_urls"] == 400  # one occurrence in 50 shares its sheet
    assert json.loads((tmp_path / PLAN).read_text())["counts"] == counts


def _unnamed_images(archive: ArchiveSummary) -> int:
    """Images of occurrences with a blank name (the source drops those rows whole), from the files."""
    images = Counter(line.split("\t", 1)[0] for line in _member(archive.path, "multimedia.txt")[1:]
                     if "\tStillImage\t" in line)
    blank = [line.split("\t", 1)[0] for line in _member(archive.path, "occurrence.txt")[1:] if "\t\t" in line]
    assert len(blank) == 200  # one unusable name in four is blank: 20 000 / 25 / 4
    return sum(images[key] for key in blank)


def _member(path: Path, name: str) -> list[str]:
    with zipfile.ZipFile(path) as archive:
        return archive.read(name).decode().splitlines()


def test_unreadable_source_and_line_breaks_in_urls(tmp_path: Path) -> None:
    table = tmp_path / "occurrences.csv"
    table.write_text('scientificName,associatedMedia\nViola alba,"http://a.example/x\ny.jpg"\n'
                     "Viola alba,http://a.example/z.jpg\nViola alba,http://A.example:81/z.jpg\n")

    plan = plan_build([table, tmp_path / "missing.zip"], tmp_path / "plan", BuildOptions(progress=False))

    assert [s["kind"] for s in plan["sources"]] == ["csv", "unreadable"]
    assert plan["sources"][1]["records"] == 0
    assert plan["counts"]["unique_urls"] == 3
    assert (tmp_path / "plan" / PLAN_URLS).read_text().splitlines() == [
        "http://A.example:81/z.jpg", "http://a.example/x%0Ay.jpg", "http://a.example/z.jpg"]
    assert plan["hosts"] == {"a.example": 2, "a.example:81": 1}
    assert sum(plan["dropped_by_reason"].values()) == 1  # the missing source, as the build reports it


def test_cli_plan_writes_the_plan_and_fetches_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = write_dwca(tmp_path / "small.zip", 500)
    out = tmp_path / "out"

    code = main(["dataset", "build", str(summary.path), "--out", str(out), "--plan", "--json", "--no-progress"])

    printed = json.loads(capsys.readouterr().out)
    assert code == 0
    assert printed["records"] == json.loads((out / PLAN).read_text())["counts"]["records"] > 0
    assert len((out / PLAN_URLS).read_text().splitlines()) == printed["unique_urls"]
    assert {p.name for p in out.iterdir()} == {PLAN, PLAN_URLS}  # no downloads, images or manifest


# --------------------------------------------------------------------------- the chunked join


class DictMediaIndex:
    """The join the chunked reader replaced: image references in a dict per core id."""

    def __init__(self) -> None:
        self.media: dict[str, list[MediaRef]] = {}
        self.joined: set[str] = set()

    def table(self, display: str) -> int:
        return 0

    def add(self, key: str, ref: MediaRef, table: int, line: int) -> None:
        self.media.setdefault(key, []).append(ref)

    def finish(self) -> None:
        pass

    def lookup(self, keys: Sequence[str | None]) -> list[list[MediaRef]]:
        self.joined.update(key for key in keys if key)
        return [list(self.media.get(key, [])) if key else [] for key in keys]

    def orphans(self) -> Iterator[tuple[str, MediaRef]]:
        for key, refs in self.media.items():
            if key not in self.joined:
                yield from ((key, ref) for ref in refs)


def _hostile_archive(root: Path, zipped: bool) -> Path:
    """Duplicate and blank ids, orphans, short rows, Latin-1 bytes, paths out, images out of order."""
    core_fields = "".join(f'<field index="{i}" term="{DWC}{t}"/>' for i, t in enumerate(
        ("scientificName", "recordedBy"), 1))
    media_fields = "".join(f'<field index="{i}" term="{DC}{t}"/>' for i, t in enumerate(
        ("identifier", "type", "license"), 1))
    attrs = 'fieldsTerminatedBy="," fieldsEnclosedBy="&quot;" ignoreHeaderLines="1"'
    meta = (f'<archive xmlns="http://rs.tdwg.org/dwc/text/"><core rowType="{DWC}Occurrence" {attrs}>'
            f'<files><location>occ.csv</location></files><id index="0"/>{core_fields}</core>'
            f'<extension rowType="http://rs.gbif.org/terms/1.0/Multimedia" {attrs}>'
            f'<files><location>media.csv</location></files><coreid index="0"/>{media_fields}</extension></archive>')
    occ = "id,name,by\n" + "".join(f"{i},{'Viola alba L.' if i % 7 else ''},Lee\n" for i in range(1, 80))
    occ += "5,Viola dup,Lee\n1,2\n,Viola nokey,Kim\n"
    media = "coreid,identifier,type,license\n" + "".join(
        f"{i % 90},https://img.example/{i}.jpg,StillImage,{'CC0' if i % 3 else ''}\n" for i in range(150, 0, -1))
    media += "3,https://img.example/3.mp3,Sound,\n,https://x.example/y.jpg,,\n5,../../etc/passwd,,\n1,2\n"
    files = {"meta.xml": meta.encode(), "occ.csv": occ.encode() + "81,Viola caf\xe9,Lee\n".encode("latin-1"),
             "media.csv": media.encode()}
    return write_archive(root, files, zipped)


def _read(location: Path) -> tuple[list[dict], Counter]:
    problems = ProblemLog()
    records = [r.to_dict() for r in dwca.DwcaSource(location).records(problems)]
    return records, Counter(problems)


@pytest.mark.parametrize("fixture", [
    "generated", "hostile-folder", "hostile-zip",
    *(pytest.param(name, marks=[pytest.mark.shared_data, needs_shared_data]) for name in ("seinet-folder", "seinet-zip")),
])
def test_chunked_reader_yields_the_records_of_the_row_by_row_join(
    fixture: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if fixture == "generated":
        location = write_dwca(tmp_path / "a.zip", 3_000, seed=2).path
    elif fixture.startswith("hostile"):
        location = _hostile_archive(tmp_path, zipped=fixture.endswith("zip"))
    else:
        location = SHARED_DATA / "dwca" / ("seinet-pectocarya" if fixture.endswith("folder") else
                                           "seinet-pectocarya-dwca.zip")
    with monkeypatch.context() as patch:
        patch.setattr(dwca, "MediaIndex", DictMediaIndex)
        patch.setattr(dwca, "CORE_CHUNK_ROWS", 1)
        expected, expected_problems = _read(location)
    chunked = _read(location)  # default chunk sizes: one chunk here
    monkeypatch.setattr(dwca, "CORE_CHUNK_ROWS", 37)
    monkeypatch.setattr(media_index, "FLUSH_ROWS", 50)
    small_chunks = _read(location)

    assert len(expected) > 20
    assert chunked == small_chunks == (expected, expected_problems)


def test_hash_collisions_never_join_the_wrong_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    location = _hostile_archive(tmp_path, zipped=True)
    expected = _read(location)
    monkeypatch.setattr(media_index, "key_hashes",
                        lambda keys: media_index.np.zeros(len(keys), dtype=media_index.np.int64))

    assert _read(location) == expected
    assert sum(r["source_path"].startswith("https://img.example/") for r in expected[0]) > 100


def test_media_index_holds_no_python_object_per_row(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = 30_000
    monkeypatch.setattr(media_index, "FLUSH_ROWS", 4096)
    tracemalloc.start()
    try:
        index = media_index.MediaIndex()
        table = index.table("media.txt")
        for i in range(rows):
            index.add(f"occ-{i // 2}", MediaRef(f"http://127.0.0.1:8765/{i}.jpg", "", "CC-BY"), table, i + 2)
        index.finish()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert held < 2**19, f"{held / rows:.0f} bytes of Python objects per row"  # a dict of refs: ~300 bytes a row
    assert [ref.value for ref in index.lookup(["occ-7", None, "occ-x"])[0]] == [
        "http://127.0.0.1:8765/14.jpg", "http://127.0.0.1:8765/15.jpg"]
    assert sum(1 for _ in index.orphans()) == rows - 2


# --------------------------------------------------------------------------- peak memory


@pytest.mark.slow
def test_plan_memory_extrapolates_under_2_gib_at_a_million(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``herbid dataset build --plan`` in a child process at 50 k and 200 k occurrences."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from dwca_scale import LIMIT_BYTES, measure

    small, large = (measure(rows, workdir=tmp_path) for rows in (50_000, 200_000))

    per_row = (large["plan_peak_rss_mib"] - small["plan_peak_rss_mib"]) * 2**20 / 150_000
    at_a_million = large["plan_peak_rss_mib"] * 2**20 + per_row * 800_000
    assert per_row < 1200, f"{per_row:.0f} bytes per occurrence"  # the list-based read: ~3 KB
    assert at_a_million < LIMIT_BYTES, f"{at_a_million / 2**30:.2f} GiB extrapolated"
    assert large["records"] > 290_000

