"""``herbid identify|export|serve|index build|similar|review``: using a trained bundle on a collection.

Identification, ONNX export, the web app, similar-sheet search and name review. Each
command's parser stands right before its handler; :func:`add_parsers` registers them.
torch, pandas and the model code are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from herbid.cli.common import (
    CommandError,
    add_bundle_argument,
    add_engine_arguments,
    command,
    engine_options,
    json_text,
    print_json,
)

IDENTIFY_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "jsonl"}


def add_parsers(top: argparse._SubParsersAction) -> None:
    """Register ``identify``, ``export``, ``serve``, ``index build``, ``similar`` and ``review``."""
    for add in (_add_identify, _add_export, _add_serve, _add_index, _add_similar, _add_review):
        add(top)


# --- identification and export -----------------------------------------------------------

def _add_identify(top: argparse._SubParsersAction) -> None:
    identify = top.add_parser("identify", help="identify sheets (files or folders) with a model bundle")
    add_bundle_argument(identify)
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
    add_engine_arguments(identify)
    identify.add_argument("--no-progress", action="store_true")


@command("identify")
def identify_command(args: argparse.Namespace) -> int:
    """Identify sheets; prints results (no --out) or writes OUT resumably; summary on stderr."""
    from herbid.engine import open_engine
    from herbid.identification import Identifier, identify_paths, write_records

    fmt = args.format or (IDENTIFY_FORMATS.get(args.out.suffix.lower(), "jsonl") if args.out else "table")
    engine = engine_options(args)
    # With Ray the model runs in the actors (on the cluster's GPUs unless --device cpu); here only its metadata.
    identifier = Identifier(args.bundle, device=args.device if args.engine == "local" else "cpu",
                            batch_size=args.batch_size)
    with open_engine(engine["engine"], workers=os.cpu_count() or 1, address=engine["address"],
                     gpus=args.device != "cpu") as running:
        summary = identify_paths(identifier, args.inputs, args.out, top_k=args.top_k,
                                 fmt="json" if fmt == "table" else fmt, resume=not args.no_resume,
                                 progress=not args.no_progress, workers=args.workers, engine=running)
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


def _add_export(top: argparse._SubParsersAction) -> None:
    export = top.add_parser("export", help="export a bundle to ONNX (species list and calibration inside)")
    add_bundle_argument(export)
    export.add_argument("--onnx", required=True, type=Path, metavar="OUT.onnx")
    export.add_argument("--check", nargs="*", type=Path, default=None, metavar="IMAGE",
                        help="compare ONNX Runtime with PyTorch on these sheets (none: on random inputs)")
    export.add_argument("--opset", type=int, default=18)
    export.add_argument("--exporter", default="auto", choices=["auto", "dynamo", "torchscript"])
    export.add_argument("--json", action="store_true")


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


# --- web app ----------------------------------------------------------------------------

def _add_serve(top: argparse._SubParsersAction) -> None:
    serve_parser = top.add_parser("serve", help="web page and JSON API for identification and similar sheets")
    add_bundle_argument(serve_parser)
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

def _add_index(top: argparse._SubParsersAction) -> None:
    index = top.add_parser("index", help="specimen indexes for similar-sheet search")
    sub = index.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    build = sub.add_parser("build", help="embed a dataset's sheets with a bundle into an index folder")
    add_bundle_argument(build)
    build.add_argument("--dataset", required=True, type=Path)
    build.add_argument("--out", required=True, type=Path, help="index folder to write")
    build.add_argument("--split", default=None, help="index only this split (default: every sheet)")
    build.add_argument("--backend", default="auto", help="auto, numpy, faiss-flat, faiss-ivf or faiss-hnsw")
    build.add_argument("--batch-size", type=int, default=64)
    build.add_argument("--device", default="auto")
    add_engine_arguments(build)
    build.add_argument("--no-progress", action="store_true")
    build.add_argument("--json", action="store_true")


@command("index build")
def index_build_command(args: argparse.Namespace) -> int:
    """Embed a dataset's sheets with a bundle into a specimen index for similar-sheet search."""
    from herbid.identification.index import SpecimenIndex, build_index

    out = build_index(args.bundle, args.dataset, args.out, split=args.split, batch_size=args.batch_size,
                      device=args.device, progress=not args.no_progress, backend=args.backend,
                      **engine_options(args))
    info = SpecimenIndex.load(out).info
    summary = {"index": str(out), **{key: info.get(key) for key in ("count", "embedding_dim", "backend", "model_id",
                                                                     "bundle")}}
    if args.json:
        print_json(summary)
    else:
        print(f"indexed {summary['count']} sheets ({summary['embedding_dim']}-d, {summary['backend']}) in {out}")
    return 0


def _add_similar(top: argparse._SubParsersAction) -> None:
    similar = top.add_parser("similar", help="the indexed sheets most similar to an image")
    similar.add_argument("index", type=Path, help="index folder (herbid index build)")
    similar.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    similar.add_argument("--k", type=int, default=10)
    similar.add_argument("--bundle", type=Path, default=None, help="default: the bundle recorded in the index")
    similar.add_argument("--device", default="auto")
    similar.add_argument("--json", action="store_true")


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


def _add_review(top: argparse._SubParsersAction) -> None:
    review = top.add_parser("review", help="rank a dataset's sheets by how much the model doubts their names")
    add_bundle_argument(review)
    review.add_argument("--dataset", required=True, type=Path)
    review.add_argument("--index", type=Path, default=None,
                        help="specimen index for evidence sheets (default: the dataset's own sheets)")
    review.add_argument("--split", default=None, help="review only this split (default: every sheet)")
    review.add_argument("--top-k", type=int, default=3, help="suggestions per sheet")
    review.add_argument("--evidence", type=int, default=3, help="nearest sheets of the suggested species")
    review.add_argument("--limit", type=int, default=None, metavar="N", help="only the N most doubted sheets")
    review.add_argument("--knn-weight", type=float, default=0.5, metavar="W",
                        help="weight of the k-NN vote in p_recorded/p_suggested (default 0.5; 0 = the classifier "
                             "alone, the probabilities identify gives)")
    output = review.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true")
    output.add_argument("--csv", action="store_true")
    review.add_argument("--out", type=Path, default=None, help="write here instead of stdout (JSON unless --csv)")
    review.add_argument("--batch-size", type=int, default=64)
    review.add_argument("--device", default="auto")
    review.add_argument("--no-progress", action="store_true")


@command("review")
def review_command(args: argparse.Namespace) -> int:
    """Sheets whose recorded name the model doubts most, with suggestions and evidence."""
    from herbid.identification.review import review_dataset, review_records

    table = review_dataset(args.bundle, args.dataset, index=args.index, split=args.split, top_k=args.top_k,
                           evidence=args.evidence, device=args.device, batch_size=args.batch_size,
                           knn_weight=args.knn_weight, progress=not args.no_progress)
    if args.limit is not None:
        table = table.head(args.limit)
    if args.csv:
        text = _review_csv(table)
    elif args.json or args.out is not None:
        text = json_text(review_records(table))
    else:
        text = "".join(_review_line(record) for record in review_records(table))
    if args.out is not None:
        from herbid.data.dataset_folder import atomic_path

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
