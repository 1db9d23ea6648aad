"""Does a model identify the plant, or the herbarium the sheet comes from?

Herbaria differ in paper, scanner, light, label layout and colour charts. When most
training sheets of a species come from one herbarium, a network can learn the herbarium
instead of the plant. This script measures that on one test split, for one or several
trained runs (their mean probabilities = an ensemble):

* top-1 / top-5 of each run and of the ensemble;
* the ensemble's accuracy on test sheets whose (species, herbarium) pair also occurs in
  training ("seen") and on the rest ("unseen"), and per herbarium;
* of the wrong top-1 answers, the share naming a species that has training sheets from
  the test sheet's herbarium, next to that share for a species drawn at random.

The herbarium is the manifest column ``--column`` (e.g. ``institutionCode``) or, by
default, the ``YY`` of viola-dev's undocumented ``Vxx_YY_ZZZ.jpg`` file names (read from
``source_path`` with ``--pattern``).

    python benchmarks/source_shortcut.py --dataset DATA RUN [RUN ...]
        [--column institutionCode | --pattern '_(\\d+)_\\d+\\.\\w+$'] [--split test]

``DATA`` is the dataset folder the runs were tested on (for ``herbid experiment``:
``OUT/cache/datasets/NAME-*``); ``RUN`` a run folder or bundle.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from herbid.data.dataset_folder import load_manifest
from herbid.data.splits import text_column
from herbid.inference.bundle import load_bundle
from herbid.inference.forward import forward
from herbid.inference.pixels import eval_transform
from herbid.inference.sheets import ManifestDataset, select_rows

VIOLA_PATTERN = r"_(\d+)_\d+\.\w+$"


def herbarium_of(frame: pd.DataFrame, column: str | None, pattern: str) -> list[str]:
    if column:
        return text_column(frame, column).fillna("?").astype(str).tolist()
    found = [re.search(pattern, str(path)) for path in frame["source_path"]]
    return [m.group(1) if m else "?" for m in found]


def test_probabilities(run: str, dataset: Path, test: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str]]:
    bundle = load_bundle(run)
    data = ManifestDataset(dataset, test, bundle.species, eval_transform(bundle.preprocessing))
    model = bundle.model.eval()
    with torch.inference_mode():
        out = forward(model, DataLoader(data, batch_size=16), "cpu", tta=bundle.preprocessing.tta)
        logits, targets = out.logits, out.targets
    return (logits / bundle.temperature).softmax(1).numpy(), targets.numpy(), bundle.species


def ranks(probabilities: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0 = the true species ranked first."""
    true = probabilities[np.arange(len(targets)), targets][:, None]
    return (probabilities > true).sum(1)


def accuracy(rank: np.ndarray) -> str:
    return f"{(rank == 0).mean():.3f} / {(rank < 5).mean():.3f} (n={len(rank)})" if len(rank) else "–"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--dataset", required=True, type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--column", default=None, help="manifest column naming the herbarium")
    parser.add_argument("--pattern", default=VIOLA_PATTERN, help="regex on source_path whose group 1 is the herbarium")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    frame = load_manifest(args.dataset)
    frame["herbarium"] = herbarium_of(frame, args.column, args.pattern)
    train, test = select_rows(frame, split="train"), select_rows(frame, split=args.split)
    seen_pairs = set(zip(train["scientificName"], train["herbarium"]))

    total, targets, species = None, None, None
    for run in args.runs:
        probabilities, targets, species = test_probabilities(run, args.dataset, test)
        print(f"{run}: top-1 / top-5 {accuracy(ranks(probabilities, targets))}")
        total = probabilities if total is None else total + probabilities
    rank = ranks(total, targets)
    print(f"ensemble of {len(args.runs)}: top-1 / top-5 {accuracy(rank)}")

    seen = np.array([(s, h) in seen_pairs for s, h in zip(test["scientificName"], test["herbarium"])])
    print(f"  (species, herbarium) seen in training:   {accuracy(rank[seen])}")
    print(f"  (species, herbarium) unseen in training: {accuracy(rank[~seen])}")
    for herbarium in sorted(set(test["herbarium"])):
        here = (test["herbarium"] == herbarium).to_numpy()
        print(f"  herbarium {herbarium}: {accuracy(rank[here])}; training sheets "
              f"{int((train['herbarium'] == herbarium).sum())}")
    wrong = rank > 0
    predicted = [species[i] for i in total.argmax(1)]
    shortcut = np.mean([(p, h) in seen_pairs for p, h, w in zip(predicted, test["herbarium"], wrong) if w])
    chance = np.mean([(s, h) in seen_pairs for h in test["herbarium"] for s in species])
    print(f"  wrong answers naming a species trained from the sheet's herbarium: {shortcut:.2f} "
          f"(a random species: {chance:.2f})")


if __name__ == "__main__":
    main()
