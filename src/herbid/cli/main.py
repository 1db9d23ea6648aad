"""The ``herbid`` command: a thin layer of argument parsing over the Python API.

Every command is a function registered in :data:`COMMANDS`; heavy libraries (torch,
pandas) are imported inside the command that needs them, so ``herbid --help`` is fast
and never imports torch. ``main(argv)`` returns an exit code, so tests call it directly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from herbid import __version__
from herbid.errors import UserError

Handler = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, Handler] = {}
MiB = 2**20


class CommandError(UserError):
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
        workers=args.workers or os.cpu_count() or 1,
        seed=args.seed,
        kind=args.kind,
        media_roots=tuple(args.media_root),
        follow_symlinks=args.follow_symlinks,
        near_duplicate_bits=args.near_duplicate_bits,
        allow_private_hosts=args.allow_private_hosts,
        max_file_bytes=int(args.max_file_mb * MiB),
        max_download_bytes=int(args.max_download_mb * MiB),
        download_timeout=args.download_timeout,
        max_pixels=args.max_pixels,
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


@command("dataset clean")
def dataset_clean(args: argparse.Namespace) -> int:
    """A cleaned copy of a dataset (clutter masked or cropped away) with quality columns."""
    from herbid.preprocessing.dataset import clean_dataset

    result = clean_dataset(args.dataset, args.out, mode=args.mode, segmenter=args.segmenter, aspect=args.aspect,
                           workers=args.workers, progress=not args.json)
    summary = {"out": str(result.out), "images": result.images, "no_plant_found": result.no_plant,
               "clutter_boxes_removed": result.boxes_removed, "mode": args.mode}
    if args.json:
        print_json(summary)
    else:
        from herbid.cli.display import show_mapping

        show_mapping("cleaned dataset", summary)
    return 0


# --- models, training, evaluation, experiments -------------------------------------------

#: CLI flags that map one-to-one onto TrainConfig fields (None = keep the recipe's value).
TRAIN_FLAGS = ("arch", "init", "recipe", "epochs", "batch_size", "lr", "momentum", "weight_decay", "schedule",
               "label_smoothing", "input_size", "resize_size", "val_fraction", "fold", "seed", "device", "amp",
               "workers")


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig values the user set: flags first, then ``--set key=value`` pairs."""
    import yaml

    overrides = {name: getattr(args, name) for name in TRAIN_FLAGS if getattr(args, name, None) is not None}
    for item in getattr(args, "set", None) or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise CommandError(f"--set expects key=value, got {item!r}")
        overrides[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return overrides


@command("models")
def models_list(args: argparse.Namespace) -> int:
    from herbid.models.registry import MODELS, list_models

    names = list_models()
    if args.json:
        print_json(names)
    else:
        for name in names:
            entry = MODELS.get(name)
            print(f"{name:24s} {entry.description if entry else 'timm model by name; ImageNet weights when online'}")
    return 0


@command("train")
def train_command(args: argparse.Namespace) -> int:
    from herbid.training.config import load_config
    from herbid.training.loop import train

    overrides = train_overrides(args)
    overrides.update(dataset=str(args.dataset), out=str(args.out), resume=args.resume)
    config = load_config(args.config, overrides)
    result = train(config, progress=not args.no_progress)
    summary = {"run": str(result.run_dir), "bundle": str(result.bundle_dir), "best_epoch": result.best_epoch,
               "resumed": result.resumed, **{f"test_{k}": v for k, v in result.final.items()}}
    if args.json:
        print_json(summary)
    else:
        from herbid.cli.display import show_mapping

        show_mapping(f"trained {config.arch} on {config.dataset}", summary)
    return 0


@command("evaluate")
def evaluate_command(args: argparse.Namespace) -> int:
    from herbid.evaluation.evaluate import evaluate_bundle

    result = evaluate_bundle(args.bundle, args.dataset, split=args.split, fold=args.fold,
                             batch_size=args.batch_size, device=args.device, tta=args.tta,
                             knn_fusion=args.knn_fusion)
    if args.json:
        print_json(result)
    else:
        from herbid.cli.display import show_mapping

        show_mapping(f"evaluate {args.bundle} on {args.dataset} ({args.split})",
                     {k: v for k, v in result.items() if k != "per_species"})
    return 0


@command("experiment")
def experiment_command(args: argparse.Namespace) -> int:
    from herbid.experiments.runner import run_experiments

    results = run_experiments(args.specs, args.datasets, args.out, base_config=train_overrides(args),
                              folds=args.folds, progress=not args.no_progress, method=args.method)
    print((Path(args.out) / "results.md").read_text(encoding="utf-8"))
    return 0 if results is not None else 1


@command("demo")
def demo(args: argparse.Namespace) -> int:
    from herbid.demo import run_demo

    return run_demo(out=args.out, source=args.source, workers=args.workers,
                    allow_private_hosts=args.allow_private_hosts)


# --- identification and export -----------------------------------------------------------

IDENTIFY_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "jsonl"}


