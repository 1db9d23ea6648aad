"""Issue 14's scale figures in one run: build engines, streaming plan, near duplicates,
shards, similar-specimen search, downloads (herbid beside img2dataset).

Each section calls the ``measure`` function of its own benchmark (``engine_build``,
``dwca_scale``, ``near_duplicates``, ``shard_read``, ``similar_search_scale``,
``downloaders``), so the figures here and there come from the same code. Every figure is
a ratio against a baseline run in the same process, or an absolute figure next to its
baseline, because this machine is shared and noisy.

    python benchmarks/scale.py                 # quick sizes (minutes)
    python benchmarks/scale.py --full          # issue 14's sizes: 10k sheets, 1M hashes/rows/vectors
    python benchmarks/scale.py --only near_duplicates index --json out.json

``docs/SCALE.md`` records a full run and the cost model built on it.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import herbid  # noqa: E402

#: Problem sizes per section: (quick, full). Full is what issue 14 asks for.
SIZES: dict[str, tuple[Any, Any]] = {
    "build": (1_000, 10_000),  # generated sheets, local and Ray, 1 and 2 workers
    "plan": (100_000, 1_000_000),  # DwC-A occurrences with a multimedia extension
    "near_duplicates": ((100_000,), (100_000, 1_000_000)),  # 256-bit hashes
    "shards": ("quick", "full"),  # shard_read.SIZES
    "index": (100_000, 1_000_000),  # 1280-d embeddings
    "downloads": (300, 600),  # distinct sheet-sized JPEGs on loopback hosts
}


def run_build(size: int) -> list[dict[str, Any]]:
    from engine_build import measure

    return [measure(size, workers, engine) for engine in ("local", "ray") for workers in (1, 2)]


def run_plan(size: int) -> dict[str, Any]:
    from dwca_scale import measure

    return measure(size, baseline=True)


def run_near_duplicates(sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    from near_duplicates import measure

    # the exact all-pairs baseline is timed at 100k (about 1.5 min); at 1M it would take ~2 h
    return [measure(n, exact=n <= 100_000) for n in sizes]


def run_shards(size: str) -> dict[str, Any]:
    from shard_read import measure, synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        dataset, shards = synthetic_dataset(Path(tmp), size)
        return measure(dataset, shards, limit=600)


def run_index(size: int) -> dict[str, Any]:
    from similar_search_scale import measure

    # HNSW's build is ~70 min at 1M on 2 cores and IVF-Flat holds a second float32 copy
    # (similar_search_scale.py measures both at 100k); exact numpy is the baseline
    backends = ("numpy", "faiss-ivf") if size > 100_000 else ("numpy", "faiss-ivf", "ivf-flat", "faiss-hnsw")
    return measure(size, backends=backends)


def run_downloads(size: int, img2dataset: str | None = None) -> dict[str, Any]:
    from downloaders import measure

    return measure(urls=size, img2dataset=img2dataset)


SECTIONS: dict[str, Callable[[Any], Any]] = {
    "build": run_build, "plan": run_plan, "near_duplicates": run_near_duplicates,
    "shards": run_shards, "index": run_index, "downloads": run_downloads,
}


def run_section(name: str, size: Any, img2dataset: str | None) -> Any:
    """One section in a fresh interpreter: peak-memory figures (``ru_maxrss`` is inherited
    by children and kept across ``exec``) must not carry an earlier section's high-water mark."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "section.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--section", name, "--size", json.dumps(size),
                   "--section-out", str(out)]
        if img2dataset:
            command += ["--img2dataset", img2dataset]
        subprocess.run(command, check=True)
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="issue 14's sizes (an hour or more on 2 cores)")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--img2dataset", default=None,
                        help="img2dataset executable (its own venv; default: on PATH) for the downloads section")
    parser.add_argument("--section", choices=list(SECTIONS), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=json.loads, help=argparse.SUPPRESS)
    parser.add_argument("--section-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.section:  # the child of run_section
        size = tuple(args.size) if isinstance(args.size, list) else args.size
        extra = {"img2dataset": args.img2dataset} if args.section == "downloads" else {}
        args.section_out.write_text(json.dumps(SECTIONS[args.section](size, **extra), default=str))
        return {}
    results: dict[str, Any] = {"herbid_version": herbid.__version__, "machine": platform.platform(),
                               "full": args.full, "sections": {}}
    for name in args.only:
        size = SIZES[name][1 if args.full else 0]
        print(f"== {name} ({size})", flush=True)
        started = time.perf_counter()
        results["sections"][name] = run_section(name, size, args.img2dataset)
        print(json.dumps(results["sections"][name], indent=1, default=str), flush=True)
        print(f"   {time.perf_counter() - started:.0f} s", flush=True)
        if args.json:  # written after every section, so a long run keeps what it measured
            args.json.write_text(json.dumps(results, indent=1, default=str))
    return results


if __name__ == "__main__":
    main()
