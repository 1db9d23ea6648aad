"""``herbid dataset build|split|audit|clean|stats|shard``: build, split, audit, describe and shard dataset folders.

Each subcommand's parser stands right before its handler; :func:`add_parsers` registers
them all under ``herbid dataset``. The data libraries are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from herbid.cli.common import MiB, add_engine_arguments, command, engine_options, print_json

if TYPE_CHECKING:
    from herbid.data.build import BuildOptions

#: herbid.data.grouping.GROUP_MODES, named here so that --help needs no pandas (a test keeps them equal).
SPLIT_MODES = ["collector", "specimen", "observation", "institution", "none"]


def add_parsers(top: argparse._SubParsersAction) -> None:
    """Register ``herbid dataset`` and its subcommands on the top-level subparsers."""
    dataset = top.add_parser("dataset", help="build, split, audit and describe dataset folders")
    sub = dataset.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    for add in (_add_build, _add_split, _add_audit, _add_clean, _add_stats, _add_shard):
        add(sub)


# --- build ------------------------------------------------------------------------------

def _add_build(sub: argparse._SubParsersAction) -> None:
    build = sub.add_parser("build", help="build a dataset folder from image folders, DwC-A, CSV or portals")
    build.add_argument("sources", nargs="+", metavar="SOURCE",
                       help="folder, Darwin Core Archive (.zip or folder), CSV, 'idigbio:QUERY' or 'gbif:QUERY'")
    build.add_argument("--out", required=True, type=Path, help="dataset folder to write (resumes if present)")
    build.add_argument("--kind", help="source kind, when detection guesses wrong (folders, filenames, dwca, csv, idigbio, gbif)")
    build.add_argument("--media-root", action="append", type=Path, default=[], metavar="DIR",
                       help="a folder CSV/archive media paths may point into besides the table's own (repeatable)")
    build.add_argument("--follow-symlinks", action="store_true",
                       help="follow symlinks that lead out of a source folder (refused by default)")
    build.add_argument("--min-per-species", type=int, default=1, metavar="N")
    build.add_argument("--max-per-species", type=int, default=None, metavar="N")
    build.add_argument("--synonyms", type=Path, metavar="FILE", help="CSV of name,accepted_name")
    build.add_argument("--workers", type=int, default=None, metavar="N", help="decoding processes (default: all cores)")
    build.add_argument("--allow-private-hosts", action="store_true",
                       help="let image downloads and portal queries reach loopback/private/link-local addresses "
                            "(an in-house image server; refused by default)")
    build.add_argument("--per-host", type=int, default=2, metavar="N",
                       help="image requests in flight to one host at once (default 2); a host that answers "
                            "Retry-After is paused, the others go on")
    build.add_argument("--near-duplicate-bits", type=int, default=40, metavar="B",
                       help="perceptual-hash distance counted as a near duplicate (default 40 of 256)")
    build.add_argument("--seed", type=int, default=0, help="seed for --max-per-species sampling")
    build.add_argument("--institution-pattern", default=None, metavar="REGEX",
                       help="name each sheet's institution from its file name where the source has none: group "
                            "'institution' (or group 1) of REGEX, e.g. '^V[0-9]+_(?P<institution>[0-9]+)_' "
                            "(split --by institution and evaluate's seen/unseen pairs use it)")
    limits = build.add_argument_group("limits on untrusted input (docs/SECURITY.md)")
    limits.add_argument("--max-file-mb", type=float, default=1024, metavar="N",
                        help="largest local image file read (default 1024 MiB)")
    limits.add_argument("--max-download-mb", type=float, default=100, metavar="N",
                        help="largest image download (default 100 MiB)")
    limits.add_argument("--download-timeout", type=float, default=30, metavar="S",
                        help="hard deadline per downloaded file, seconds (default 30)")
    limits.add_argument("--max-pixels", type=int, default=250_000_000, metavar="N",
                        help="largest image decoded, in pixels (default 250 M; a 90 MP scan is well under)")
    build.add_argument("--plan", action="store_true",
                       help="read and plan only: write plan.json (counts, drops by reason, hosts) and "
                            "plan-urls.txt to --out; download and decode nothing")
    add_engine_arguments(build)
    build.add_argument("--no-progress", action="store_true")
    build.add_argument("--json", action="store_true", help="print a JSON summary")


@command("dataset build")
def dataset_build(args: argparse.Namespace) -> int:
    from herbid.data.build import BuildOptions, build_dataset

    options = BuildOptions(
        min_per_species=args.min_per_species,
        max_per_species=args.max_per_species,
        synonyms=args.synonyms,
        workers=args.workers or os.cpu_count() or 1,
        seed=args.seed,
        kind=args.kind,
        media_roots=tuple(args.media_root),
        follow_symlinks=args.follow_symlinks,
        institution_pattern=args.institution_pattern,
        near_duplicate_bits=args.near_duplicate_bits,
        allow_private_hosts=args.allow_private_hosts,
        download_per_host=args.per_host,
        max_file_bytes=int(args.max_file_mb * MiB),
        max_download_bytes=int(args.max_download_mb * MiB),
        download_timeout=args.download_timeout,
        max_pixels=args.max_pixels,
        progress=not args.no_progress,
        **engine_options(args),
    )
    if args.plan:
        return _plan_build(args, options)
    result = build_dataset(args.sources, args.out, options)
    report = result.report
    if args.json:
        print_json({"out": str(result.out), "images": result.images, "species": result.species,
                    "counts": report["counts"], "problems_by_reason": report["problems_by_reason"]})
    else:
        from herbid.display import show_build

        show_build(result)
    return 0 if result.images else 1


def _plan_build(args: argparse.Namespace, options: BuildOptions) -> int:
    """``--plan``: read and plan, fetch nothing; exit 1 when no record has a usable name."""
    from herbid.data.plan import PLAN, plan_build

    plan = plan_build(args.sources, args.out, options)
    summary = {"plan": str(args.out / PLAN), **plan["counts"], "dropped_by_reason": plan["dropped_by_reason"],
               "hosts": plan["hosts"]}
    if args.json:
        print_json(summary)
    else:
        from herbid.display import show_mapping

        show_mapping(f"build plan ({args.out / PLAN})", summary)
    return 0 if plan["counts"]["with_usable_name"] else 1


# --- split and audit --------------------------------------------------------------------

def _add_split(sub: argparse._SubParsersAction) -> None:
    split = sub.add_parser("split", help="assign train/test (and val) without collector or specimen leaks")
    split.add_argument("dataset", type=Path)
    split.add_argument("--by", default="collector", choices=SPLIT_MODES)
    split.add_argument("--test-fraction", type=float, default=0.3, metavar="F", help="0.3 = the paper's 70/30")
    split.add_argument("--val-fraction", type=float, default=0.0, metavar="F", help="validation carved from train")
    split.add_argument("--folds", type=int, default=None, metavar="K", help="group-aware K folds instead")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--json", action="store_true")


@command("dataset split")
def dataset_split(args: argparse.Namespace) -> int:
    from herbid.data.splits import make_folds, split_dataset

    if args.folds:
        summary = make_folds(args.dataset, by=args.by, k=args.folds, seed=args.seed)
    else:
        summary = split_dataset(args.dataset, by=args.by, test_fraction=args.test_fraction,
                                val_fraction=args.val_fraction, seed=args.seed)
    data = summary.to_dict()
    if args.json:
        print_json(data)
    else:
        from herbid.display import show_split

        show_split(data)
    return 0


def _add_audit(sub: argparse._SubParsersAction) -> None:
    audit = sub.add_parser("audit", help="check a split for groups and (near) duplicates on both sides")
    audit.add_argument("dataset", type=Path)
    audit.add_argument("--by", default=None, choices=SPLIT_MODES,
                       help="grouping to check (default: the one the split used)")
    audit.add_argument("--strict", action="store_true", help="exit 1 when any leak is found")
    audit.add_argument("--json", action="store_true")


@command("dataset audit")
def dataset_audit(args: argparse.Namespace) -> int:
    from herbid.data.audit import audit_dataset

    audit = audit_dataset(args.dataset, by=args.by)
    leaks = audit["groups_in_both"] + audit["identical_images_across"] + audit["near_duplicates_across"]
    if args.json:
        print_json(audit)
    else:
        from herbid.display import show_audit

        show_audit(audit)
    return 1 if (args.strict and leaks) else 0


# --- clean and stats --------------------------------------------------------------------

def _add_clean(sub: argparse._SubParsersAction) -> None:
    clean = sub.add_parser("clean", help="a copy with labels/barcodes/colour charts masked (or cropped to the "
                                         "plant) and per-sheet quality scores in the manifest")
    clean.add_argument("dataset", type=Path)
    clean.add_argument("--out", required=True, type=Path)
    clean.add_argument("--mode", default="mask", choices=["mask", "crop", "none"],
                       help="mask clutter, crop to the plant, or none: copy the images, add quality scores only")
    clean.add_argument("--segmenter", default="classical", help="registered sheet segmenter")
    clean.add_argument("--aspect", type=float, default=None,
                       help="crop mode: pad each plant crop to this height/width (e.g. the training aspect)")
    clean.add_argument("--workers", type=int, default=2)
    add_engine_arguments(clean)
    clean.add_argument("--json", action="store_true")


@command("dataset clean")
def dataset_clean(args: argparse.Namespace) -> int:
    """A cleaned copy of a dataset (clutter masked or cropped away) with quality columns."""
    from herbid.cleaning.dataset import clean_dataset

    result = clean_dataset(args.dataset, args.out, mode=args.mode, segmenter=args.segmenter, aspect=args.aspect,
                           workers=args.workers, progress=not args.json, **engine_options(args))
    summary = {"out": str(result.out), "images": result.images, "no_plant_found": result.no_plant,
               "clutter_boxes_removed": result.boxes_removed, "mode": args.mode}
    if args.json:
        print_json(summary)
    else:
        from herbid.display import show_mapping

        show_mapping("cleaned dataset", summary)
    return 0


def _add_stats(sub: argparse._SubParsersAction) -> None:
    stats = sub.add_parser("stats", help="counts of images, species, collectors, institutions")
    stats.add_argument("dataset", type=Path)
    stats.add_argument("--json", action="store_true")


@command("dataset stats")
def dataset_stats(args: argparse.Namespace) -> int:
    from herbid.data.audit import dataset_stats as stats

    data = stats(args.dataset)
    if args.json:
        print_json(data)
    else:
        from herbid.display import show_mapping

        show_mapping("dataset", data)
    return 0


# --- shard ------------------------------------------------------------------------------

def _add_shard(sub: argparse._SubParsersAction) -> None:
    shard = sub.add_parser("shard", help="write a split's stored copies as WebDataset tar shards for training")
    shard.add_argument("dataset", type=Path)
    shard.add_argument("--out", required=True, type=Path, help="new folder for shard-NNNNNN.tar and shards.json")
    shard.add_argument("--shard-size", type=int, default=1000, metavar="N", help="samples per shard (default 1000)")
    shard.add_argument("--split", default="train", help="rows to shard (default train; 'all' for every row)")
    shard.add_argument("--copies", default="small,large",
                       help="stored copies to include: small (256 px), large (≤1024 px, read above 256 px)")
    shard.add_argument("--no-progress", action="store_true")
    shard.add_argument("--json", action="store_true")


@command("dataset shard")
def dataset_shard(args: argparse.Namespace) -> int:
    from herbid.data.shards import write_shards

    info = write_shards(args.dataset, args.out, shard_size=args.shard_size,
                        split=None if args.split == "all" else args.split,
                        copies=tuple(c.strip() for c in args.copies.split(",") if c.strip()),
                        progress=not (args.no_progress or args.json))
    summary = {"out": str(args.out), "samples": info["samples"], "shards": len(info["shardlist"]),
               "classes": len(info["classes"]), "copies": ",".join(info["copies"])}
    if args.json:
        print_json(summary)
    else:
        from herbid.display import show_mapping

        show_mapping("shards", summary)
    return 0