@command("identify")
def identify_command(args: argparse.Namespace) -> int:
    """Identify sheets; prints results (no --out) or writes OUT resumably; summary on stderr."""
    from herbid.identification import Identifier, identify_paths, write_records

    fmt = args.format or (IDENTIFY_FORMATS.get(args.out.suffix.lower(), "jsonl") if args.out else "table")
    identifier = Identifier(args.bundle, device=args.device, batch_size=args.batch_size)
    summary = identify_paths(identifier, args.inputs, args.out, top_k=args.top_k,
                             fmt="json" if fmt == "table" else fmt, resume=not args.no_resume,
                             progress=not args.no_progress, workers=args.workers)
    if summary.total == 0:
        raise CommandError(f"no images found in {' '.join(map(str, args.inputs))}")
    if args.out is None and fmt != "table":
        write_records(summary.records or [], sys.stdout, fmt, top_k=args.top_k)
    elif args.out is None:
        for record in summary.records or []:
            print(_identify_line(record))
    for path, reason in summary.failures:
        print(f"herbid: {path}: {reason}", file=sys.stderr)
    earlier = f" ({summary.previously_failed} of them failed)" if summary.previously_failed else ""
    print(f"identified {summary.identified} ({summary.uncertain} uncertain), {summary.skipped_done} already done"
          f"{earlier}, {summary.failed} failed" + (f"; results in {args.out}" if args.out else ""), file=sys.stderr)
    return 1 if summary.failed and not (summary.identified or summary.skipped_done) else 0


def _identify_line(record: dict[str, Any]) -> str:
    if "error" in record:
        return f"{record['path']}\tERROR {record['error']}"
    top = record["top"][0]
    name = record["suggested_name"] or f"? (best guess {top['scientificName']})"
    flag = " [uncertain]" if record["uncertain"] else ""
    best = f"top-1 {top['scientificName']} {top['probability']:.3f}"
    return f"{record['path']}\t{name} ({record['suggested_rank']}){flag}\t{best}"


@command("export")
def export_command(args: argparse.Namespace) -> int:
    """Export to ONNX; with --check, compare ONNX Runtime with PyTorch (exit 1 on disagreement)."""
    from herbid.export import check_onnx, export_onnx, read_onnx_metadata

    path = export_onnx(args.bundle, args.onnx, opset=args.opset, exporter=args.exporter)
    meta = read_onnx_metadata(path)
    result: dict[str, Any] = {"onnx": str(path), "arch": meta.get("arch"), "species": len(meta.get("species", [])),
                              "exporter": meta.get("exporter")}
    if args.check is not None:
        result["check"] = check_onnx(args.bundle, path, args.check)
    if args.json:
        print_json(result)
    else:
        print(f"wrote {path} ({result['arch']}, {result['species']} species, {result['exporter']} exporter)")
        if "check" in result:
            check = result["check"]
            verdict = "same top-5" if check["top5_agree"] else "DIFFERENT top-5"
            print(f"check on {check['images']} inputs: {verdict} as PyTorch; max |Δ probability| "
                  f"{check['max_abs_diff_probabilities']:.2e}")
    return 0 if "check" not in result or result["check"]["top5_agree"] else 1


