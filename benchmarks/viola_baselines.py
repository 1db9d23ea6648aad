"""Frozen EfficientNet-Lite0 baselines on the viola-dev sheets (18 Korean violets, 175 sheets).

The yardstick a fine-tuning recipe must beat: ImageNet features of the full 256 px sheet
(input 256, no crop) + logistic regression, and k-NN on the same features, with a random
half of each species held out (``split_dataset(by="none", test_fraction=0.5, seed=0)``).
The issue expects about 0.39 top-1 / 0.76 top-5 for the linear probe.

    .venv/bin/python benchmarks/viola_baselines.py [--data ../shared/data/viola-dev] [--work DIR]

The built dataset is cached in ``--work`` (default: a ``herbid-viola-baselines`` folder in
the system temp dir), so reruns only extract features.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from herbid.data.build import BuildOptions, build_dataset
from herbid.data.dataset_folder import manifest_path
from herbid.data.splits import split_dataset
from herbid.evaluation.baselines import DEFAULT_L2, score_method, split_features

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "viola-dev"


def prepare(data: Path, work: Path) -> Path:
    """Build viola-dev into ``work`` once, then (re)write the random half/half split."""
    folder = work / "viola-dev"
    if not manifest_path(folder).exists():
        build_dataset([data], folder, BuildOptions(workers=2, progress=False))
    split_dataset(folder, by="none", test_fraction=0.5, seed=0)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "herbid-viola-baselines")
    parser.add_argument("--size", type=int, default=256, help="input = resize size (no crop)")
    parser.add_argument("--l2", type=float, default=DEFAULT_L2)
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args()

    folder = prepare(args.data, args.work)
    start = time.perf_counter()
    features = split_features(folder, arch="efficientnet_lite0", init="imagenet", input_size=args.size,
                              resize_size=args.size, device="cpu")
    print(f"features: {len(features.train_y)} train / {len(features.test_y)} test, "
          f"dim {features.train_x.shape[1]}, {len(features.species)} species, {time.perf_counter() - start:.1f} s")
    for method, kw in (("linear-probe", {"l2": args.l2}), ("knn", {"k": args.k})):
        start = time.perf_counter()
        result = score_method(method, features, **kw)
        print(f"{method:13s} top-1 {result['top1']:.3f}  top-5 {result['top5']:.3f}  "
              f"(n={result['n']}, {time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
