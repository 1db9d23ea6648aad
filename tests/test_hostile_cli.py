"""Hostile-input rows 12–16 (issue 11): devices, orphaned workers, file modes, silent
nonsense runs, and the CLI's error handler; plus "a bug keeps its traceback"."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from herbid.cli.main import main
from herbid.data.dataset_folder import write_json
from herbid.data.synthetic import make_synthetic_collection
from synthetic_data import half_held_out

TINY_TRAIN = ["--arch", "small_cnn", "--epochs", "1", "--batch-size", "4", "--workers", "0", "--no-progress"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return half_held_out(tmp_path_factory.mktemp("ds"), seed=11, per_species=4, n_species=2, size=(96, 144))


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("herbid: error:") and "\n" not in err, err
    return err


# --- row 12: a device this machine does not have ---------------------------------------------

@pytest.mark.parametrize("device", ["bogus", "cuda:7", "cuda"])
def test_row12_missing_or_bogus_device_is_one_line_exit_1(device: str, dataset: Path, tmp_path: Path,
                                                          capsys) -> None:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has the CUDA device")
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["train", "--dataset", str(dataset), "--out", str(tmp_path / "run"), "--device", device,
                 *TINY_TRAIN]) == 1
    err = _one_error_line(capsys)
    assert repr(device) in err and ("not available" in err or "expected auto, cpu" in err
                                    or "CUDA device(s)" in err)
    assert not (tmp_path / "run").exists()  # refused before anything was written


# --- row 13: a killed build leaves no workers behind -----------------------------------------

_SLOW_BUILD = """
import sys, time
import herbid.data.build as build
real = build.store_image
def slow(*args, **kwargs):  # keeps the workers busy long enough to kill their parent mid-build
    time.sleep(0.5)
    return real(*args, **kwargs)
build.store_image = slow
from herbid.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find the worker processes")
def test_row13_sigkilled_build_takes_its_workers_with_it(tmp_path: Path) -> None:
    source = make_synthetic_collection(tmp_path / "src", n_species=2, per_species=20, size=(64, 96), seed=2)
    process = subprocess.Popen([sys.executable, "-c", _SLOW_BUILD, "dataset", "build", str(source),
                                "--out", str(tmp_path / "ds"), "--workers", "2", "--no-progress"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while len(workers) < 2 and time.monotonic() < deadline and process.poll() is None:
            workers = _children(process.pid)
            time.sleep(0.05)
        assert len(workers) >= 2, "the build never started its 2 workers"
        time.sleep(0.3)  # let them pick up work
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in workers if _alive(pid)], "workers outlived the killed build"
    finally:
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if process.poll() is None:
            process.kill()


# --- row 14: written files honour the umask --------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_row14_written_files_honour_the_umask(umask: int, mode: int, tmp_path: Path) -> None:
    previous = os.umask(umask)
    try:
        path = write_json(tmp_path / "report.json", {"a": 1})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_row14_a_built_dataset_is_readable_by_the_team(tmp_path: Path) -> None:
    source = make_synthetic_collection(tmp_path / "src", n_species=2, per_species=2, size=(64, 96), seed=1)
    previous = os.umask(0o022)
    try:
        assert main(["dataset", "build", str(source), "--out", str(tmp_path / "ds"), "--workers", "1",
                     "--no-progress", "--json"]) == 0
    finally:
        os.umask(previous)
    modes = {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "ds").rglob("*") if p.is_file()}
    assert modes == {0o644}


# --- row 15: runs that would be silently meaningless -----------------------------------------

def test_row15_one_species_dataset_refuses_to_train(tmp_path: Path, capsys) -> None:
    folder = half_held_out(tmp_path, seed=5, per_species=6, n_species=1, size=(96, 144))
    assert main(["train", "--dataset", str(folder), "--out", str(tmp_path / "run"), *TINY_TRAIN]) == 1
    err = _one_error_line(capsys)
    assert "1 species" in err and "at least 2" in err


def test_row15_resume_without_a_checkpoint_is_an_error(dataset: Path, tmp_path: Path, capsys) -> None:
    assert main(["train", "--dataset", str(dataset), "--out", str(tmp_path / "run"), "--resume", *TINY_TRAIN]) == 1
    err = _one_error_line(capsys)
    assert "no checkpoint.pt to resume from" in err
    assert not (tmp_path / "run").exists()


# --- row 16: the handler itself imports nothing heavy ----------------------------------------

_MEMORY_ERROR = """
import sys
import herbid.cli.main as cli
def exhausted(args):
    sys.modules["torch"] = None  # any `import torch` from here on fails, as it may when memory is gone
    raise MemoryError
cli.COMMANDS["dataset stats"] = exhausted
code = cli.main(["dataset", "stats", "somewhere"])
print("exit", code, "torch imported:", sys.modules["torch"] is not None)
"""


def test_row16_memory_error_is_reported_without_importing_anything() -> None:
    result = subprocess.run([sys.executable, "-c", _MEMORY_ERROR], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "exit 1 torch imported: False", result.stdout + result.stderr
    assert result.stderr.strip().startswith("herbid: error: out of memory") and "\n" not in result.stderr.strip()


_USER_ERROR_AFTER_IMPORTS_BREAK = """
import sys
import herbid.cli.main as cli
from herbid.errors import InvalidOption
def refuses(args):
    sys.modules["torch"] = None
    raise InvalidOption("split mode 'x': unknown")
cli.COMMANDS["dataset stats"] = refuses
print("exit", cli.main(["dataset", "stats", "somewhere"]))
"""


def test_row16_user_error_handler_needs_no_torch() -> None:
    result = subprocess.run([sys.executable, "-c", _USER_ERROR_AFTER_IMPORTS_BREAK], capture_output=True,
                            text=True, timeout=60)
    assert result.stdout.strip() == "exit 1", result.stdout + result.stderr
    assert result.stderr.strip() == "herbid: error: split mode 'x': unknown"


# --- user errors vs herbid's own bugs --------------------------------------------------------

def test_a_bug_keeps_its_traceback_and_asks_for_a_report(monkeypatch, capsys) -> None:
    import herbid.cli.main as cli

    def buggy(args) -> int:
        return {}["missing key"]  # a ValueError/KeyError from herbid's own code, not the user's

    def internal_value_error(args) -> int:
        raise ValueError("shapes (3,) and (4,) not aligned")

    for handler in (buggy, internal_value_error):
        monkeypatch.setitem(cli.COMMANDS, "dataset stats", handler)
        assert main(["dataset", "stats", "somewhere"]) == 2
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and "please report it" in err


def test_a_missing_path_the_user_named_is_one_line(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no-such.yaml"
    assert main(["train", "--dataset", str(tmp_path), "--out", str(tmp_path / "run"),
                 "--config", str(missing)]) == 1
    assert str(missing) in _one_error_line(capsys)


def test_an_unknown_option_value_is_one_line(dataset: Path, tmp_path: Path, capsys) -> None:
    assert main(["train", "--dataset", str(dataset), "--out", str(tmp_path / "run"), "--schedule", "zigzag",
                 *TINY_TRAIN]) == 1
    assert "schedule must be one of" in _one_error_line(capsys)