@command("serve")
def serve_command(args: argparse.Namespace) -> int:
    """Run the web app; refuses a non-loopback bind without --token or --no-auth."""
    from herbid.web.server import check_bind, serve

    check_bind(args.host, token=args.token, no_auth=args.no_auth)  # before the slow model load
    serve(args.bundle, args.index, host=args.host, port=args.port, token=args.token, no_auth=args.no_auth,
          max_upload_mb=args.max_upload_mb, device=args.device, max_upload_pixels=args.max_upload_pixels,
          concurrent_decodes=args.concurrent_decodes, allowed_hosts=args.allowed_host)
    return 0


# --- similar specimens and name review ---------------------------------------------------

@command("index build")
def index_build_command(args: argparse.Namespace) -> int:
    """Embed a dataset's sheets with a bundle into a specimen index for similar-sheet search."""
    from herbid.identification.index import SpecimenIndex, build_index

    out = build_index(args.bundle, args.dataset, args.out, split=args.split, batch_size=args.batch_size,
                      device=args.device, progress=not args.no_progress, backend=args.backend)
    info = SpecimenIndex.load(out).info
    summary = {"index": str(out), **{key: info.get(key) for key in ("count", "embedding_dim", "backend", "model_id",
                                                                     "bundle")}}
    if args.json:
        print_json(summary)
    else:
        print(f"indexed {summary['count']} sheets ({summary['embedding_dim']}-d, {summary['backend']}) in {out}")
    return 0


@command("similar")
def similar_command(args: argparse.Namespace) -> int:
    """The k indexed sheets most similar to each image, with where to find the originals."""
    from herbid.identification.index import similar

    results = similar(args.index, list(args.images), k=args.k, bundle=args.bundle, device=args.device)
    if args.json:
        print_json(results)
        return 0
    for result in results:
        print(result["query"])
        for n in result["neighbours"]:
            print(f"  {n['rank']:>3}  {n['similarity']:.4f}  {n['scientificName'] or '?'}  "
                  f"{n['institutionCode'] or '?'} {n['catalogNumber'] or '?'}  {n['source_path'] or ''}")
    return 0


