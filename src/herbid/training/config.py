"""Typed training configuration, named recipes, and YAML / command-line overrides.

A run is fully described by one :class:`TrainConfig`; it is saved as ``RUN/config.yaml``
and inside every checkpoint and bundle, so a result can always be traced to its settings.
Recipes are named sets of overrides (a registry dict), applied before a YAML file and
before command-line overrides: ``recipe < file < overrides``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from herbid.data.dataset_folder import atomic_path
from herbid.errors import UserError

CONFIG_YAML = "config.yaml"
HEAD_INITS = ("random", "linear-probe", "bn-linear-probe")
SAMPLE_WEIGHTS = ("none", "quality", "institution")
OPTIMIZERS = ("sgd", "adamw")
SHARD_ORDERS = ("global", "local")


class ConfigError(UserError, ValueError):
    """A configuration that cannot be used: unknown key, bad value or type."""


@dataclass
class TrainConfig:
    """Everything that defines a training run; the defaults are herbid's default recipe
    (``sheet``), so ``TrainConfig()``, :func:`load_config` and the CLI train the same thing.
    Other recipes are named sets of changes: ``TrainConfig.from_recipe("paper")``.

    ``batch_size`` is per process: under ``torchrun`` the global batch is
    ``batch_size × world_size`` (scale ``lr`` yourself if you change the global batch).
    """

    dataset: str = ""
    out: str = "runs/run"
    arch: str = "efficientnet_lite0"
    #: "random", "imagenet", or the path of a weights file, bundle or run folder; a path is
    #: a *transfer*: every tensor but the classifier is loaded, the classifier is new.
    init: str = "imagenet"
    recipe: str = "sheet"
    epochs: int = 15
    batch_size: int = 16
    lr: float = 0.003
    #: "sgd" (with ``momentum``) or "adamw" (decoupled ``weight_decay``).
    optimizer: str = "sgd"
    #: The classifier's learning rate is ``lr × head_lr_scale``.
    head_lr_scale: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    #: Learning-rate schedule per iteration (see herbid.training.schedules.SCHEDULES).
    schedule: str = "cosine"
    warmup_epochs: int = 1
    label_smoothing: float = 0.1
    #: None = the model's own preprocessing (e.g. 224 crops from the 256×256 images).
    input_size: int | None = 640
    resize_size: int | None = 640
    #: Height / width of the resized sheet and its crops: 1.0 squeezes the sheet to a square
    #: as the paper does; ~1.4 keeps the shape of a portrait herbarium sheet (sizes above
    #: are then widths; landscape images are turned upright first).
    aspect: float = 1.4
    hflip: bool = True
    #: Also mirror top/bottom (with hflip: the four flips of the sheet, incl. 180° turns).
    vflip: bool = True
    #: Also turn crops by 90° (with both flips: all eight symmetries of the square).
    rot90: bool = False
    #: > 0: scanner-like brightness / contrast / channel-gain changes of up to ± this.
    jitter: float = 0.0
    #: > 0: train on random squares covering at least this share of the sheet, resized to
    #: input_size (zooming in), instead of fixed input_size crops.
    min_crop_area: float = 0.0
    #: "none"; "quality": weight each training sheet's loss by the manifest's ``quality``
    #: column (written by ``herbid dataset clean``; see herbid.cleaning.quality);
    #: "institution": balance each species' herbaria (herbid.training.data.institution_weights).
    #: Applies to the linear-probe head and to fine-tuning.
    sample_weight: str = "none"
    #: Test-time augmentation, stored in the bundle (see herbid.models.tta.TTA_VIEWS).
    tta: str = "flip"
    #: "random": a new classifier as in the paper. "linear-probe": first fit logistic
    #: regression on the frozen features of the training images and start from it
    #: (LP-FT, Kumar et al. 2022), so fine-tuning does not wreck the features early on.
    #: "bn-linear-probe": the same after re-estimating BatchNorm statistics on those images.
    head_init: str = "linear-probe"
    #: A probe-headed recipe fine-tunes only when the median species has at least this many
    #: training sheets; below, the run is the linear probe (herbid.training.choice). 0 = always.
    finetune_min_per_species: int = 20
    #: Partial fine-tuning (herbid.training.partial): the name prefix of the first trainable
    #: parameter, e.g. "model.blocks.5"; every earlier parameter stays frozen. "" = train all.
    trainable_from: str = ""
    #: Keep every BatchNorm layer in eval mode while training (ImageNet statistics).
    frozen_batchnorm: bool = False
    #: > 0: L2-SP, this strength / 2 × the squared distance of the trainable backbone weights
    #: from their initial values.
    l2_sp: float = 0.0
    #: > 0: add this weight × the cross-entropy of the genus and family implied by the
    #: species probabilities (ranks known for every species and not all equal).
    taxonomy_loss: float = 0.0
    #: > 0: a group-aware validation split carved from train; it (never test) picks the
    #: bundled epoch and fits the temperature. 0: the manifest's own "val" rows, if any.
    val_fraction: float = 0.0
    #: How the val split groups images (see herbid.data.splits.GROUP_MODES).
    val_by: str = "collector"
    train_split: str = "train"
    test_split: str = "test"
    val_split: str = "val"
    #: Cross-validation: test = rows with fold == k, train = every other fold.
    fold: int | None = None
    seed: int = 0
    device: str = "auto"
    channels_last: bool = True
    #: "none", "bf16" (autocast, CPU and CUDA) or "fp16" (autocast + GradScaler, CUDA only).
    amp: str = "none"
    workers: int = 2
    resume: bool = False
    #: Provenance of earlier stages, e.g. ["imagenet", "NY"]; empty = inferred from init.
    init_chain: list[str] = field(default_factory=list)
    #: Caps the steps of every epoch (tests, benchmarks, smoke runs).
    max_steps_per_epoch: int | None = None
    #: A shard folder of this dataset (``herbid dataset shard``): training samples are read
    #: from its tars instead of one file each; evaluation still reads the dataset folder.
    shards: str = ""
    #: "global": the folder's sample order (bit-identical to reading the folder); "local":
    #: each process reads its own run of shards (herbid.training.shard_data).
    shard_order: str = "global"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        return apply_overrides(self, changes)

    @classmethod
    def from_recipe(cls, name: str, **changes: Any) -> "TrainConfig":
        """The recipe ``name``'s config with ``changes`` on top (``"sheet"`` = ``TrainConfig()``)."""
        return apply_overrides(cls(), {**recipe_overrides(name), **changes, "recipe": name})

    @property
    def run_dir(self) -> Path:
        return Path(self.out)


