"""Dataset build speed: herbid's build against a naive full-decode + resize baseline.

Both run in the same process on the same files. The baseline is what a script without
``draft()`` does: decode every JPEG at full size, convert to RGB, resize to the 1024 px
copy and the 256×256 copy, save both. herbid does that plus hashing, perceptual hashing,
duplicate detection and the manifest, so the ratio is a fair end-to-end comparison.

    python benchmarks/build_speed.py [FOLDER] [--workers N] [--repeat R]

FOLDER defaults to ../shared/data/harvard-herbaria (45 colour sheets, ~1400×1900 px, only
1.4× the large copy, so draft() cannot skip detail there); the 8 full-resolution NY scans
(3744×5616) show what draft() buys on real high-resolution scans.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from herbid.data.build import BuildOptions, build_dataset
from herbid.data.dataset_folder import LARGE_WIDTH, TRAIN_SIZE
from herbid.data.sources.base import is_image_file

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "harvard-herbaria"


def naive_build(files: list[Path], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(files):
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        width, height = rgb.size
        large = rgb.resize((LARGE_WIDTH, round(height * LARGE_WIDTH / width)))  # Pillow's default, bicubic
        large.save(out / f"{i}-large.jpg", quality=92)
        large.resize((TRAIN_SIZE, TRAIN_SIZE)).save(out / f"{i}-256.jpg", quality=92)


def herbid_build(folder: Path, out: Path, workers: int) -> None:
    build_dataset([folder], out, BuildOptions(workers=workers, progress=False))


def timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not args.folder.exists():
        raise SystemExit(f"{args.folder} not found (the shared data is not on this machine)")
    files = sorted(p for p in args.folder.rglob("*") if is_image_file(p))
    results: dict[str, list[float]] = {"naive full decode (1 process)": [], "herbid build (1 worker)": [],
                                       f"herbid build ({args.workers} workers)": []}
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            results["naive full decode (1 process)"].append(timed(naive_build, files, tmp / "naive"))
            results["herbid build (1 worker)"].append(timed(herbid_build, args.folder, tmp / "h1", 1))
            results[f"herbid build ({args.workers} workers)"].append(
                timed(herbid_build, args.folder, tmp / "h2", args.workers))
            shutil.rmtree(tmp, ignore_errors=True)
    baseline = statistics.median(results["naive full decode (1 process)"])
    print(f"{len(files)} images from {args.folder} (median of {args.repeat} runs)")
    for name, seconds in results.items():
        median = statistics.median(seconds)
        print(f"{name:36s} {len(files) / median:7.1f} images/s   ratio vs naive {baseline / median:5.2f}x")


if __name__ == "__main__":
    main()