@command("review")
def review_command(args: argparse.Namespace) -> int:
    """Sheets whose recorded name the model doubts most, with suggestions and evidence."""
    from herbid.identification.review import review_dataset, review_records

    table = review_dataset(args.bundle, args.dataset, index=args.index, split=args.split, top_k=args.top_k,
                           evidence=args.evidence, device=args.device, batch_size=args.batch_size,
                           progress=not args.no_progress)
    if args.limit is not None:
        table = table.head(args.limit)
    if args.csv:
        text = _review_csv(table)
    elif args.json or args.out is not None:
        text = json.dumps(review_records(table), indent=2, ensure_ascii=False, default=str) + "\n"
    else:
        text = "".join(_review_line(record) for record in review_records(table))
    if args.out is not None:
        from herbid.data.folder import atomic_path

        with atomic_path(args.out) as tmp:
            tmp.write_text(text, encoding="utf-8")
        print(f"reviewed {len(table)} sheets; wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _review_csv(table: Any) -> str:
    """CSV with the nested columns (suggestions, evidence) as JSON strings."""
    flat = table.copy()
    for column in ("suggestions", "evidence"):
        flat[column] = [json.dumps(value, ensure_ascii=False, default=str) for value in flat[column]]
    return flat.to_csv(index=False)


def _review_line(r: dict[str, Any]) -> str:
    doubt = "   n/a" if r["doubt"] is None else f"{r['doubt']:+.3f}"
    ood = "  OOD" if r["ood_flag"] else ""
    return (f"{doubt}  {r['institutionCode'] or '?'} {r['catalogNumber'] or r['image_id']}  recorded "
            f"{r['recorded_name']} ({r['p_recorded']:.2f}) → {r['suggested_name']} ({r['p_suggested']:.2f}){ood}"
            + (f"  [{r['note']}]" if r["note"] else "") + "\n")


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
    build.add_argument("--near-duplicate-bits", type=int, default=40, metavar="B",
                       help="perceptual-hash distance counted as a near duplicate (default 40 of 256)")
    build.add_argument("--seed", type=int, default=0, help="seed for --max-per-species sampling")
    limits = build.add_argument_group("limits on untrusted input (docs/SECURITY.md)")
    limits.add_argument("--max-file-mb", type=float, default=1024, metavar="N",
                        help="largest local image file read (default 1024 MiB)")
    limits.add_argument("--max-download-mb", type=float, default=100, metavar="N",
                        help="largest image download (default 100 MiB)")
    limits.add_argument("--download-timeout", type=float, default=30, metavar="S",
                        help="hard deadline per downloaded file, seconds (default 30)")
    limits.add_argument("--max-pixels", type=int, default=250_000_000, metavar="N",
                        help="largest image decoded, in pixels (default 250 M; a 90 MP scan is well under)")
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
    clean.add_argument("--json", action="store_true")

    stats = sub.add_parser("stats", help="counts of images, species, collectors, institutions")
    stats.add_argument("dataset", type=Path)
    stats.add_argument("--json", action="store_true")

    models = top.add_parser("models", help="list the registered model architectures")
    models.add_argument("--json", action="store_true")

    train = top.add_parser("train", help="train a species classifier on a dataset folder")
    train.add_argument("--dataset", required=True, type=Path, help="dataset folder (built and split)")
    train.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, metrics, bundle)")
    train.add_argument("--config", type=Path, default=None, help="YAML config (fields of TrainConfig)")
    train.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    train.add_argument("--no-progress", action="store_true")
    train.add_argument("--json", action="store_true")
    add_train_flags(train)

    evaluate = top.add_parser("evaluate", help="top-1/top-5 (and genus/family) of a bundle on a dataset split")
    evaluate.add_argument("bundle", type=Path, help="model bundle or training run folder")
    evaluate.add_argument("--dataset", required=True, type=Path)
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--fold", type=int, default=None, help="evaluate on this fold instead of a split")
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--tta", default=None, help="test-time augmentation instead of the bundle's: none, flip, "
                                                      "flip2 (all four flips)")
    evaluate.add_argument("--knn-fusion", type=float, default=0.0, metavar="W",
                          help="mix W × the votes of the 5 most similar training sheets into the probabilities")
    evaluate.add_argument("--json", action="store_true")

    experiment = top.add_parser("experiment", help="run the paper's experiments by name, e.g. I.H255.H255")
    experiment.add_argument("specs", nargs="+", metavar="SPEC",
                            help="<Initialization>.<Training>.<Testing>: R, I, ALIAS or ALIAS_I chains")
    experiment.add_argument("--datasets", required=True, type=Path, help="datasets.toml mapping aliases to data")
    experiment.add_argument("--out", required=True, type=Path)
    experiment.add_argument("--folds", type=int, default=None, help="group-aware K-fold cross-validation")
    experiment.add_argument("--method", default="finetune",
                            help="finetune (the training recipe, default), or a frozen-feature baseline on the "
                                 "same folds: linear-probe (logistic regression) or knn")
    experiment.add_argument("--no-progress", action="store_true")
    add_train_flags(experiment, with_init=False)

    demo_parser = top.add_parser("demo", help="run the main job end to end on a small collection")
    demo_parser.add_argument("--out", type=Path, default=Path("demo-out"))
    demo_parser.add_argument("--source", default=None,
                             help="folder, DwC-A or CSV (default: $DEMO_SOURCE, else iDigBio when online, else synthetic)")
    demo_parser.add_argument("--workers", type=int, default=None)
    demo_parser.add_argument("--allow-private-hosts", action="store_true",
                             help="let the source's image downloads reach loopback/private addresses")

    identify = top.add_parser("identify", help="identify sheets (files or folders) with a model bundle")
    identify.add_argument("bundle", type=Path, help="model bundle or training run folder")
    identify.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE_OR_FOLDER",
                          help="sheet files, or folders (searched recursively)")
    identify.add_argument("--top-k", type=int, default=5, metavar="K")
    formats = identify.add_mutually_exclusive_group()
    for flag, help_text in (("json", "a JSON list, one object per sheet"), ("jsonl", "one JSON object per line"),
                            ("csv", "one row per sheet, top-k as columns"),
                            ("dwc", "Darwin Core Identification terms (CSV)")):
        formats.add_argument(f"--{flag}", dest="format", action="store_const", const=flag, help=help_text)
    identify.add_argument("--out", type=Path, default=None,
                          help="write here (resumable: a rerun skips sheets already done); format from the suffix")
    identify.add_argument("--no-resume", action="store_true", help="start OUT afresh instead of resuming")
    identify.add_argument("--device", default="auto")
    identify.add_argument("--batch-size", type=int, default=32, metavar="N")
    identify.add_argument("--workers", type=int, default=None, metavar="N", help="decoding threads")
    identify.add_argument("--no-progress", action="store_true")

    export = top.add_parser("export", help="export a bundle to ONNX (species list and calibration inside)")
    export.add_argument("bundle", type=Path, help="model bundle or training run folder")
    export.add_argument("--onnx", required=True, type=Path, metavar="OUT.onnx")
    export.add_argument("--check", nargs="*", type=Path, default=None, metavar="IMAGE",
                        help="compare ONNX Runtime with PyTorch on these sheets (none: on random inputs)")
    export.add_argument("--opset", type=int, default=18)
    export.add_argument("--exporter", default="auto", choices=["auto", "dynamo", "torchscript"])
    export.add_argument("--json", action="store_true")

    serve_parser = top.add_parser("serve", help="web page and JSON API for identification and similar sheets")
    serve_parser.add_argument("bundle", type=Path, help="model bundle or training run folder")
    serve_parser.add_argument("--index", type=Path, default=None, help="specimen index for similar-sheet search")
    serve_parser.add_argument("--host", default="127.0.0.1",
                              help="bind address (default 127.0.0.1; any other needs --token or --no-auth)")
    serve_parser.add_argument("--port", type=int, default=8000)
    auth = serve_parser.add_mutually_exclusive_group()
    auth.add_argument("--token", default=os.environ.get("HERBID_TOKEN") or None,
                      help="require 'Authorization: Bearer TOKEN' on /api (default: $HERBID_TOKEN)")
    auth.add_argument("--no-auth", action="store_true", help="serve a non-loopback address without a token")
    serve_parser.add_argument("--max-upload-mb", type=float, default=20, metavar="N", help="largest upload (MiB)")
    serve_parser.add_argument("--max-upload-pixels", type=int, default=40_000_000, metavar="N",
                              help="most pixels an upload may need decoded (default 40,000,000; a baseline "
                                   "JPEG counts at its 1/8-scale decode); larger uploads get 413")
    serve_parser.add_argument("--concurrent-decodes", type=int, default=2, metavar="N",
                              help="uploads decoded at once (default 2); peak decode memory is about "
                                   "N × (11 bytes × --max-upload-pixels + the upload), see /api/health")
    serve_parser.add_argument("--allowed-host", action="append", default=None, metavar="NAME",
                              help="also answer requests whose Host header is NAME (repeatable; '*.example.org' "
                                   "and '*' are wildcards). Always answered: localhost, 127.0.0.1, [::1] and the "
                                   "--host address (for 0.0.0.0/:: this machine's host name); other Hosts get 400")
    serve_parser.add_argument("--device", default="auto")
    add_similarity_parsers(top)
    return parser


