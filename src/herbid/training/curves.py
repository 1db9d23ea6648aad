"""Per-epoch metrics files and learning curves (the paper's Fig. 7: loss and accuracy).

``RUN/metrics.jsonl`` and ``RUN/metrics.csv`` are rewritten from the full history after
every epoch, so they always match the checkpoint, also after a resume.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from herbid.data.dataset_folder import atomic_path

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
LOSS_CURVE = "loss_curve.png"


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    with atomic_path(run_dir / METRICS_JSONL) as tmp:
        tmp.write_text("".join(json.dumps(row) + "\n" for row in history), encoding="utf-8")
    columns: list[str] = []
    for row in history:
        columns += [key for key in row if key not in columns]
    with atomic_path(run_dir / METRICS_CSV) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(history)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_JSONL
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _series(history: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(row["epoch"], row[key]) for row in history
              if row.get(key) is not None and not (isinstance(row[key], float) and math.isnan(row[key]))]
    return [p[0] for p in points], [p[1] for p in points]


def plot_curves(histories: dict[str, list[dict[str, Any]]], path: str | Path, *, title: str | None = None) -> Path:
    """Loss (train solid, test dashed) and test top-1 (val dotted) per epoch, one colour per run.

    ``histories`` maps a run label to its history rows (``RunResult.history`` or
    :func:`read_metrics`); several runs share one figure for comparison.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figure, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, history) in enumerate(histories.items()):
        colour = colours[i % len(colours)]
        prefix = f"{label} " if len(histories) > 1 else ""
        styles = (("train_loss", loss_ax, "-", "train loss"), ("test_loss", loss_ax, "--", "test loss"),
                  ("test_top1", acc_ax, "-", "test top-1"), ("val_top1", acc_ax, ":", "val top-1"))
        for key, axis, style, name in styles:
            xs, ys = _series(history, key)
            if xs:
                axis.plot(xs, ys, style, color=colour, marker="o", markersize=3, label=prefix + name)
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="top-1 accuracy", ylim=(0, 1.02))
    for axis in (loss_ax, acc_ax):
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
    return path
