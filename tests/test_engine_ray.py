"""Ray as herbid's distributed engine: the same rows, files and numbers as the local engine.

Every stage that runs on an engine (dataset build's decode/store, dataset clean, identify,
index build) is run once on each engine over the same inputs, and the outputs are
compared value by value. One local Ray (2 CPUs, 200 MiB object store) serves the whole
session; :class:`herbid.engine.RayEngine` uses a Ray already started and leaves it running.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from herbid.cleaning.dataset import clean_dataset
from herbid.cli.main import main
from herbid.data.build import BuildOptions, build_dataset
from herbid.data.dataset_folder import load_manifest
from herbid.data.synthetic import make_synthetic_collection
from herbid.data.synthetic.catalogue import SPECIES
from herbid.engine import RAY_MISSING, LocalEngine, RayEngine, make_engine
from herbid.errors import MissingExtra
from herbid.identification import Identifier, identify_paths
from herbid.identification.index import SpecimenIndex, build_index
from herbid.inference.bundle import save_bundle
from herbid.models.registry import create_model

ray = pytest.importorskip("ray")


@pytest.fixture(scope="session")
def local_ray() -> None:
    """One local Ray for the session (startup costs ~6 s); engines find it and leave it running."""
    ray.init(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def sheets(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """12 synthetic sheets in species folders, plus one broken file and one byte-identical copy."""
    root = tmp_path_factory.mktemp("engine")
    source = make_synthetic_collection(root / "src", n_species=3, per_species=4, seed=5, size=(160, 240),
                                       layout="folders")
    first_species = min(p for p in source.iterdir() if p.is_dir())
    first_sheet = min(first_species.glob("*.jpg"))
    shutil.copy(first_sheet, first_species / "copy-of-first.jpg")
    (first_species / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return SimpleNamespace(root=root, source=source)


def _build(sheets: SimpleNamespace, engine: str) -> Path:
    options = BuildOptions(workers=2, progress=False, engine=engine)
    return build_dataset([sheets.source], sheets.root / f"built-{engine}", options).out


def _file_hashes(folder: Path, relative_paths: list[str]) -> list[str]:
    return [hashlib.sha256((folder / rel).read_bytes()).hexdigest() for rel in relative_paths]


def _assert_same_builds(local: Path, remote: Path) -> None:
    rows_local, rows_ray = load_manifest(local), load_manifest(remote)
    assert rows_local.to_dict("records") == rows_ray.to_dict("records")
    for column in ("image_path", "large_image_path"):
        paths = rows_local[column].tolist()
        assert _file_hashes(local, paths) == _file_hashes(remote, paths)
    reports = [json.loads((folder / "report.json").read_text()) for folder in (local, remote)]
    for key in ("counts", "problems_by_reason", "problems", "near_duplicates", "manifest_sha256"):
        assert reports[0][key] == reports[1][key], key


@pytest.fixture(scope="module")
def built(sheets: SimpleNamespace, local_ray: None) -> SimpleNamespace:
    return SimpleNamespace(local=_build(sheets, "local"), ray=_build(sheets, "ray"))


def test_build_on_ray_gives_the_local_rows_files_and_report(built: SimpleNamespace) -> None:
    _assert_same_builds(built.local, built.ray)
    report = json.loads((built.ray / "report.json").read_text())
    assert report["counts"]["records_read"] == 14
    assert report["counts"]["images"] == 12  # the broken file quarantined, the copy dropped
    assert report["problems_by_reason"].get("exact duplicate") == 1
    assert report["options"]["engine"] == "ray"


def test_clean_on_ray_gives_the_local_rows_and_files(built: SimpleNamespace, tmp_path: Path) -> None:
    local = clean_dataset(built.local, tmp_path / "local", mode="mask", workers=2, progress=False)
    remote = clean_dataset(built.local, tmp_path / "ray", mode="mask", workers=2, progress=False, engine="ray")
    assert local.images == 12
    assert (remote.images, remote.no_plant, remote.boxes_removed) == (local.images, local.no_plant,
                                                                       local.boxes_removed)
    rows_local, rows_ray = load_manifest(tmp_path / "local"), load_manifest(tmp_path / "ray")
    assert rows_local.to_dict("records") == rows_ray.to_dict("records")
    paths = rows_local["large_image_path"].tolist()
    assert _file_hashes(tmp_path / "local", paths) == _file_hashes(tmp_path / "ray", paths)


@pytest.fixture(scope="module")
def bundle(built: SimpleNamespace) -> Path:
    """An untrained small_cnn over the built species: parity needs consistent numbers, not good ones."""
    rows = load_manifest(built.local)
    species = sorted(set(rows["scientificName"]))
    torch.manual_seed(0)
    model, _ = create_model("small_cnn", len(species))
    taxonomy = {s.name: {"genus": s.genus, "family": s.family} for s in SPECIES if s.name in species}
    return save_bundle(built.local.parent / "bundle", model=model.eval(), arch="small_cnn", species=species,
                       taxonomy=taxonomy, preprocessing=model.preprocessing, provenance={"created": "test"})


def test_identify_on_ray_gives_the_local_records(sheets: SimpleNamespace, bundle: Path) -> None:
    identifier = Identifier(bundle, device="cpu", batch_size=4)
    local = identify_paths(identifier, [sheets.source], top_k=3, progress=False)
    remote = identify_paths(identifier, [sheets.source], top_k=3, progress=False, engine="ray")
    assert (remote.identified, remote.failed) == (local.identified, local.failed) == (13, 1)
    assert [r["path"] for r in remote.records] == [r["path"] for r in local.records]
    for mine, theirs in zip(local.records, remote.records):
        if "error" in mine:
            assert theirs == mine
            continue
        assert [e["scientificName"] for e in theirs["top"]] == [e["scientificName"] for e in mine["top"]]
        assert [e["probability"] for e in theirs["top"]] == pytest.approx([e["probability"] for e in mine["top"]],
                                                                           abs=1e-5)
        strip = ("top", "genus", "family")
        assert {k: v for k, v in theirs.items() if k not in strip} == {k: v for k, v in mine.items() if k not in strip}


def test_index_on_ray_gives_the_local_embeddings(built: SimpleNamespace, bundle: Path, tmp_path: Path) -> None:
    local = SpecimenIndex.load(build_index(bundle, built.local, tmp_path / "local", batch_size=5, device="cpu",
                                           progress=False))
    remote = SpecimenIndex.load(build_index(bundle, built.local, tmp_path / "ray", batch_size=5, device="cpu",
                                            progress=False, engine="ray"))
    assert remote.embeddings.shape == local.embeddings.shape == (12, 64)
    np.testing.assert_allclose(remote.embeddings, local.embeddings, atol=1e-5)
    assert remote.metadata.to_dict("records") == local.metadata.to_dict("records")


def test_engines_map_in_input_order_whatever_the_chunking(local_ray: None) -> None:
    items = [f"/sheets/{i:03d}/s{i}.jpg" for i in range(37)]
    expected = [Path(item).name for item in items]
    # a function the Ray workers can import (this test module is not on their path)
    assert list(LocalEngine(2).map(os.path.basename, items, desc="names", progress=False)) == expected
    assert list(RayEngine(2).map(os.path.basename, items, desc="names", progress=False)) == expected


def test_ray_engine_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch, sheets: SimpleNamespace,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` does without the extra
    with pytest.raises(MissingExtra) as raised:
        make_engine("ray")
    assert str(raised.value) == RAY_MISSING == "--engine ray needs Ray: pip install 'herbid[scale]'"
    code = main(["dataset", "build", str(sheets.source), "--out", str(sheets.root / "never"), "--engine", "ray",
                 "--no-progress"])
    assert code == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"herbid: error: {RAY_MISSING}"]


def test_address_needs_the_ray_engine(sheets: SimpleNamespace, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["dataset", "build", str(sheets.source), "--out", str(sheets.root / "never"),
                 "--address", "ray://head:10001", "--no-progress"])
    assert code == 1
    assert capsys.readouterr().err.strip() == "herbid: error: --address needs --engine ray"


@pytest.mark.shared_data
def test_build_on_ray_matches_local_on_real_sheets(shared_data: Path, local_ray: None, tmp_path: Path) -> None:
    """12 real Harvard sheets (~1300×1800 px colour scans), both engines."""
    source = tmp_path / "harvard"
    source.mkdir()
    for path in sorted((shared_data / "harvard-herbaria").glob("*.jpg"))[:12]:
        (source / path.name).symlink_to(path)
    outs = {}
    for engine in ("local", "ray"):
        options = BuildOptions(workers=2, progress=False, engine=engine, follow_symlinks=True)
        outs[engine] = build_dataset([source], tmp_path / engine, options)
    assert outs["local"].images == outs["ray"].images == 12
    _assert_same_builds(outs["local"].out, outs["ray"].out)


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.parametrize("folder", ["harvard-herbaria", "ny-herbarium", "viola-dev", "cnh-portal"])
def test_build_on_ray_matches_local_on_every_real_set(shared_data: Path, local_ray: None, tmp_path: Path,
                                                      folder: str) -> None:
    """Issue 14's parity on the real sets, whole: folders, a CSV with synonyms and verbatim
    names (NY), byte-identical copies (CNH), 1000 px to 21 MP scans."""
    outs = {engine: build_dataset([shared_data / folder], tmp_path / engine,
                                  BuildOptions(workers=2, progress=False, engine=engine))
            for engine in ("local", "ray")}
    assert outs["local"].images == outs["ray"].images > 40
    _assert_same_builds(outs["local"].out, outs["ray"].out)
