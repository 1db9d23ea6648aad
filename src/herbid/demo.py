"""``herbid demo``: the main job end to end on a small collection.

Source, in order: ``--source`` / ``$DEMO_SOURCE``; else, when online, a small real sample
of one genus from iDigBio (cached under ``~/.cache/herbid``); else synthetic sheets, said
so in one line. Then: build → collector split (the paper's 70/30) → leak audit → the
paper's first experiment pair on that data, random vs ImageNet initialisation
(``R.DEMO.DEMO`` and ``I.DEMO.DEMO``, EfficientNet-Lite0) → a results table.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from herbid.data.audit import audit_dataset, dataset_stats
from herbid.data.build import BuildOptions, build_dataset
from herbid.data.splits import split_dataset

#: The online sample: 10 oaks × ≤25 sheets (one query each, so every species gets its share).
DEMO_SPECIES = ("alba", "rubra", "velutina", "coccinea", "macrocarpa", "bicolor", "montana", "palustris",
                "stellata", "virginiana")
IDIGBIO_DEMO_QUERIES = tuple(f"idigbio:scientificname=quercus {epithet}&limit=25" for epithet in DEMO_SPECIES)
IDIGBIO_PROBE_URL = "https://search.idigbio.org/v2/search/records?limit=0"
DEMO_PER_SPECIES = (10, 20)
#: The paper recipe with few epochs keeps the demo under ten minutes on a 2-core CPU.
DEMO_TRAINING = {"recipe": "paper", "arch": "efficientnet_lite0", "epochs": 8}
DEMO_EXPERIMENTS = ("R.DEMO.DEMO", "I.DEMO.DEMO")


def cache_dir() -> Path:
    return Path(os.environ.get("HERBID_CACHE", Path.home() / ".cache" / "herbid"))


def is_online(url: str = IDIGBIO_PROBE_URL, timeout: float = 3.0) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=timeout).status_code < 500
    except httpx.HTTPError:
        return False


def resolve_source(explicit: str | None, out: Path) -> tuple[list[str], Path, BuildOptions]:
    """(sources, dataset folder, build options) for the demo's data."""
    options = BuildOptions(workers=os.cpu_count() or 1)
    source = explicit or os.environ.get("DEMO_SOURCE")
    if source:
        return [source], out / "dataset", options
    if is_online():
        options.min_per_species, options.max_per_species = DEMO_PER_SPECIES
        return list(IDIGBIO_DEMO_QUERIES), cache_dir() / "demo-idigbio-quercus", options
    from herbid.data.synthetic import make_synthetic_collection

    print("offline and no DEMO_SOURCE given: running on SYNTHETIC herbarium sheets, not real data",
          file=sys.stderr)
    synthetic = make_synthetic_collection(out / "synthetic-source", n_species=6, per_species=12,
                                          collectors_per_species=4, seed=0)
    return [str(synthetic)], out / "dataset-synthetic", options


def run_demo(out: str | Path = "demo-out", source: str | None = None, workers: int | None = None,
             allow_private_hosts: bool = False) -> int:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sources, dataset, options = resolve_source(source, out)
    options.allow_private_hosts = allow_private_hosts
    location = sources[0] if len(sources) == 1 else f"{sources[0]} and {len(sources) - 1} more"
    if workers:
        options.workers = workers
    print(f"[1/5] building a dataset from {location} → {dataset}", file=sys.stderr)
    built = build_dataset(sources, dataset, options)
    if built.images == 0:
        print("herbid demo: no usable images; see report.json", file=sys.stderr)
        return 1
    print(f"[2/5] splitting by collector (70/30, seed 0): {built.images} images, {built.species} species",
          file=sys.stderr)
    split = split_dataset(dataset, by="collector", test_fraction=0.3, seed=0).to_dict()
    print("[3/5] auditing the split for leaks", file=sys.stderr)
    audit = audit_dataset(dataset)
    stats = dataset_stats(dataset)
    from herbid.display import show_mapping

    show_mapping(f"herbid demo: {location}", {
        "dataset": str(dataset),
        "images": stats["images"],
        "species": stats["species"],
        "collectors": stats["collectors"],
        "split": split.get("achieved", split.get("achieved_test_fraction")),
        "groups_in_both": audit["groups_in_both"],
        "identical_images_across": audit["identical_images_across"],
        "near_duplicates_across": audit["near_duplicates_across"],
    })
    print("[4/5] training and evaluating: random vs ImageNet initialisation", file=sys.stderr)
    results = run_demo_experiments(dataset, out / "experiments")
    print("[5/5] results (top-k accuracy on the held-out test sheets)", file=sys.stderr)
    print(results.read_text(encoding="utf-8"))
    return 0


def run_demo_experiments(dataset: Path, out: Path) -> Path:
    """R.DEMO.DEMO and I.DEMO.DEMO on the demo dataset; returns the results.md path."""
    from herbid.experiments.runner import run_experiments

    out.mkdir(parents=True, exist_ok=True)
    toml = out / "datasets.toml"
    toml.write_text(f'[DEMO]\npath = "{dataset.resolve()}"\nname = "demo"\n'
                    'split = { by = "collector", test_fraction = 0.3, seed = 0 }\n', encoding="utf-8")
    results = run_experiments(list(DEMO_EXPERIMENTS), toml, out, base_config=dict(DEMO_TRAINING), folds=0)
    return results.results_md