#: Named recipes: changes applied on top of the dataclass defaults (the ``sheet`` recipe).
RECIPES: dict[str, dict[str, Any]] = {
    # herbid's default (docs/RESULTS.md, issue 13): ImageNet init, 640 px wide sheets keeping a
    # portrait sheet's shape (aspect 1.4, from the 1024 px copy), flip TTA, a head fitted as
    # a linear probe on the frozen features of every view. Collections with fewer than 20
    # training sheets per species stop there (herbid.training.choice); larger ones fine-tune
    # from that head: all four flips, label smoothing, SGD cosine with warm-up.
    # These are the TrainConfig defaults, so the recipe changes nothing.
    "sheet": {},
    # The default until issue 13: always fine-tune, 448 px square sheets with 416 px crops.
    "finetune": {"input_size": 416, "resize_size": 448, "aspect": 1.0, "finetune_min_per_species": 0},
    "paper": {"init": "random", "epochs": 30, "lr": 0.0075, "weight_decay": 2e-4, "schedule": "poly",
              "warmup_epochs": 0, "label_smoothing": 0.0, "input_size": None, "resize_size": None, "vflip": False,
              "tta": "none", "head_init": "random", "aspect": 1.0, "finetune_min_per_species": 0},
}
# A quick CPU smoke recipe for the small test CNN: the paper's recipe, shorter and smaller.
RECIPES["smoke"] = {**RECIPES["paper"], "arch": "small_cnn", "epochs": 3, "lr": 0.05, "schedule": "cosine",
                    "workers": 0}


#: The recipe ``load_config`` (so ``herbid train`` and ``herbid experiment``) uses when none is
#: named: the TrainConfig defaults.
DEFAULT_RECIPE = "sheet"
#: The recipe of configs saved before the defaults became ``sheet``: a saved config lacking
#: a field meant the paper's value for it (see :func:`config_from_dict`).
LEGACY_DEFAULTS_RECIPE = "paper"


def recipe_overrides(name: str) -> dict[str, Any]:
    try:
        return dict(RECIPES[name])
    except KeyError:
        raise ConfigError(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}") from None


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in fields(TrainConfig)}


def _coerce_scalar(value: Any, kind: type, key: str) -> Any:
    """Convert ``value`` (possibly a command-line string) to ``kind``."""
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if kind is bool:
        text = str(value).strip().lower()
        truth = {"true": True, "1": True, "yes": True, "on": True,
                 "false": False, "0": False, "no": False, "off": False}
        if text in truth:
            return truth[text]
    elif kind is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
    elif kind is float:
        if isinstance(value, (int, str)) and not isinstance(value, bool):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, (str, Path)):
            return str(value)
    raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}")


