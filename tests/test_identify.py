"""Identification: probabilities, ranks and suggestions, same pixels as the dataset,
resumable fault-tolerant batches, Darwin Core output, ``herbid identify``.

One small_cnn bundle trained for one short epoch on 4 synthetic species (3 genera,
2 families) serves every test; its accuracy does not matter, only consistency.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader

import herbid
from herbid.cli.main import main
from herbid.data.build import BuildOptions, build_dataset
from herbid.data.dataset_folder import load_manifest
from herbid.data.imaging import ImageRejected
from herbid.data.splits import split_dataset
from herbid.data.synthetic import make_synthetic_collection
from herbid.evaluation.evaluate import evaluate_bundle
from herbid.identification import Identifier, JournalError, identify_paths
from herbid.identification.batch import DWC_COLUMNS, read_journal
from herbid.inference.forward import forward
from herbid.inference.pixels import eval_transform
from herbid.inference.sheets import ManifestDataset, select_rows
from herbid.models.base import Preprocessing
from herbid.training.config import load_config
from herbid.training.loop import train


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("identify")
    source = make_synthetic_collection(root / "src", n_species=4, per_species=6, seed=11, size=(160, 240))
    dataset = build_dataset([source], root / "data", BuildOptions(workers=1, progress=False)).out
    split_dataset(dataset, by="specimen", test_fraction=0.3, seed=0)
    config = load_config(None, {"arch": "small_cnn", "recipe": "smoke", "epochs": 1, "batch_size": 8,
                                "workers": 0, "device": "cpu", "dataset": str(dataset), "out": str(root / "run")})
    run = train(config, progress=False)
    identifier = Identifier(run.run_dir, device="cpu", batch_size=4)
    test = select_rows(load_manifest(dataset), split="test")
    return SimpleNamespace(root=root, dataset=dataset, run=run, identifier=identifier, test=test,
                           originals=[Path(p) for p in test["source_path"]],
                           every_sheet=sorted(Path(p) for p in load_manifest(dataset)["source_path"]))


def _crafted(identifier: Identifier, values: list[float]):
    """An Identification from a hand-made probability vector (species in class order)."""
    return identifier.from_probabilities(torch.tensor([values]), top_k=5)[0]


# ---------------------------------------------------------------- probabilities


def test_top_k_is_sorted_sums_at_most_one_and_is_clamped(setup) -> None:
    data = setup.originals[0].read_bytes()
    three = setup.identifier.identify_bytes(data, top_k=3)
    everything = setup.identifier.identify_bytes(data, top_k=10)
    assert len(three.top) == 3 and len(everything.top) == 4  # min(k, n_species)
    probabilities = [entry["probability"] for entry in everything.top]
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(e["probability"] for e in three.top) <= 1.0 + 1e-6
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
    assert set(three.top[0]) == {"scientificName", "probability", "genus", "family"}


def test_genus_and_family_are_sums_of_species_probabilities(setup) -> None:
    identifier = setup.identifier
    batch = torch.stack([identifier.sheet_tensor(p.read_bytes()) for p in setup.originals[:3]])
    probabilities = identifier.probabilities(batch)
    for row, result in zip(probabilities, identifier.identify_tensors(batch)):
        for rank in ("genus", "family"):
            sums: dict[str, float] = {}
            for name, p in zip(identifier.species, row.tolist()):
                taxon = identifier.bundle.taxonomy[name][rank]
                sums[taxon] = sums.get(taxon, 0.0) + p
            best = max(sums, key=sums.get)
            assert getattr(result, rank) == {"name": best, "probability": pytest.approx(sums[best], abs=1e-6)}


def test_probabilities_use_the_bundle_temperature(setup) -> None:
    bundle = dataclasses.replace(setup.identifier.bundle, temperature=2.5)
    hot = Identifier(bundle, device="cpu")
    batch = setup.identifier.sheet_tensor(setup.originals[0].read_bytes()).unsqueeze(0)
    expected = (setup.identifier.logits(batch) / 2.5).softmax(dim=1)
    assert torch.allclose(hot.probabilities(batch), expected)
    assert "T=2.5" in hot.identify_tensors(batch)[0].remarks()


def test_suggested_rank_rule_on_crafted_probabilities(setup) -> None:
    identifier = setup.identifier
    # class order: Fictaria lobata, Placeholderia graminea, Synthetica lanceolata, Synthetica ovata
    assert identifier.species == ["Fictaria lobata", "Placeholderia graminea", "Synthetica lanceolata",
                                  "Synthetica ovata"]
    sure = _crafted(identifier, [0.05, 0.05, 0.6, 0.3])
    assert (sure.uncertain, sure.suggested_rank, sure.suggested_name) == (False, "species", "Synthetica lanceolata")
    edge = _crafted(identifier, [0.5, 0.2, 0.2, 0.1])  # exactly the threshold counts as sure
    assert not edge.uncertain
    genus = _crafted(identifier, [0.05, 0.15, 0.4, 0.4])
    assert (genus.uncertain, genus.suggested_rank, genus.suggested_name) == (True, "genus", "Synthetica")
    family = _crafted(identifier, [0.3, 0.1, 0.3, 0.3])  # genus 0.6 < 0.7, Synthaceae 0.9
    assert (family.suggested_rank, family.suggested_name) == ("family", "Synthaceae")
    nothing = _crafted(identifier, [0.36, 0.34, 0.15, 0.15])  # Synthaceae 0.66
    assert (nothing.uncertain, nothing.suggested_rank, nothing.suggested_name) == (True, "none", None)
    record = nothing.to_dwc_identification(date=dt.date(2024, 5, 1))
    assert (record["scientificName"], record["taxonRank"], record["identificationQualifier"]) == \
        ("Fictaria lobata", "species", "cf.")
    assert _crafted(identifier, [0.05, 0.15, 0.4, 0.4]).to_dwc_identification()["taxonRank"] == "genus"


def test_without_taxonomy_there_is_no_genus_or_family(setup) -> None:
    bare = Identifier(dataclasses.replace(setup.identifier.bundle, taxonomy={}), device="cpu")
    result = _crafted(bare, [0.05, 0.15, 0.4, 0.4])
    assert result.genus is None and result.family is None
    assert result.suggested_rank == "none" and result.top[0]["genus"] is None


# ------------------------------------------------------------ same pixels as training


def test_original_sheet_gives_the_stored_copys_tensor_and_prediction(setup) -> None:
    identifier = setup.identifier
    frame = setup.test
    dataset = ManifestDataset(setup.dataset, frame, identifier.species, eval_transform(identifier.bundle.preprocessing))
    logits = forward(identifier.bundle.model, DataLoader(dataset, batch_size=8), "cpu",
                     tta=identifier.bundle.preprocessing.tta).logits
    ours = [identifier.identify_bytes(p.read_bytes(), top_k=1).top[0]["scientificName"] for p in setup.originals]
    for i, path in enumerate(setup.originals):
        assert torch.equal(identifier.sheet_tensor(path.read_bytes()), dataset[i][0])
    assert ours == [identifier.species[i] for i in logits.argmax(dim=1).tolist()]
    truth = frame["scientificName"].tolist()
    top1 = sum(a == b for a, b in zip(ours, truth)) / len(truth)
    assert top1 == pytest.approx(evaluate_bundle(identifier.bundle, setup.dataset, device="cpu")["top1"])


def test_resize_above_256_reads_the_large_copy_like_the_dataset(setup) -> None:
    preprocessing = Preprocessing(input_size=288, resize_size=320, mean=(0.5,) * 3, std=(0.5,) * 3)
    identifier = Identifier(dataclasses.replace(setup.identifier.bundle, preprocessing=preprocessing), device="cpu")
    dataset = ManifestDataset(setup.dataset, setup.test.iloc[:2], identifier.species, eval_transform(preprocessing))
    for i, path in enumerate(setup.originals[:2]):
        tensor = identifier.sheet_tensor(path.read_bytes())
        assert tensor.shape == (3, 288, 288) and torch.equal(tensor, dataset[i][0])


@pytest.mark.parametrize("resize_size", [128, 320])  # the 256 px copy and the large copy
def test_sheet_shaped_input_matches_the_dataset(setup, resize_size: int) -> None:
    # aspect 1.5: the sheet keeps its portrait shape instead of being squeezed to a square
    preprocessing = Preprocessing(input_size=resize_size - 32, resize_size=resize_size, mean=(0.5,) * 3,
                                  std=(0.5,) * 3, aspect=1.5)
    identifier = Identifier(dataclasses.replace(setup.identifier.bundle, preprocessing=preprocessing), device="cpu")
    dataset = ManifestDataset(setup.dataset, setup.test.iloc[:2], identifier.species, eval_transform(preprocessing))
    for i, path in enumerate(setup.originals[:2]):
        tensor = identifier.sheet_tensor(path.read_bytes())
        assert tensor.shape == (3, round((resize_size - 32) * 1.5), resize_size - 32) == (3, *preprocessing.input_shape)
        assert torch.equal(tensor, dataset[i][0])
    assert identifier.identify_bytes(setup.originals[0].read_bytes()).top


def test_bad_bytes_are_rejected_with_a_reason(setup) -> None:
    with pytest.raises(ImageRejected, match="empty"):
        setup.identifier.identify_bytes(b"")
    with pytest.raises(ImageRejected, match="not an image"):
        setup.identifier.identify_bytes(b"scientificName,genus\n")


# ------------------------------------------------------------------------ batches


def _sheets(setup, folder: Path, n: int = 6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for path in setup.every_sheet[:n]:
        shutil.copy2(path, folder / path.name)
    return folder


def test_batch_resumes_and_skips_what_is_done(setup, tmp_path: Path) -> None:
    sheets = _sheets(setup, tmp_path / "sheets")
    out = tmp_path / "results.csv"
    first = identify_paths(setup.identifier, [sheets], out, fmt="csv", progress=False)
    assert (first.identified, first.skipped_done, first.failed) == (6, 0, 0)
    journal = tmp_path / "results.csv.jsonl"
    assert len(read_journal(journal)) == 6
    with open(journal, "a", encoding="utf-8") as handle:
        handle.write('{"path": "torn')  # a kill mid-write must not break the rerun
    again = identify_paths(setup.identifier, [sheets], out, fmt="csv", progress=False)
    assert (again.identified, again.skipped_done, again.failed) == (0, 6, 0)
    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    assert len(rows) == 6 and {r["scientificName_1"] for r in rows} <= set(setup.identifier.species)
    # one more sheet: only that one is identified
    shutil.copy2(setup.every_sheet[6], sheets / setup.every_sheet[6].name)
    third = identify_paths(setup.identifier, [sheets], out, fmt="csv", progress=False)
    assert (third.identified, third.skipped_done) == (1, 6)
    assert len(list(csv.DictReader(open(out, encoding="utf-8")))) == 7
    as_json = identify_paths(setup.identifier, [sheets], tmp_path / "results.json", fmt="json", progress=False)
    records = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert as_json.identified == 7 and [r["path"] for r in records] == sorted(str(p) for p in sheets.iterdir())
    # another model must not resume into this journal
    other = dataclasses.replace(setup.identifier.bundle, provenance={"created": "another-run"})
    with pytest.raises(JournalError, match="another model"):
        identify_paths(Identifier(other, device="cpu"), [sheets], out, fmt="csv", progress=False)


def test_bad_files_get_error_records_and_the_rest_succeed(setup, tmp_path: Path) -> None:
    sheets = _sheets(setup, tmp_path / "sheets", n=4)
    good = setup.every_sheet[0].read_bytes()
    (sheets / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (sheets / "empty.jpg").write_bytes(b"")
    (sheets / "label.jpg").write_text("not a picture of a plant\n")
    notes = tmp_path / "notes.txt"  # named explicitly: tried, whatever the suffix
    notes.write_text("hello")
    out = tmp_path / "out.jsonl"
    summary = identify_paths(setup.identifier, [sheets, notes], out, fmt="jsonl", progress=False, workers=2)
    assert (summary.identified, summary.failed) == (4, 4)
    errors = {Path(r["path"]).name: r["error"] for r in read_journal(out) if "error" in r}
    assert set(errors) == {"truncated.jpg", "empty.jpg", "label.jpg", "notes.txt"}
    assert "truncated" in errors["truncated.jpg"] and "empty" in errors["empty.jpg"]
    assert "not an image" in errors["label.jpg"]
    assert all("\n" not in reason for reason in errors.values())
    rerun = identify_paths(setup.identifier, [sheets, notes], out, fmt="jsonl", progress=False)
    assert (rerun.identified, rerun.failed, rerun.skipped_done, rerun.previously_failed) == (0, 0, 8, 4)
    retry = identify_paths(setup.identifier, [sheets, notes], out, fmt="jsonl", progress=False, retry_failed=True)
    assert (retry.identified, retry.failed, retry.skipped_done) == (0, 4, 4)


def test_darwin_core_rows(setup, tmp_path: Path) -> None:
    sheets = _sheets(setup, tmp_path / "sheets", n=3)
    (sheets / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    out = tmp_path / "identifications.csv"
    identify_paths(setup.identifier, [sheets], out, fmt="dwc", progress=False, date=dt.date(2024, 5, 1))
    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    assert len(rows) == 3  # a sheet that failed has no identification
    assert tuple(rows[0]) == DWC_COLUMNS
    for row in rows:
        assert row["identifiedBy"] == f"herbid {herbid.__version__} ({setup.identifier.model_id})"
        assert re.fullmatch(r"herbid \S+ \(small_cnn@.+\)", row["identifiedBy"])
        assert row["dateIdentified"] == "2024-05-01"
        assert row["identificationVerificationStatus"] == "unverified"
        assert row["taxonRank"] in {"species", "genus", "family"}
        assert row["scientificName"] and Path(row["associatedMedia"]).is_file()
        remarks = row["identificationRemarks"]
        assert remarks.startswith("top-4: ") and "temperature scaling T=" in remarks


def test_cli_identify_json(setup, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sheets = _sheets(setup, tmp_path / "sheets", n=3)
    code = main(["identify", str(setup.run.run_dir), str(sheets), "--json", "--top-k", "2", "--device", "cpu",
                 "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0 and "identified 3" in captured.err
    results = json.loads(captured.out)
    assert len(results) == 3
    for item in results:
        assert {"path", "top", "genus", "family", "uncertain", "suggested_rank", "suggested_name"} <= set(item)
        assert len(item["top"]) == 2
        expected = setup.identifier.identify_path(item["path"]).top[0]["scientificName"]
        assert item["top"][0]["scientificName"] == expected
    # with --out: written resumably, nothing on stdout
    out = tmp_path / "r.jsonl"
    assert main(["identify", str(setup.run.run_dir), str(sheets), "--out", str(out), "--no-progress",
                 "--device", "cpu"]) == 0
    assert capsys.readouterr().out == "" and len(read_journal(out)) == 3
