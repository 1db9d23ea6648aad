"""Dataset build throughput and memory on each engine (local process pool vs Ray Data).

    python benchmarks/engine_build.py                       # quick: 1k sheets, 1 and 2 workers, both engines
    python benchmarks/engine_build.py --size full           # 10k sheets
    python benchmarks/engine_build.py --sheets 500 --workers 2 --engines ray

:func:`measure` builds N generated synthetic sheets (``herbid dataset build`` on a species
folder layout) in a fresh Python process and reports, measured in that same run:

* ``sheets_per_s``: N / build seconds. For Ray the local Ray is started first and timed
  apart (``startup_s``); ``sheets_per_s_with_startup`` counts it too, as a CLI run pays it.
* ``driver_peak_rss_mib``: peak resident memory of the build process (the driver).
* ``tree_peak_pss_mib``: peak *proportional* set size summed over the driver and every
  process below it (pool workers; for Ray also gcs_server, raylet, its workers and the
  shared-memory object store). PSS splits shared pages between the processes sharing
  them, so forked workers and the object store are not counted twice, as RSS sums would.

Both are sampled every 50 ms from ``/proc`` by the parent (Linux only). The sheets are
rendered once per (N, size) in parallel and cached under ``--workdir``: 320×480 px
renders at ~50 ms a sheet per core, so 10k sheets take a few minutes the first time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

SIZE = (320, 480)
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "herbid-engine-build"


# ------------------------------------------------------------------------ the sheets


def _render(job: tuple[str, int, int, int, tuple[int, int]]) -> None:
    from herbid.data.synthetic import render_sheet, sheet_rng

    path, species, index, seed, size = job
    image, _ = render_sheet(species, sheet_rng(seed, species, index), size=size)
    image.save(path, format="JPEG", quality=90)


def make_sheets(n: int, workdir: Path = DEFAULT_WORKDIR, *, size: tuple[int, int] = SIZE, seed: int = 0,
                workers: int | None = None) -> Path:
    """A folder of ``n`` distinct synthetic sheets in species folders (cached; rendered in parallel)."""
    from herbid.data.synthetic import SPECIES
    from herbid.pools import process_pool

    root = workdir / f"sheets-{n}-{size[0]}x{size[1]}-seed{seed}"
    if (root / "DONE").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    jobs = []
    for i in range(n):
        species, index = i % len(SPECIES), i // len(SPECIES)
        folder = root / SPECIES[species].file_stem
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((str(folder / f"{index:05d}.jpg"), species, index, seed, size))
    with process_pool(workers or os.cpu_count() or 1) as pool:
        list(pool.map(_render, jobs, chunksize=16))
    (root / "DONE").touch()
    return root


# --------------------------------------------------------------- one measured build


def _child(sheets: Path, out: Path, workers: int, engine: str) -> dict[str, Any]:
    """Runs in the measured process: (start Ray,) build, report timings and the driver's peak RSS."""
    import resource

    from herbid.data.build import BuildOptions, build_dataset
    from herbid.engine import make_engine

    started = time.perf_counter()
    running = make_engine(engine, workers=workers)  # a local Ray starts here; the build reuses it
    startup = time.perf_counter() - started
    try:
        started = time.perf_counter()
        result = build_dataset([sheets], out, BuildOptions(workers=workers, engine=engine, progress=False))
        seconds = time.perf_counter() - started
    finally:
        running.close()
    return {"images": result.images, "startup_s": startup, "build_s": seconds,
            "driver_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _descendants(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(sheets: int, workers: int, engine: str, *, workdir: Path = DEFAULT_WORKDIR) -> dict[str, Any]:
    """Build ``sheets`` generated sheets with ``workers`` on ``engine``; throughput and peak memory."""
    folder = make_sheets(sheets, workdir)
    out = workdir / f"out-{engine}-{workers}-{sheets}"
    shutil.rmtree(out, ignore_errors=True)
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from engine_build import _child; "
            "print('RESULT ' + json.dumps(_child(*map(__import__('pathlib').Path, sys.argv[2:4]), "
            "int(sys.argv[4]), sys.argv[5])))")
    child = subprocess.Popen([sys.executable, "-c", code, str(Path(__file__).parent), str(folder), str(out),
                              str(workers), engine], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], sum(_pss_kib(pid) for pid in _descendants(child.pid)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = child.communicate()
    done.set()
    sampler.join()
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if child.returncode or not lines:
        raise RuntimeError(f"build on {engine} failed ({child.returncode}): {stderr[-2000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    shutil.rmtree(out, ignore_errors=True)
    return {"engine": engine, "workers": workers, "sheets": sheets, "images": result["images"],
            "sheets_per_s": round(sheets / result["build_s"], 1),
            "sheets_per_s_with_startup": round(sheets / (result["build_s"] + result["startup_s"]), 1),
            "build_s": round(result["build_s"], 2), "startup_s": round(result["startup_s"], 2),
            "driver_peak_rss_mib": round(result["driver_peak_rss_mib"], 1),
            "tree_peak_pss_mib": round(peak[0] / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["quick", "full"], default="quick", help="quick: 1k sheets; full: 10k")
    parser.add_argument("--sheets", type=int, default=None, help="overrides --size")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--engines", nargs="+", default=["local", "ray"], choices=["local", "ray"])
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    sheets = args.sheets or (1000 if args.size == "quick" else 10_000)
    started = time.perf_counter()
    make_sheets(sheets, args.workdir)
    print(f"{sheets} sheets ready in {args.workdir} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    results = []
    for workers in args.workers:
        for engine in args.engines:
            results.append(measure(sheets, workers, engine, workdir=args.workdir))
            print(json.dumps(results[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
