"""``datasets.toml``: which folder each experiment alias means, and how it is split.

::

    [HH]
    path = "../shared/data/harvard-herbaria"   # a built dataset (manifest.parquet) or any source
    name = "Harvard herbaria"                   # optional, printed in the results tables
    split = { by = "specimen", test_fraction = 0.3, seed = 0 }
    folds = 5                                   # optional: K for cross-validation on this set
    build = { min_per_species = 2 }             # optional BuildOptions for a raw source

Relative paths resolve against the toml file's folder. Experiments never modify the
user's data: each alias is *prepared* in the experiment cache as its own small dataset
folder — a copy of the manifest with the split (and folds) applied there, and a symlink
to the source's ``images/`` so the 256 px images are shared, not copied. A source that
is not a built dataset (an image folder, DwC-A, CSV) is first built into the cache with
:func:`herbid.data.build.build_dataset`, once, and rebuilt when its files change.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from herbid.data.dataset_folder import IMAGES, MANIFEST, load_manifest, manifest_hash, save_manifest, write_json
from herbid.data.splits import GROUP_MODES, split_dataset, text_column
from herbid.errors import UserError
from herbid.experiments.spec import ALIAS_PATTERN, ALIAS_RULE, BASES

#: Written last into a prepared (or built) folder: its presence means "complete".
READY = "prepared.json"
BUILT = "built.json"


class DatasetConfigError(UserError, ValueError):
    """A problem in ``datasets.toml``; the message names the file, the table and the key."""


@dataclass(frozen=True)
class SplitSettings:
    """How an alias is split; the defaults are the paper's H255 rule (70/30 by collector)."""

    by: str = "collector"
    test_fraction: float = 0.3
    val_fraction: float = 0.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DatasetEntry:
    """One ``[ALIAS]`` table of ``datasets.toml``, validated, with ``path`` resolved."""

    alias: str
    path: Path
    name: str
    split: SplitSettings = SplitSettings()
    folds: int | None = None
    build: dict[str, Any] = field(default_factory=dict)

    @property
    def is_built(self) -> bool:
        return (self.path / MANIFEST).is_file()


@dataclass(frozen=True)
class PreparedDataset:
    """An alias ready for training: a dataset folder in the cache with its split applied."""

    alias: str
    name: str
    path: Path
    source: Path
    manifest_hash: str
    split: SplitSettings
    folds: int | None
    species: tuple[str, ...]
    train_species: tuple[str, ...]
    images: int

    def data_key(self) -> dict[str, Any]:
        """What identifies the data a stage trains on, for the stage cache key.

        The manifest hash covers images, labels and the split column; the split settings
        are there too because the folds (not in the hash) are derived from them. The path
        and the alias are not: two aliases of the same data share cached stages.
        """
        return {"manifest_hash": self.manifest_hash, "split": self.split.to_dict()}


# ----------------------------------------------------------------------------- parsing

ENTRY_KEYS = ("path", "name", "split", "folds", "build")
SPLIT_KEYS = tuple(f.name for f in fields(SplitSettings))
#: BuildOptions fields a toml may set (the rest are machine settings, not data choices).
BUILD_KEYS = ("min_per_species", "max_per_species", "synonyms", "kind", "near_duplicate_bits", "max_pixels", "seed",
              "institution_pattern")


def load_datasets_toml(path: str | Path) -> dict[str, DatasetEntry]:
    """Read and validate ``datasets.toml``; every problem is one :class:`DatasetConfigError` line."""
    path = Path(path)
    if not path.is_file():
        raise DatasetConfigError(f"{path}: no such datasets file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise DatasetConfigError(f"{path}: not valid TOML ({exc})") from None
    if not data:
        raise DatasetConfigError(f"{path}: no datasets; add a table such as [H255] with a path")
    return {alias: parse_entry(alias, table, path) for alias, table in data.items()}


def parse_entry(alias: str, table: Any, toml_path: Path) -> DatasetEntry:
    where = f"{toml_path} [{alias}]"
    if not ALIAS_PATTERN.match(alias) or alias in BASES:
        reserved = f"; {', '.join(BASES)} are reserved" if alias in BASES else ""
        raise DatasetConfigError(f"{where}: bad alias; use {ALIAS_RULE}{reserved}")
    if not isinstance(table, dict):
        raise DatasetConfigError(f"{where}: expected a table with a path, got {table!r}")
    _no_unknown_keys(where, table, ENTRY_KEYS)
    if "path" not in table or not isinstance(table["path"], str):
        raise DatasetConfigError(f"{where}: needs path = \"<dataset folder or source>\"")
    location = (toml_path.parent / table["path"]).expanduser()
    if not location.exists():
        raise DatasetConfigError(f"{where}: path {table['path']!r} does not exist (resolved to {location})")
    split_table = _table(where, table, "split")
    folds = _folds(where, table.get("folds"), split_table.pop("folds", None))
    return DatasetEntry(
        alias=alias,
        path=location.resolve(),
        name=_string(where, table, "name", default=alias),
        split=_split_settings(where, split_table),
        folds=folds,
        build=_build_options(where, _table(where, table, "build"), toml_path.parent),
    )


def _no_unknown_keys(where: str, table: dict[str, Any], known: tuple[str, ...]) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise DatasetConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(known)})")


def _table(where: str, table: dict[str, Any], key: str) -> dict[str, Any]:
    value = table.get(key, {})
    if not isinstance(value, dict):
        raise DatasetConfigError(f"{where}: {key} must be a table like {key} = {{ ... }}, got {value!r}")
    return dict(value)


