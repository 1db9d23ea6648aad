"""Every real set in ../shared/data builds without a traceback, with the expected counts.

These read real herbarium material that cannot be redistributed; they skip cleanly on a
user's clone where ``../shared/data`` is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from herbid.cli.main import main
from herbid.data.audit import audit_dataset
from herbid.data.build import BuildOptions, build_dataset
from herbid.data.dataset_folder import load_manifest
from herbid.data.sources.base import SourceError, open_source
from herbid.data.splits import split_dataset

OPTIONS = BuildOptions(workers=2, progress=False)


@pytest.fixture(scope="module")
def built(shared_data: Path, tmp_path_factory) -> dict[str, Path]:
    """Each shared set built once for the module (about 30 s in all on two cores)."""
    out = tmp_path_factory.mktemp("real")
    results = {}
    for name in ("harvard-herbaria", "viola-dev", "ny-herbarium", "cnh-portal"):
        build_dataset([shared_data / name], out / name, OPTIONS)
        results[name] = out / name
    return results


def _report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


def test_harvard_45_sheets_9_species(built) -> None:
    manifest = load_manifest(built["harvard-herbaria"])
    assert len(manifest) == 45 and manifest["scientificName"].nunique() == 9
    assert (manifest["scientificName"].value_counts() == 5).all()
    assert set(manifest["source"]) == {"filenames"}
    assert _report(built["harvard-herbaria"])["problems"] == []


def test_viola_175_sheets_18_folders(built) -> None:
    manifest = load_manifest(built["viola-dev"])
    assert len(manifest) == 175 and manifest["scientificName"].nunique() == 18
    assert manifest["scientificName"].str.fullmatch(r"V\d\d").all()  # opaque codes kept as labels


def test_ny_authorship_stripped_collectors_kept(built) -> None:
    manifest = load_manifest(built["ny-herbarium"])
    report = _report(built["ny-herbarium"])
    assert report["counts"]["records_read"] == 100
    # 4 sheets are named to genus only; every other sheet (96) is kept
    assert report["problems_by_reason"] == {"identified to genus only": 4}
    assert len(manifest) == 96
    row = manifest.set_index("catalogNumber").loc["00020326"]
    assert row["scientificName"] == "Forestiera eggersiana"
    assert row["verbatimScientificName"] == "Forestiera eggersiana Krug & Urb."
    assert row["recordedBy"] == "T. A. Zanoni, D. Atha & M. Vives"
    assert manifest["recordedBy"].notna().all()
    canonical = r"[A-Z][a-z-]+ [a-z-]+( (var\.|subsp\.|f\.) [a-z-]+)?"
    assert manifest["scientificName"].str.fullmatch(canonical).all()


def test_ny_collector_split_has_no_leaks(built, tmp_path: Path) -> None:
    folder = built["ny-herbarium"]
    summary = split_dataset(folder, by="collector", test_fraction=0.3, seed=0)
    assert summary.counts["test"] > 0
    audit = audit_dataset(folder)
    assert (audit["groups_in_both"], audit["identical_images_across"], audit["near_duplicates_across"]) == (0, 0, 0)


def test_ny_synonyms_merge_names(shared_data: Path, tmp_path: Path) -> None:
    synonyms = tmp_path / "synonyms.csv"
    synonyms.write_text("name,accepted_name\nVandellia diffusa,Lindernia diffusa\n"
                        "Cynoctonum mitreola,Mitreola petiolata\n")
    build_dataset([shared_data / "ny-herbarium"], tmp_path / "ds",
                  BuildOptions(workers=2, progress=False, synonyms=synonyms))
    names = set(load_manifest(tmp_path / "ds")["scientificName"])
    assert "Vandellia diffusa" not in names and "Cynoctonum mitreola" not in names
    assert {"Lindernia diffusa", "Mitreola petiolata"} <= names


def test_cnh_16_duplicate_pairs_reported(built) -> None:
    report = _report(built["cnh-portal"])
    duplicates = [p for p in report["problems"] if p["reason"] == "exact duplicate"]
    assert len(duplicates) == 16
    assert report["counts"]["after_exact_duplicates"] == 97  # 113 files, 97 distinct
    manifest = load_manifest(built["cnh-portal"])
    assert manifest["sha256"].is_unique
    assert "Carex tonsa" in set(manifest["scientificName"])


def test_seinet_archive_offline_reports_unreachable(shared_data: Path, tmp_path: Path, loopback_only) -> None:
    for archive in ("seinet-pectocarya", "seinet-pectocarya-dwca.zip"):
        out = tmp_path / archive
        result = build_dataset([shared_data / "dwca" / archive], out, OPTIONS)
        report = _report(out)
        assert result.images == 0
        assert report["counts"]["records_read"] == 35  # 131 occurrences, 35 image rows
        by_reason = report["problems_by_reason"]
        assert by_reason["no image"] == 101
        assert by_reason["unreachable"] == 35


@pytest.mark.parametrize(
    "sample",
    ["dwca-2extensions.zip", "dwca-invalid-simple-two.zip", "dwca-orphaned-rows.zip", "dwca-simple-csv-dos.zip",
     "dwca-star-test-archive.zip", "dwca-utf8-eol-test.zip", "gbif-results.zip"],
)
def test_dwca_reader_samples_build_or_fail_in_one_line(shared_data: Path, tmp_path: Path, sample: str, capsys) -> None:
    path = shared_data / "dwca" / "dwca-reader-samples" / sample
    code = main(["dataset", "build", str(path), "--out", str(tmp_path / "ds"), "--no-progress", "--json"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    report = _report(tmp_path / "ds")
    # none of these samples carries images: each ends with 0 images and a one-line reason
    assert code == 1
    reasons = [p["reason"] + (": " + p["detail"] if p["detail"] else "") for p in report["problems"]]
    assert reasons and all("\n" not in r for r in reasons)


def test_gbif_simple_csv_reports_no_image_column(shared_data: Path) -> None:
    source = open_source(shared_data / "dwca" / "gbif-simple-csv-pectocarya.zip")
    from herbid.data.sources.base import ProblemLog

    problems = ProblemLog()
    assert list(source.records(problems)) == []
    assert [p.reason for p in problems] == ["no image column"]
    assert "2472" in problems.items[0].detail


def test_unknown_location_is_a_source_error(tmp_path: Path) -> None:
    (tmp_path / "notes.bin").write_bytes(b"\x00\x01")
    with pytest.raises(SourceError):
        open_source(tmp_path / "notes.bin")
