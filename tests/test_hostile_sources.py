"""Hostile local inputs: every path confined, every file checked before it is read.

One test per row of the "hostile inputs" issue (rows 1, 2, 3, 4 and 10). Each would hang,
eat memory, read an outside file or take minutes on the code before the fix; each is
bounded in time so that a regression fails instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import random
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from herbid.data.build import BuildOptions, build_dataset
from herbid.data.dataset_folder import load_manifest
from herbid.data.records import Problem
from herbid.data.sources.base import ProblemLog
from herbid.data.sources.tabular import DwcCsvSource


def _options(**kw) -> BuildOptions:
    return BuildOptions(workers=1, progress=False, **kw)


def _sheet(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 255, (24, 16, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).resize((160, 240), Image.Resampling.NEAREST).save(path, quality=90)
    return path


def _problems(out: Path) -> list[dict]:
    return json.loads((out / "report.json").read_text())["problems"]


def _fifo(path: Path, request: pytest.FixtureRequest) -> Path:
    """A named pipe; a reader stuck on it (a regression) is released at teardown."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)

    def release() -> None:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))  # unblocks a reader waiting in open()
        except OSError:
            pass  # no reader: nothing was stuck

    request.addfinalizer(release)
    return path


def _csv(folder: Path, rows: list[tuple[str, str]], name: str = "occurrences.csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("scientificName,associatedMedia\n" + "".join(f'{n},"{m}"\n' for n, m in rows))
    return path


# --------------------------------------------------------------------------- row 1


@pytest.mark.timeout(30)
def test_row01_dev_zero_media_not_read(tmp_path: Path) -> None:
    from herbid.data.safe_files import FileRefused, read_regular_file

    export = tmp_path / "export"
    _sheet(export / "images" / "a.jpg", 1)
    (export / "images" / "big.jpg").write_bytes(b"\xff\xd8\xff" + b"\0" * (2 << 20))
    table = _csv(export, [("Viola alba", "images/a.jpg"), ("Viola alba", "file:///dev/zero"),
                          ("Viola alba", "images/big.jpg")])

    # even where the user allows /dev, a device is never read; a big file is refused unread
    out = tmp_path / "ds"
    result = build_dataset([table], out, _options(media_roots=(Path("/dev"),), max_file_bytes=1 << 20))
    assert result.images == 1
    found = {(p["stage"], p["reason"], p["detail"]) for p in _problems(out)}
    assert ("image", "not a regular file (character device)", "/dev/zero") in found
    assert ("image", f"file too large ({(2 << 20) + 3:,} bytes > {1 << 20:,} byte limit)",
            str(export / "images" / "big.jpg")) in found

    # by default /dev is outside the CSV's folder: refused at the source, never opened
    out = tmp_path / "ds2"
    assert build_dataset([table], out, _options()).images == 1
    assert [(p["reason"], p["detail"]) for p in _problems(out) if p["stage"] == "source"] == [
        ("media path outside the source folder", "file:///dev/zero")]

    with pytest.raises(FileRefused, match=r"not a regular file \(character device\)"):
        read_regular_file(Path("/dev/zero"), 1 << 20)
    assert read_regular_file(export / "images" / "a.jpg", 1 << 20) == (export / "images" / "a.jpg").read_bytes()


# --------------------------------------------------------------------------- row 2


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A tiny trained bundle (one smoke epoch), as tests/test_identify.py makes one."""
    from herbid.data.splits import split_dataset
    from herbid.data.synthetic import make_synthetic_collection
    from herbid.training.config import load_config
    from herbid.training.loop import train

    root = tmp_path_factory.mktemp("hostile-identify")
    source = make_synthetic_collection(root / "src", n_species=3, per_species=4, seed=5, size=(160, 240))
    dataset = build_dataset([source], root / "data", _options()).out
    split_dataset(dataset, by="specimen", test_fraction=0.3, seed=0)
    config = load_config(None, {"arch": "small_cnn", "recipe": "smoke", "epochs": 1, "batch_size": 8,
                                "workers": 0, "device": "cpu", "dataset": str(dataset), "out": str(root / "run")})
    run = train(config, progress=False)
    sheet = Path(load_manifest(dataset)["source_path"].iloc[0])
    return SimpleNamespace(run_dir=run.run_dir, sheet=sheet)


@pytest.mark.timeout(60)
def test_row02_fifo_reported_not_hung(tmp_path: Path, request: pytest.FixtureRequest, bundle, capsys) -> None:
    from herbid.cli.main import main

    reason = "not a regular file (named pipe)"
    # a species-folder source
    folder = tmp_path / "folders"
    _sheet(folder / "Viola_alba" / "a.jpg", 1)
    pipe = _fifo(folder / "Viola_alba" / "x.jpg", request)
    out = tmp_path / "ds1"
    assert build_dataset([folder], out, _options()).images == 1
    assert [(p["where"], p["reason"]) for p in _problems(out)] == [(str(pipe), reason)]

    # a CSV naming a pipe inside its own folder
    export = tmp_path / "export"
    _sheet(export / "images" / "a.jpg", 2)
    pipe = _fifo(export / "images" / "x.jpg", request)
    table = _csv(export, [("Viola alba", "images/a.jpg"), ("Viola alba", "images/x.jpg")])
    out = tmp_path / "ds2"
    assert build_dataset([table], out, _options()).images == 1
    assert [(p["reason"], p["detail"]) for p in _problems(out)] == [(reason, str(pipe.resolve()))]

    # herbid identify over a folder holding a pipe
    sheets = tmp_path / "sheets"
    sheets.mkdir()
    (sheets / "good.jpg").write_bytes(bundle.sheet.read_bytes())
    pipe = _fifo(sheets / "x.jpg", request)
    code = main(["identify", str(bundle.run_dir), str(sheets), "--json", "--device", "cpu", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0
    records = {Path(r["path"]).name: r for r in json.loads(captured.out)}
    assert records["x.jpg"]["error"] == reason and "error" not in records["good.jpg"]
    assert f"herbid: {pipe}: {reason}" in captured.err


# --------------------------------------------------------------------------- row 3


@pytest.mark.timeout(30)
def test_row03_csv_paths_outside_folder_refused(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    outside = tmp_path / "outside"
    pipe = _fifo(outside / "pipe.jpg", request)  # would hang if anything opened it
    secret = _sheet(outside / "secret.jpg", 7)
    export = tmp_path / "export"
    _sheet(export / "images" / "a.jpg", 1)
    (export / "images" / "link.jpg").symlink_to(secret)  # inside by name, outside in fact
    hostile = ["file:///etc/passwd", "../../etc/shadow", "/etc/hostname", str(pipe), "images/link.jpg"]
    table = _csv(export, [("Viola alba", "images/a.jpg"), *(("Viola alba", v) for v in hostile)])

    out = tmp_path / "ds"
    result = build_dataset([table], out, _options())
    assert result.images == 1
    assert [(p["stage"], p["where"], p["reason"], p["detail"]) for p in _problems(out)] == [
        ("source", f"{table}:{line}", "media path outside the source folder", value)
        for line, value in enumerate(hostile, start=3)
    ]
    assert load_manifest(out)["source_path"].tolist() == [str(export / "images" / "a.jpg")]

    # the zip of an export: its folder is the boundary
    archive = tmp_path / "zipped" / "export.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as handle:
        handle.write(table, "occurrences.csv")
    problems = ProblemLog()
    records = list(DwcCsvSource(archive).records(problems))
    inside = archive.parent.resolve() / "images"
    assert [r.source_path for r in records] == [str(inside / "a.jpg"), str(inside / "link.jpg")]
    assert [p.detail for p in problems] == hostile[:4]
    assert {p.reason for p in problems} == {"media path outside the source folder"}

    # a folder the user names explicitly lets paths into it (the pipe is still never read)
    table = _csv(export, [("Viola alba", "images/a.jpg"), ("Viola alba", str(secret)),
                          ("Viola alba", str(pipe)), ("Viola alba", "/etc/hostname")], name="named.csv")
    out = tmp_path / "ds2"
    assert build_dataset([table], out, _options(media_roots=(outside,))).images == 2
    assert [(p["reason"], p["detail"]) for p in _problems(out)] == [
        ("media path outside the source folder", "/etc/hostname"),
        ("not a regular file (named pipe)", str(pipe.resolve())),
    ]
    # the same from the command line
    from herbid.cli.main import main

    out = tmp_path / "ds3"
    assert main(["dataset", "build", str(table), "--out", str(out), "--media-root", str(outside),
                 "--workers", "1", "--no-progress", "--json"]) == 0
    assert load_manifest(out)["source_path"].tolist() == [str(export / "images" / "a.jpg"), str(secret.resolve())]


# --------------------------------------------------------------------------- row 4


@pytest.mark.timeout(30)
def test_row04_symlink_out_of_folder_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    secret = _sheet(outside / "secret.jpg", 7)
    _sheet(outside / "carex" / "c.jpg", 8)
    source = tmp_path / "collection"
    _sheet(source / "Viola_alba" / "a.jpg", 1)
    (source / "Viola_alba" / "b.jpg").symlink_to(secret)
    (source / "Carex_tonsa").symlink_to(outside / "carex", target_is_directory=True)
    _sheet(source / "Viola_nana" / "n.jpg", 3)
    (source / "Viola_nana" / "same.jpg").symlink_to(source / "Viola_nana" / "n.jpg")  # inside: fine

    out = tmp_path / "ds"
    result = build_dataset([source], out, _options())
    assert result.images == 2
    refused = [(p["where"], p["reason"], p["detail"]) for p in _problems(out) if p["stage"] == "source"]
    assert refused == [
        (str(source / "Carex_tonsa"), "symlink outside the source folder", str((outside / "carex").resolve())),
        (str(source / "Viola_alba" / "b.jpg"), "symlink outside the source folder", str(secret.resolve())),
    ]

    # file names carry the species: same rule
    flat = tmp_path / "flat"
    _sheet(flat / "Viola_alba.1.jpg", 1)
    (flat / "Viola_nana.2.jpg").symlink_to(secret)
    out = tmp_path / "ds-flat"
    assert build_dataset([flat], out, _options(kind="filenames")).images == 1
    assert [p["reason"] for p in _problems(out)] == ["symlink outside the source folder"]

    # the user opts in
    out = tmp_path / "ds-follow"
    assert build_dataset([source], out, _options(follow_symlinks=True)).images == 4
    assert not [p for p in _problems(out) if p["stage"] == "source"]


# --------------------------------------------------------------------------- row 10


@pytest.mark.timeout(20)
def test_row10_long_csv_line_linear(tmp_path: Path) -> None:
    from herbid.data.sources import tabular

    location = tmp_path / "export.zip"
    long_line = b"Viola alba,https://img.example/" + b"x" * (64 << 20) + b".jpg\n"
    with zipfile.ZipFile(location, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("occurrences.csv", b"scientificName,associatedMedia\n"
                         b"Viola alba,https://img.example/1.jpg\n" + long_line
                         + b"Carex tonsa,https://img.example/3.jpg\n")
    assert location.stat().st_size < 128 * 1024

    started = time.perf_counter()
    problems = ProblemLog()
    records = list(DwcCsvSource(location).records(problems))
    elapsed = time.perf_counter() - started

    assert [r.source_path for r in records] == ["https://img.example/1.jpg", "https://img.example/3.jpg"]
    assert records[1].origin == f"{location}/occurrences.csv:4"
    assert list(problems) == [
        Problem("source", f"{location}/occurrences.csv:3", "line too long",
                detail=f"over {tabular.MAX_LINE_BYTES:,} bytes; line skipped")
    ]
    assert elapsed < 8, f"{elapsed:.1f} s for one 64 MB line"


@pytest.mark.parametrize("terminator", [b"\n", b"\r\n", b"\r", b"||"])
def test_split_lines_is_exact_across_chunk_boundaries(terminator: bytes) -> None:
    """The linear splitter gives the same lines as splitting the whole text at once."""
    import io

    from herbid.data.sources import tabular

    rng = random.Random(3)
    pieces = [b"a", b"bc", b"\n", b"\r", b"\r\n", b"|", b"||", b"x" * 70_000, b"y" * 65_535]
    data = b"".join(rng.choice(pieces) for _ in range(400))
    if terminator in (b"\n", b"\r\n", b"\r"):
        expected = data.splitlines(keepends=True)
    else:
        *whole, last = data.split(terminator)
        expected = [line + b"\n" for line in whole] + ([last] if last else [])
    long_lines: list[int] = []
    got = list(tabular.split_lines(io.BytesIO(data), terminator, max_line_bytes=1 << 30,
                                   on_long_line=long_lines.append))
    assert got == expected and not long_lines
    # with a small cap, long lines become blank lines (numbering kept) and are reported
    capped = list(tabular.split_lines(io.BytesIO(data), terminator, max_line_bytes=100,
                                      on_long_line=long_lines.append))
    assert len(capped) == len(expected)
    assert long_lines == [i for i, line in enumerate(expected, start=1) if len(line) > 100]
    assert all(c == (e if len(e) <= 100 else b"\n") for c, e in zip(capped, expected))
