"""The ``herbid`` command: a thin layer of argument parsing over the Python API.

Every command is a function registered in :data:`COMMANDS`; heavy libraries (torch,
pandas) are imported inside the command that needs them, so ``herbid --help`` is fast
and never imports torch. ``main(argv)`` returns an exit code, so tests call it directly.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from herbid import __version__

Handler = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, Handler] = {}


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit code 1."""


def command(name: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        COMMANDS[name] = handler
        return handler

    return register


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


# --- dataset ----------------------------------------------------------------------------

@command("dataset build")
def dataset_build(args: argparse.Namespace) -> int:
    from herbid.data.build import BuildOptions, build_dataset

    options = BuildOptions(
        min_per_species=args.min_per_species,
        max_per_species=args.max_per_species,
        synonyms=args.synonyms,
        workers=args.workers,
        seed=args.seed,
        kind=args.kind,
        near_duplicate_bits=args.near_duplicate_bits,
        progress=not args.no_progress,
    )
    result = build_dataset(args.sources, args.out, options)
    report = result.report
    if args.json:
        print_json({"out": str(result.out), "images": result.images, "species": result.species,
                    "counts": report["counts"], "problems_by_reason": report["problems_by_reason"]})
    else:
        from herbid.cli.display import show_build

        show_build(result)
    return 0 if result.images else 1


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
        from herbid.cli.display import show_split

        show_split(data)
    return 0


@command("dataset audit")
def dataset_audit(args: argparse.Namespace) -> int:
    from herbid.data.audit import audit_dataset

    audit = audit_dataset(args.dataset, by=args.by)
    leaks = audit["groups_in_both"] + audit["identical_images_across"] + audit["near_duplicates_across"]
    if args.json:
        print_json(audit)
    else:
        from herbid.cli.display import show_audit

        show_audit(audit)
    return 1 if (args.strict and leaks) else 0


@command("dataset stats")
def dataset_stats(args: argparse.Namespace) -> int:
    from herbid.data.audit import dataset_stats as stats

    data = stats(args.dataset)
    if args.json:
        print_json(data)
    else:
        from herbid.cli.display import show_mapping

        show_mapping("dataset", data)
    return 0


@command("demo")
def demo(args: argparse.Namespace) -> int:
    from herbid.demo import run_demo

    return run_demo(out=args.out, source=args.source, workers=args.workers)


# --- parser -----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="herbid",
        description="Identify plant species from herbarium sheet images (after Carranza-Rojas et al. 2017).",
    )
    parser.add_argument("--version", action="version", version=f"herbid {__version__}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    dataset = top.add_parser("dataset", help="build, split, audit and describe dataset folders")
    sub = dataset.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)

    build = sub.add_parser("build", help="build a dataset folder from image folders, DwC-A, CSV or portals")
    build.add_argument("sources", nargs="+", metavar="SOURCE",
                       help="folder, Darwin Core Archive (.zip or folder), CSV, 'idigbio:QUERY' or 'gbif:QUERY'")
    build.add_argument("--out", required=True, type=Path, help="dataset folder to write (resumes if present)")
    build.add_argument("--kind", help="source kind, when detection guesses wrong (folders, filenames, dwca, csv, idigbio, gbif)")
    build.add_argument("--min-per-species", type=int, default=1, metavar="N")
    build.add_argument("--max-per-species", type=int, default=None, metavar="N")
    build.add_argument("--synonyms", type=Path, metavar="FILE", help="CSV of name,accepted_name")
    build.add_argument("--workers", type=int, default=None, metavar="N", help="decoding processes (default: all cores)")
    build.add_argument("--near-duplicate-bits", type=int, default=40, metavar="B",
                       help="perceptual-hash distance counted as a near duplicate (default 40 of 256)")
    build.add_argument("--seed", type=int, default=0, help="seed for --max-per-species sampling")
    build.add_argument("--no-progress", action="store_true")
    build.add_argument("--json", action="store_true", help="print a JSON summary")

    split = sub.add_parser("split", help="assign train/test (and val) without collector or specimen leaks")
    split.add_argument("dataset", type=Path)
    split.add_argument("--by", default="collector", choices=["collector", "specimen", "observation", "none"])
    split.add_argument("--test-fraction", type=float, default=0.3, metavar="F", help="0.3 = the paper's 70/30")
    split.add_argument("--val-fraction", type=float, default=0.0, metavar="F", help="validation carved from train")
    split.add_argument("--folds", type=int, default=None, metavar="K", help="group-aware K folds instead")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--json", action="store_true")

    audit = sub.add_parser("audit", help="check a split for groups and (near) duplicates on both sides")
    audit.add_argument("dataset", type=Path)
    audit.add_argument("--by", default=None, choices=["collector", "specimen", "observation", "none"],
                       help="grouping to check (default: the one the split used)")
    audit.add_argument("--strict", action="store_true", help="exit 1 when any leak is found")
    audit.add_argument("--json", action="store_true")

    stats = sub.add_parser("stats", help="counts of images, species, collectors, institutions")
    stats.add_argument("dataset", type=Path)
    stats.add_argument("--json", action="store_true")

    demo_parser = top.add_parser("demo", help="run the main job end to end on a small collection")
    demo_parser.add_argument("--out", type=Path, default=Path("demo-out"))
    demo_parser.add_argument("--source", default=None,
                             help="folder, DwC-A or CSV (default: $DEMO_SOURCE, else iDigBio when online, else synthetic)")
    demo_parser.add_argument("--workers", type=int, default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    name = f"{args.command} {args.subcommand}" if getattr(args, "subcommand", None) else args.command
    if getattr(args, "workers", "absent") is None:
        import os

        args.workers = os.cpu_count() or 1
    try:
        return COMMANDS[name](args)
    except KeyboardInterrupt:
        print("herbid: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for the user; --debug shows nothing more on purpose
        if not _is_user_error(exc):
            raise
        print(f"herbid: error: {exc}", file=sys.stderr)
        return 1


def _is_user_error(exc: Exception) -> bool:
    from herbid.data.folder import DatasetError
    from herbid.data.sources.base import SourceError

    return isinstance(exc, (CommandError, DatasetError, SourceError, FileNotFoundError, ValueError))


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
