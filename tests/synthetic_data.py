"""Small built-and-split synthetic datasets shared by several test modules."""

from __future__ import annotations

from pathlib import Path

from herbid.data.build import BuildOptions, build_dataset
from herbid.data.splits import split_dataset
from herbid.data.synthetic import make_synthetic_collection


def half_held_out(root: Path, *, seed: int, per_species: int, n_species: int = 4,
                  size: tuple[int, int] = (160, 240)) -> Path:
    """Synthetic sheets built into ``root/ds``, a random half of each species held out."""
    source = make_synthetic_collection(root / "src", n_species=n_species, per_species=per_species, seed=seed,
                                       size=size)
    folder = build_dataset([source], root / "ds", BuildOptions(workers=1, progress=False)).out
    split_dataset(folder, by="none", test_fraction=0.5, seed=0)
    return folder
