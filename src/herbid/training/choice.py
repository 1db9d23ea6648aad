"""How much of a recipe to run, decided from the collection it is given.

Measured under the repeated-split protocol (docs/RESULTS.md, issue 13): with ~5 training
sheets per species (viola-dev, Harvard, NY), fine-tuning an ImageNet backbone on the
sheets, fully or only its last blocks, does not beat the logistic regression on its frozen
features that LP-FT starts from; the fine-tune only adds noise and CPU hours. So a recipe
whose head starts from that probe stops there when the median species has fewer than
``finetune_min_per_species`` training sheets, and fine-tunes otherwise (the paper's
Herbarium1K has hundreds per species). The decision and its reason are written to the run
folder and shown on screen; ``finetune_min_per_species=0`` always fine-tunes.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from herbid.training.config import TrainConfig


def median_sheets_per_species(train: pd.DataFrame) -> float:
    """The median number of training sheets of a species."""
    return float(train["scientificName"].value_counts().median())


def adapt_to_collection(config: TrainConfig, train: pd.DataFrame) -> tuple[TrainConfig, dict[str, Any]]:
    """``config`` as it will run on these training rows, and the record of why.

    The record (``run.json["plan"]``): the recipe, ``stage`` ("linear-probe" or
    "fine-tune"), the median sheets per species and the reason in one sentence.
    """
    median = median_sheets_per_species(train)
    threshold = config.finetune_min_per_species
    record: dict[str, Any] = {"recipe": config.recipe, "median_sheets_per_species": median,
                              "finetune_min_per_species": threshold}
    probe_head = config.head_init != "random"
    # a probe on the features of a random network learns nothing worth keeping: R.X.X trains
    pretrained = config.init != "random"
    if probe_head and pretrained and config.epochs > 0 and threshold > 0 and median < threshold:
        reason = (f"{median:g} training sheets per species (median) < finetune_min_per_species={threshold}: "
                  "the linear probe on frozen features, no fine-tuning (on collections this small fine-tuning "
                  "did not beat it; set finetune_min_per_species=0 to fine-tune anyway)")
        return config.replace(epochs=0), {**record, "stage": "linear-probe", "reason": reason}
    if config.epochs == 0:
        reason = "epochs=0: the initial model" + (", a linear probe on frozen features" if probe_head else "")
        return config, {**record, "stage": "linear-probe" if probe_head else "initial", "reason": reason}
    if not probe_head:
        why = "head_init=random"
    elif not pretrained:
        why = "init=random (no pretrained features to probe)"
    elif threshold > 0:
        why = f"{median:g} training sheets per species (median) >= finetune_min_per_species={threshold}"
    else:
        why = f"finetune_min_per_species={threshold}"
    reason = f"{why}: fine-tune for {config.epochs} epochs" + (" from a linear-probe head" if probe_head else "")
    return config, {**record, "stage": "fine-tune", "reason": reason}


def describe_plan(plan: dict[str, Any]) -> str:
    """The plan in one line, as ``herbid train`` shows it."""
    return f"recipe {plan['recipe']}, {plan['stage']}: {plan['reason']}"