def _string(where: str, table: dict[str, Any], key: str, *, default: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise DatasetConfigError(f"{where}: {key} must be a non-empty string, got {value!r}")
    return value.strip()


def _folds(where: str, top: Any, inside_split: Any) -> int | None:
    """``folds = K`` at the top of the table (or, equivalently, inside ``split``)."""
    if top is not None and inside_split is not None and top != inside_split:
        raise DatasetConfigError(f"{where}: folds given twice ({top} and split.folds = {inside_split})")
    value = top if top is not None else inside_split
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise DatasetConfigError(f"{where}: folds must be an integer >= 2, got {value!r}")
    return value


def _split_settings(where: str, table: dict[str, Any]) -> SplitSettings:
    _no_unknown_keys(f"{where} split", table, (*SPLIT_KEYS, "folds"))
    settings = SplitSettings(**table)
    if settings.by not in GROUP_MODES:
        raise DatasetConfigError(f"{where}: split.by {settings.by!r} is not one of {', '.join(GROUP_MODES)}")
    for key in ("test_fraction", "val_fraction"):
        value = getattr(settings, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DatasetConfigError(f"{where}: split.{key} must be a number, got {value!r}")
    if not 0 < settings.test_fraction < 1 or not 0 <= settings.val_fraction < 1 - settings.test_fraction:
        raise DatasetConfigError(f"{where}: split fractions must satisfy 0 < test_fraction < 1 and "
                                 f"0 <= val_fraction < 1 - test_fraction, got {settings}")
    if isinstance(settings.seed, bool) or not isinstance(settings.seed, int):
        raise DatasetConfigError(f"{where}: split.seed must be an integer, got {settings.seed!r}")
    return settings


def _build_options(where: str, table: dict[str, Any], base: Path) -> dict[str, Any]:
    _no_unknown_keys(f"{where} build", table, BUILD_KEYS)
    if isinstance(table.get("synonyms"), str):
        table["synonyms"] = str((base / table["synonyms"]).resolve())
    return table


# --------------------------------------------------------------------------- preparing


def prepare_dataset(entry: DatasetEntry, cache: Path, *, folds: int | None = None,
                    progress: bool = True) -> PreparedDataset:
    """The cache folder for ``entry`` with its split (and ``folds`` K, if given) applied.

    The folder name hashes the source manifest and the split settings, so a changed
    source or split gets a fresh folder and an unchanged one is reused as is.
    """
    source = entry.path if entry.is_built else build_source(entry, cache / "builds", progress=progress)
    source_hash = manifest_hash(source)
    settings = {"source_manifest": source_hash, "split": entry.split.to_dict(), "folds": folds}
    folder = cache / "datasets" / f"{entry.alias}-{_digest(settings)[:12]}"
    if not (folder / READY).is_file():
        _prepare_folder(source, folder, entry.split, folds, settings)
    return _describe(entry, folder, source, folds)


def _prepare_folder(source: Path, folder: Path, split: SplitSettings, folds: int | None,
                    settings: dict[str, Any]) -> None:
    """Manifest copy + shared images + split, assembled aside and moved in whole."""
    partial = folder.with_name(folder.name + ".part")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    frame = load_manifest(source)
    if not _link_images(source, partial):
        frame = _absolute_image_paths(frame, source)
    save_manifest(partial, frame)
    split_dataset(partial, by=split.by, test_fraction=split.test_fraction, val_fraction=split.val_fraction,
                  seed=split.seed, folds=folds)
    write_json(partial / READY, {"source": str(source), **settings})
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)


def _link_images(source: Path, folder: Path) -> bool:
    """Symlink ``images/`` to the source's; False where links are not possible."""
    try:
        (folder / IMAGES).symlink_to((source / IMAGES).resolve(), target_is_directory=True)
    except OSError:
        return False
    return True


def _absolute_image_paths(frame: Any, source: Path) -> Any:
    """Fallback without symlinks: point the manifest's image paths at the source folder."""
    frame = frame.copy()
    for column in ("image_path", "large_image_path"):
        values = text_column(frame, column)
        frame[column] = [str((source / v).resolve()) if v else None for v in values]
    return frame


def _describe(entry: DatasetEntry, folder: Path, source: Path, folds: int | None) -> PreparedDataset:
    frame = load_manifest(folder)
    species = text_column(frame, "scientificName")
    train = species[text_column(frame, "split") == "train"]
    return PreparedDataset(
        alias=entry.alias,
        name=entry.name,
        path=folder,
        source=source,
        manifest_hash=manifest_hash(folder),
        split=entry.split,
        folds=folds,
        species=tuple(sorted(set(species.dropna()))),
        train_species=tuple(sorted(set(train.dropna()))),
        images=len(frame),
    )


def build_source(entry: DatasetEntry, builds: Path, *, progress: bool = True) -> Path:
    """Build a raw source (folder, DwC-A, CSV) into ``builds/``; rebuilt when its files change.

    The fingerprint is the source's file names, sizes and modification times (a cheap
    stat walk), so a collection that gains or loses images is rebuilt, resuming from the
    images already decoded.
    """
    from herbid.data.build import BuildOptions, build_dataset

    folder = builds / f"{entry.alias}-{_digest(str(entry.path))[:12]}"
    stamp = {"source": str(entry.path), "fingerprint": fingerprint(entry.path), "build": entry.build}
    marker = folder / BUILT
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == stamp:
        return folder
    options = dict(entry.build)
    if options.get("synonyms"):
        options["synonyms"] = Path(options["synonyms"])
    build_dataset([entry.path], folder, BuildOptions(progress=progress, **options))
    write_json(marker, stamp)
    return folder


def fingerprint(path: Path) -> str:
    """Hash of (relative name, size, mtime) of every file under ``path`` (or of ``path``)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.relative_to(path) if file != path else file.name}\x1f{stat.st_size}\x1f"
                      f"{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