def add_similarity_parsers(top: Any) -> None:
    """``index build``, ``similar`` and ``review`` (similar specimens and name review)."""
    index = top.add_parser("index", help="specimen indexes for similar-sheet search")
    sub = index.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    build = sub.add_parser("build", help="embed a dataset's sheets with a bundle into an index folder")
    build.add_argument("bundle", type=Path, help="model bundle or training run folder")
    build.add_argument("--dataset", required=True, type=Path)
    build.add_argument("--out", required=True, type=Path, help="index folder to write")
    build.add_argument("--split", default=None, help="index only this split (default: every sheet)")
    build.add_argument("--backend", default="auto", help="auto, numpy, faiss-flat or faiss-hnsw")
    build.add_argument("--batch-size", type=int, default=64)
    build.add_argument("--device", default="auto")
    build.add_argument("--no-progress", action="store_true")
    build.add_argument("--json", action="store_true")

    similar = top.add_parser("similar", help="the indexed sheets most similar to an image")
    similar.add_argument("index", type=Path, help="index folder (herbid index build)")
    similar.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    similar.add_argument("--k", type=int, default=10)
    similar.add_argument("--bundle", type=Path, default=None, help="default: the bundle recorded in the index")
    similar.add_argument("--device", default="auto")
    similar.add_argument("--json", action="store_true")

    review = top.add_parser("review", help="rank a dataset's sheets by how much the model doubts their names")
    review.add_argument("bundle", type=Path, help="model bundle or training run folder")
    review.add_argument("--dataset", required=True, type=Path)
    review.add_argument("--index", type=Path, default=None,
                        help="specimen index for evidence sheets (default: the dataset's own sheets)")
    review.add_argument("--split", default=None, help="review only this split (default: every sheet)")
    review.add_argument("--top-k", type=int, default=3, help="suggestions per sheet")
    review.add_argument("--evidence", type=int, default=3, help="nearest sheets of the suggested species")
    review.add_argument("--limit", type=int, default=None, metavar="N", help="only the N most doubted sheets")
    output = review.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true")
    output.add_argument("--csv", action="store_true")
    review.add_argument("--out", type=Path, default=None, help="write here instead of stdout (JSON unless --csv)")
    review.add_argument("--batch-size", type=int, default=64)
    review.add_argument("--device", default="auto")
    review.add_argument("--no-progress", action="store_true")


