"""Does a model identify the plant, or the herbarium the sheet comes from?

Herbaria differ in paper, scanner, light, label layout and colour charts. When most
training sheets of a species come from one institution, a network can learn the
institution instead of the plant (issue 5 measured it on viola-dev: 0.68 top-1 on test
sheets whose (species, institution) pair was in training, 0.35 on the rest). So whenever
the manifest says where each sheet comes from (``institutionCode``), ``herbid evaluate``
reports:

* ``seen_pairs`` / ``unseen_pairs``: top-1, top-5 and n of test sheets whose (species,
  institution) pair does / does not occur among the training sheets;
* ``shortcut_share``: of the wrong top-1 answers, the share naming a species that has
  training sheets from the test sheet's own institution, next to ``shortcut_chance``, that
  share for a species drawn uniformly from the model's species. A share well above chance
  means the errors follow the institution, not the plant.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from herbid.data.columns import text_column
from herbid.evaluation.metrics import topk_correct

#: The manifest column that names where a sheet comes from (Darwin Core).
INSTITUTION_COLUMN = "institutionCode"


def _accuracies(probabilities: torch.Tensor, targets: torch.Tensor, rows: np.ndarray) -> dict[str, Any]:
    n = int(rows.sum())
    if n == 0:
        return {"top1": None, "top5": None, "n": 0}
    chosen = torch.from_numpy(np.flatnonzero(rows))
    correct = topk_correct(probabilities[chosen], targets[chosen], (1, 5))
    return {"top1": correct[1] / n, "top5": correct[5] / n, "n": n}


def institution_metrics(train: pd.DataFrame, test: pd.DataFrame, probabilities: torch.Tensor,
                        targets: torch.Tensor, species: Sequence[str]) -> dict[str, Any] | None:
    """Seen / unseen (species, institution) accuracies and the shortcut share; ``None`` when
    no test sheet has an institution.

    ``probabilities`` (or logits) are (n_test, n_species) in ``species`` order; ``targets``
    the test rows' class indices (an index ≥ n_species for a species the model lacks).
    """
    test_institutions = text_column(test, INSTITUTION_COLUMN).tolist()
    if all(inst is None for inst in test_institutions):
        return None
    trained_pairs = set(zip(text_column(train, "scientificName"), text_column(train, INSTITUTION_COLUMN)))
    names = text_column(test, "scientificName").tolist()
    known = [inst is not None for inst in test_institutions]
    seen = np.array([k and (name, inst) in trained_pairs for k, name, inst in zip(known, names, test_institutions)])
    unseen = np.array(known) & ~seen
    predicted = probabilities.argmax(dim=1).tolist()
    wrong = [k and p != int(t) for k, p, t in zip(known, predicted, targets.tolist())]
    from_own = [(species[p], inst) in trained_pairs for p, inst, w in zip(predicted, test_institutions, wrong) if w]
    chance = [np.mean([(s, inst) in trained_pairs for s in species]) for inst, w in zip(test_institutions, wrong) if w]
    return {
        "seen_pairs": _accuracies(probabilities, targets, seen),
        "unseen_pairs": _accuracies(probabilities, targets, unseen),
        "shortcut_share": float(np.mean(from_own)) if from_own else None,
        "shortcut_chance": float(np.mean(chance)) if chance else None,
        "wrong": len(from_own),
    }
