"""Results of experiments as the paper's tables, plus what is needed to trust them.

``results.csv`` and ``results.md`` have the columns of Tables 3–5 (Experiment,
Initialization, Training, Testing, Top-1 accuracy, Top-5 accuracy) plus the number of
test images, the number of folds and, for cross-validation, the sample standard
deviation across folds. ``provenance.json`` says where every number came from (herbid
version and commit, seeds, manifest hashes, the init chain and the run folders), and
``loss_curves.png`` draws the loss of every run that produced them.
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herbid.data.dataset_folder import atomic_path, write_json

RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
PROVENANCE_JSON = "provenance.json"
LOSS_CURVES = "loss_curves.png"

#: The paper's columns, then ours.
RESULT_COLUMNS: tuple[str, ...] = (
    "Experiment", "Initialization", "Training", "Testing", "Top-1 accuracy", "Top-5 accuracy",
    "Top-1 std", "Top-5 std", "n", "Folds", "Method", "Repeats",
)
#: results.md folds the std columns into "mean ± std".
MARKDOWN_COLUMNS: tuple[str, ...] = (
    "Experiment", "Method", "Initialization", "Training", "Testing", "Top-1 accuracy", "Top-5 accuracy", "n",
    "Folds",
)


@dataclass
class FoldResult:
    """One evaluation: the final model of one fold, one repeated split or the single split
    on its test rows."""

    fold: int | None
    metrics: dict[str, Any]
    #: The run folders of the chain's stages, oldest first; the last is the evaluated model.
    run_dirs: list[str]
    stage_keys: list[str]
    #: The split (and training) seed of a repeated-split experiment.
    repeat: int | None = None

    @property
    def top1(self) -> float:
        return float(self.metrics["top1"])

    @property
    def top5(self) -> float:
        return float(self.metrics["top5"])


@dataclass
class ExperimentResult:
    """One row of the table: an experiment, over one split or K folds."""

    name: str
    initialization: str
    training: str
    testing: str
    init_chain: list[str]
    folds: list[FoldResult]
    provenance: dict[str, Any] = field(default_factory=dict)
    #: "finetune" (the training recipe) or a frozen-feature baseline ("linear-probe", "knn").
    method: str = "finetune"

    @property
    def n(self) -> int:
        """Test images over all folds (K-fold tests every image exactly once)."""
        return sum(int(f.metrics["n"]) for f in self.folds)

    @property
    def top1(self) -> float:
        return statistics.fmean(f.top1 for f in self.folds)

    @property
    def top5(self) -> float:
        return statistics.fmean(f.top5 for f in self.folds)

    @property
    def top1_std(self) -> float | None:
        return _std([f.top1 for f in self.folds])

    @property
    def top5_std(self) -> float | None:
        return _std([f.top5 for f in self.folds])

    @property
    def n_folds(self) -> int:
        """1 for a plain train/test split (and for each repeated split)."""
        return len(self.folds) if self.folds[0].fold is not None else 1

    @property
    def n_repeats(self) -> int:
        """How many repeated splits (split seeds 0..N-1) the means are over; 0 without."""
        return len(self.folds) if self.folds[0].repeat is not None else 0

    def row(self) -> dict[str, Any]:
        """The results.csv row (numbers unrounded, missing std empty)."""
        return {
            "Experiment": self.name,
            "Initialization": self.initialization,
            "Training": self.training,
            "Testing": self.testing,
            "Top-1 accuracy": self.top1,
            "Top-5 accuracy": self.top5,
            "Top-1 std": _blank(self.top1_std),
            "Top-5 std": _blank(self.top5_std),
            "n": self.n,
            "Folds": self.n_folds,
            "Method": self.method,
            "Repeats": self.n_repeats,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.row(),
            "init_chain": self.init_chain,
            "genus_top1": _mean_or_none([f.metrics.get("genus_top1") for f in self.folds]),
            "family_top1": _mean_or_none([f.metrics.get("family_top1") for f in self.folds]),
            "unknown_species": sum(int(f.metrics.get("unknown_species", 0)) for f in self.folds),
            "folds": [{"fold": f.fold, "repeat": f.repeat, "run_dirs": f.run_dirs, "stage_keys": f.stage_keys,
                       **{k: v for k, v in f.metrics.items() if k != "per_species"}} for f in self.folds],
            **self.provenance,
        }


def _std(values: list[float]) -> float | None:
    """Sample standard deviation across folds (None for a single split)."""
    return statistics.stdev(values) if len(values) > 1 else None


def _blank(value: float | None) -> float | str:
    return "" if value is None else value


def _mean_or_none(values: list[Any]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return statistics.fmean(float(v) for v in values)


# ----------------------------------------------------------------------------- files


def write_results_csv(path: Path, results: list[ExperimentResult]) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(RESULT_COLUMNS))
            writer.writeheader()
            writer.writerows(r.row() for r in results)
    return path


def _accuracy(mean: float, std: float | None) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def markdown_table(results: list[ExperimentResult]) -> str:
    lines = ["| " + " | ".join(MARKDOWN_COLUMNS) + " |", "|" + "|".join("---" for _ in MARKDOWN_COLUMNS) + "|"]
    for r in results:
        cells = [r.name, r.method, r.initialization, r.training, r.testing, _accuracy(r.top1, r.top1_std),
                 _accuracy(r.top5, r.top5_std), str(r.n), f"{r.n_repeats} seeds" if r.n_repeats else str(r.n_folds)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results_md(path: Path, results: list[ExperimentResult], environment: dict[str, Any]) -> Path:
    commit = environment.get("git_commit") or "unknown commit"
    notes = [
        "Experiments are named <Initialization>.<Training>.<Testing> as in Carranza-Rojas et al. 2017; "
        "X_I is the paper's subscript I (ImageNet, then X).",
        "With several folds, accuracies are the mean ± sample standard deviation over group-aware folds "
        "and n counts every fold's test images; with N seeds (--repeats N), over N random splits (split "
        "seeds 0..N-1, each trained with its split's seed) and n counts the test images of every split.",
        "Method: finetune = the training recipe (the default stops at its linear-probe head below 20 training "
        "sheets per species: each run's run.json says what it did and why); linear-probe / knn = the "
        "initialization's frozen features with logistic regression / k-NN, the yardsticks a recipe must beat.",
        f"herbid {environment.get('herbid_version')} ({commit}), {environment.get('created')}; "
        f"seeds, data hashes and run folders in {PROVENANCE_JSON}, loss curves in {LOSS_CURVES}.",
    ]
    text = "# Results\n\n" + markdown_table(results) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_provenance(path: Path, results: list[ExperimentResult], environment: dict[str, Any]) -> Path:
    return write_json(path, {**environment, "experiments": [r.to_dict() for r in results]})


def plot_loss_curves(histories: dict[str, list[dict[str, Any]]], path: Path) -> Path | None:
    """All runs' loss (and test top-1) curves in one figure, as the paper's Fig. 7."""
    from herbid.training.curves import plot_curves

    histories = {label: h for label, h in histories.items() if h}
    return plot_curves(histories, path) if histories else None