def add_train_flags(parser: argparse.ArgumentParser, *, with_init: bool = True) -> None:
    """Flags that override the recipe (TrainConfig fields); unset flags keep the recipe's values."""
    group = parser.add_argument_group("training (overrides the recipe)")
    group.add_argument("--arch", help="model name (herbid models) or timm:NAME (default efficientnet_lite0)")
    if with_init:
        group.add_argument("--init", help="random, imagenet, or a weights file / bundle / run folder (transfer)")
    group.add_argument("--recipe", help="named recipe: sheet (default, the best measured on real sheets), paper (Carranza-Rojas "
                            "et al. 2017), smoke")
    group.add_argument("--epochs", type=int)
    group.add_argument("--batch-size", type=int)
    group.add_argument("--lr", type=float)
    group.add_argument("--momentum", type=float)
    group.add_argument("--weight-decay", type=float)
    group.add_argument("--schedule")
    group.add_argument("--label-smoothing", type=float)
    group.add_argument("--input-size", type=int)
    group.add_argument("--resize-size", type=int)
    group.add_argument("--val-fraction", type=float, help="validation carved from train; selects the epoch")
    group.add_argument("--fold", type=int, help="test on fold K of a --folds dataset, train on the others")
    group.add_argument("--seed", type=int)
    group.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")
    group.add_argument("--amp", choices=["none", "bf16", "fp16"])
    group.add_argument("--workers", type=int, help="data-loading processes")
    group.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other TrainConfig field")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    name = f"{args.command} {args.subcommand}" if getattr(args, "subcommand", None) else args.command
    try:
        return COMMANDS[name](args)
    except KeyboardInterrupt:
        print("herbid: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except MemoryError:
        # Nothing is imported here: after a MemoryError even an import can fail again.
        print("herbid: error: out of memory; try a smaller --batch-size or fewer --workers", file=sys.stderr)
        return 1
    except Exception as exc:
        if not _is_user_error(exc, args):
            traceback.print_exc()
            print(f"herbid: internal error (a bug in herbid {__version__}, not in your input); please report it "
                  "to the herbid maintainers with the command you ran and the traceback above", file=sys.stderr)
            return 2
        print(f"herbid: error: {exc}", file=sys.stderr)
        return 1


def _is_user_error(exc: Exception, args: argparse.Namespace) -> bool:
    """A :class:`UserError`, or the OS saying a path the user named cannot be read.

    Deliberately not every ``ValueError``/``FileNotFoundError``: those raised inside
    herbid about its own files are bugs and keep their traceback.
    """
    if isinstance(exc, UserError):
        return True
    if isinstance(exc, OSError) and exc.filename is not None:
        failed = Path(os.fsdecode(exc.filename)).absolute()
        return any(failed == named or named in failed.parents for named in _named_paths(args))
    return False


def _named_paths(args: argparse.Namespace) -> list[Path]:
    values: list[Any] = []
    for value in vars(args).values():
        values.extend(value if isinstance(value, list) else [value])
    return [Path(value).absolute() for value in values if isinstance(value, (str, Path)) and value]


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
