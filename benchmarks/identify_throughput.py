"""Throughput of ``herbid identify`` against the bare model, in the same run.

* **herbid**: :func:`herbid.identification.identify_paths` over a folder of sheet files,
  end to end: read, decode, the dataset build's normalised copies (≤1024 px, 256×256, JPEG
  round trip), crop and normalise in decoding threads, batched forward, calibrated
  probabilities, genus/family sums, one JSON line per sheet to a journal.
* **preprocess only**: ``Identifier.sheet_tensor`` over the same files in the same thread
  pool, no model: where the time of the end-to-end number goes.
* **bare model**: ``torch.no_grad()`` forward passes over pre-made tensors of the same
  shape and batch size, with the bundle's test-time augmentation (a flip-TTA bundle runs
  the model twice per sheet in both): the ceiling that the model alone allows.

Sheets come from ``--data`` (default ``../shared/data/harvard-herbaria`` when present,
real 1437×1920 scans; else generated synthetic 1000×1500 sheets). Without ``--bundle`` a
bundle of ``--arch`` with random weights is written (throughput does not depend on the
weights' values, and no training run is needed). Rounds are interleaved (bare, herbid,
bare, herbid …) and each side's best round is reported, since a round under load from
other processes is only ever slower. On a CPU the decoding threads and the model share the
cores, so the attainable end-to-end rate is ``1 / (1/preprocess + 1/bare)``; the script
prints how close herbid gets to it (on a GPU the two overlap instead).

    python benchmarks/identify_throughput.py [--arch small_cnn] [--bundle B] [--data DIR]
        [--limit 45] [--batch-size 32] [--workers N] [--repeat 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from herbid.data.synthetic import make_synthetic_collection
from herbid.identification import Identifier, find_images, identify_paths
from herbid.inference.bundle import save_bundle
from herbid.inference.forward import SheetClassifier
from herbid.models.registry import create_model

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "harvard-herbaria"


def make_bundle(root: Path, arch: str) -> Path:
    torch.manual_seed(0)
    species = [f"Genus{i // 3} species{i}" for i in range(9)]
    taxonomy = {name: {"genus": name.split()[0], "family": f"Family{i // 6}"} for i, name in enumerate(species)}
    model, _ = create_model(arch, len(species), init="random")
    return save_bundle(root / "bundle", model=model, arch=arch, species=species, taxonomy=taxonomy,
                       preprocessing=model.preprocessing, temperature=1.2, provenance={"created": "benchmark"})


def sheet_folder(root: Path, data: Path | None, limit: int) -> tuple[Path, str]:
    """A folder holding ``limit`` sheets (links to the real ones, or generated)."""
    source = data if data is not None else (REAL if REAL.is_dir() else None)
    folder = root / "sheets"
    folder.mkdir()
    if source is None:
        make_synthetic_collection(root / "synthetic", n_species=9, per_species=max(1, -(-limit // 9)), seed=0,
                                  size=(1000, 1500), layout="filenames")
        files = find_images([root / "synthetic"])[:limit]
        label = "synthetic 1000×1500 sheets"
    else:
        files = find_images([source])[:limit]
        label = f"{source}"
    for i, file in enumerate(files):
        (folder / f"{i:05d}{file.suffix}").symlink_to(file)
    return folder, label


def time_herbid(identifier: Identifier, folder: Path, root: Path, workers: int | None) -> float:
    out = root / "results.jsonl"
    summary = identify_paths(identifier, [folder], out, fmt="jsonl", resume=False, progress=False, workers=workers)
    assert summary.failed == 0 and summary.identified > 0, summary.failures
    return summary.identified / summary.seconds


def time_preprocess(identifier: Identifier, folder: Path, workers: int) -> float:
    files = find_images([folder])
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda p: identifier.sheet_tensor(p.read_bytes()), files))
    return len(files) / (time.perf_counter() - started)


def time_bare(identifier: Identifier, n: int, batch_size: int) -> float:
    size = identifier.bundle.preprocessing.input_size
    model = SheetClassifier(identifier.bundle.model, identifier.bundle.preprocessing.tta)
    batches = [torch.randn(min(batch_size, n - i), 3, size, size) for i in range(0, n, batch_size)]
    device = identifier.device
    with torch.no_grad():
        for batch in {b.shape[0]: b for b in batches}.values():  # warm-up: kernels for each batch shape
            model(batch.to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for batch in batches:
            model(batch.to(device)).softmax(dim=1).cpu()
        if device.type == "cuda":
            torch.cuda.synchronize()
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="small_cnn")
    parser.add_argument("--bundle", type=Path, default=None, help="bundle or run folder (default: random weights)")
    parser.add_argument("--data", type=Path, default=None,
                        help="folder of sheets (default: harvard-herbaria, else synthetic)")
    parser.add_argument("--limit", type=int, default=45, help="sheets per round")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: herbid's)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bundle = args.bundle or make_bundle(root, args.arch)
        identifier = Identifier(bundle, device=args.device, batch_size=args.batch_size)
        folder, label = sheet_folder(root, args.data, args.limit)
        n = len(find_images([folder]))
        workers = args.workers or min(4, torch.multiprocessing.cpu_count())
        print(f"{n} sheets from {label}; {identifier.bundle.arch} "
              f"({identifier.bundle.preprocessing.input_size}px, tta {identifier.bundle.preprocessing.tta}), batch {args.batch_size}, {workers} decoding threads, "
              f"{torch.get_num_threads()} torch threads, device {identifier.device}")
        rounds: dict[str, list[float]] = {"bare": [], "herbid": [], "preprocess": []}
        for r in range(args.repeat):
            rounds["bare"].append(time_bare(identifier, n, args.batch_size))
            rounds["herbid"].append(time_herbid(identifier, folder, root, args.workers))
            rounds["preprocess"].append(time_preprocess(identifier, folder, workers))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}/s" for k, v in rounds.items()))
        best = {k: max(v) for k, v in rounds.items()}
        print(f"herbid identify : {best['herbid']:8.1f} sheets/s (end to end, from files)")
        print(f"preprocess only : {best['preprocess']:8.1f} sheets/s (decode + normalised copies + transform)")
        print(f"bare model      : {best['bare']:8.1f} sheets/s (no_grad forward on pre-made tensors)")
        print(f"ratio herbid / bare = {best['herbid'] / best['bare']:.3f}")
        # On a CPU, decoding and the model share the same cores: one sheet costs the sum of both
        bound = 1.0 / (1.0 / best["preprocess"] + 1.0 / best["bare"])
        print(f"CPU bound 1/(1/preprocess + 1/bare) = {bound:.1f} sheets/s; herbid reaches "
              f"{best['herbid'] / bound:.0%} of it")


if __name__ == "__main__":
    main()