def coerce(key: str, value: Any) -> Any:
    """``value`` converted to the declared type of ``TrainConfig.key``."""
    types_ = _field_types()
    if key not in types_:
        raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(sorted(types_))}")
    hint = types_[key]
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    if optional:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
            return None
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is list:
        if isinstance(value, str):
            value = [v for v in (p.strip() for p in value.split(",")) if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce_scalar(v, item, key) for v in value]
    return _coerce_scalar(value, hint, key)


def apply_overrides(config: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """A new config with ``overrides`` applied (values type-checked / converted)."""
    changes = {key: coerce(key, value) for key, value in overrides.items()}
    return validate(dataclasses.replace(config, **changes))


def validate(config: TrainConfig) -> TrainConfig:
    """Reject values that would only fail later, deep inside a run."""
    from herbid.inference.device import AMP_MODES
    from herbid.models.tta import TTA_VIEWS
    from herbid.training.schedules import SCHEDULES

    checks = [
        (config.epochs >= 0, "epochs must be >= 0"),
        (config.batch_size >= 1, "batch_size must be >= 1"),
        (config.lr > 0, "lr must be > 0"),
        (0.0 <= config.val_fraction < 1.0, "val_fraction must be in [0, 1)"),
        (0.0 <= config.label_smoothing < 1.0, "label_smoothing must be in [0, 1)"),
        (config.workers >= 0, "workers must be >= 0"),
        (config.warmup_epochs >= 0, "warmup_epochs must be >= 0"),
        (config.taxonomy_loss >= 0, "taxonomy_loss must be >= 0"),
        (config.l2_sp >= 0, "l2_sp must be >= 0"),
        (config.finetune_min_per_species >= 0, "finetune_min_per_species must be >= 0"),
        (config.head_lr_scale > 0, "head_lr_scale must be > 0"),
        (config.optimizer in OPTIMIZERS, f"optimizer must be one of {sorted(OPTIMIZERS)}"),
        (config.schedule in SCHEDULES, f"schedule must be one of {sorted(SCHEDULES)}"),
        (config.amp in AMP_MODES, f"amp must be one of {sorted(AMP_MODES)}"),
        (config.recipe in RECIPES, f"recipe must be one of {sorted(RECIPES)}"),
        (config.tta in TTA_VIEWS, f"tta must be one of {sorted(TTA_VIEWS)}"),
        (config.head_init in HEAD_INITS, f"head_init must be one of {sorted(HEAD_INITS)}"),
        (config.sample_weight in SAMPLE_WEIGHTS, f"sample_weight must be one of {sorted(SAMPLE_WEIGHTS)}"),
        (0.0 <= config.jitter < 1.0, "jitter must be in [0, 1)"),
        (0.0 <= config.min_crop_area <= 1.0, "min_crop_area must be in [0, 1]"),
        (0.25 <= config.aspect <= 4.0, "aspect must be in [0.25, 4]"),
        (not (config.rot90 and config.aspect != 1.0), "rot90 needs aspect = 1 (a quarter turn changes the shape)"),
        (config.max_steps_per_epoch is None or config.max_steps_per_epoch >= 0, "max_steps_per_epoch must be >= 0"),
        (config.shard_order in SHARD_ORDERS, f"shard_order must be one of {sorted(SHARD_ORDERS)}"),
        (config.shard_order == "global" or bool(config.shards), "shard_order=local needs shards (--shards)"),
    ]
    problems = [message for ok, message in checks if not ok]
    if problems:
        raise ConfigError("; ".join(problems))
    return config


def read_yaml(path: str | Path) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults ← recipe ← YAML file ← ``overrides`` (e.g. parsed ``--set key=value``).

    Without a recipe in the file or the overrides, :data:`DEFAULT_RECIPE` applies.

    The recipe named in the overrides wins over the one named in the file. Unknown keys
    are an error naming the valid ones, so a typo never silently trains something else.
    """
    from_file = read_yaml(path) if path is not None else {}
    overrides = dict(overrides or {})
    recipe = overrides.get("recipe", from_file.get("recipe", DEFAULT_RECIPE))
    return TrainConfig.from_recipe(str(recipe), **{**from_file, **overrides})


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items: ``["lr=0.01", "hflip=false"]`` → ``{"lr": 0.01, "hflip": False}``.

    Each VALUE is read as YAML, as in a config file (so an empty VALUE is null); ``-`` in a
    KEY reads as ``_``. Keys and types are checked later, by :func:`load_config`.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


def save_config(config: TrainConfig, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
    return path


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Rebuild a saved config (from a checkpoint or ``config.yaml``) without a recipe pass.

    Saved configs hold every field there was when they were written; a field added since
    takes the value it had then, the paper's (the dataclass defaults were the paper's
    recipe until the default recipe became them).
    """
    legacy = dataclasses.replace(TrainConfig(), **recipe_overrides(LEGACY_DEFAULTS_RECIPE))
    return apply_overrides(legacy, data)
