"""herbid's dataset build beside img2dataset, on the same URL list from the same server, in one run.

Issue 14: img2dataset is the downloader LAION-scale projects use. Both tools get the same
URLs on the same loopback server (:mod:`download_polite`, here serving distinct sheet-like
JPEGs of 1200×1680 px, ~170 KB, so that neither content-addressed storage nor duplicate
curation can skip work), with the same parallelism: 2 processes and 8 requests in flight.
Each tool runs twice, as a full build and as a download only, so that the network's share
of the cost is visible. Every run is a subprocess timed from start to exit: both pay their
interpreter start-up.

    python benchmarks/downloaders.py                          # 600 URLs over 4 hosts
    python benchmarks/downloaders.py --full                   # 2,000 URLs over 8 hosts
    python benchmarks/downloaders.py --img2dataset /tmp/i2d/bin/img2dataset

img2dataset is found with ``--img2dataset PATH`` or on ``PATH``; it belongs in its own
virtual environment (its pins clash with herbid's). Without it, only herbid's half runs.
Other scripts call :func:`measure`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:  # imported from elsewhere than benchmarks/
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from download_polite import make_urls, server_stats, start_image_server, write_url_list

SHEET_SIZE = (1200, 1680)  # wider than the 1024 px copy, so that both tools really resize
#: What each run does to every image, read from the code (herbid's ``store_image`` and
#: ``build_dataset``; img2dataset 1.47's ``Downloader.download_shard`` and ``Resizer``).
WORK = {
    "herbid build": (
        "download (httpx, kept-alive connections, <=2 per host, 8 threads) to a file; then in 2 processes: "
        "read, sha256, decode (Pillow; draft() when >2x too big), EXIF-upright, <=1024 px wide copy (bicubic) "
        "and 256x256 copy (bilinear), both encoded JPEG q92, 256-bit DCT pHash of the 256 copy, JSON sidecar; "
        "then over all: name parsing, exact duplicates by sha256, near-duplicate pairs by pHash, parquet manifest "
        "and report"),
    "herbid download only": "download (httpx, as in the build) and write the bytes to a file",
    "img2dataset": (
        "download (urllib, a new connection each, 4 threads per process) into memory; in the process's main "
        "thread: cv2.imdecode, smallest side to 1024 (INTER_AREA), cv2.imencode JPEG q92, sha256 of the "
        "original bytes, EXIF read (exifread), write .jpg + .json; a parquet of metadata per shard"),
    "img2dataset download only": (
        "download (urllib, as above); sha256, EXIF read, write the original bytes + .json (no decode: "
        "--disable_all_reencoding)"),
}
NOT_FOUND = "img2dataset not found: install it in its own venv and pass --img2dataset PATH"
SPECIES = [f"{genus} {epithet}" for genus in ("Viola", "Carex", "Quercus", "Salix")
           for epithet in ("alba", "nigra", "rubra", "minor", "major")]


def write_specimen_csv(urls: list[str], path: Path) -> Path:
    """A Darwin Core table of the URLs, species round-robin: herbid's input."""
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["occurrenceID", "catalogNumber", "scientificName", "associatedMedia"])
        for i, url in enumerate(urls):
            writer.writerow([f"occ-{i}", f"BENCH{i:06d}", SPECIES[i % len(SPECIES)], url])
    return path


def _timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Wall seconds from start to exit, and what the command printed."""
    start = time.perf_counter()
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=3600)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return seconds, done.stdout


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run_herbid_build(table: Path, out: Path, workers: int, per_host: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "herbid.cli.main", "dataset", "build", str(table), "--out", str(out),
               "--allow-private-hosts", "--no-progress", "--workers", str(workers), "--per-host", str(per_host)]
    seconds, _ = _timed(command)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    return {"stored": report["counts"]["images"], "seconds": seconds,
            "near_duplicates": len(report["near_duplicates"]),
            "exact_duplicates": report["problems_by_reason"].get("exact duplicate", 0),
            "written_mb": _folder_bytes(out / "images") / 2**20}


_HERBID_DOWNLOAD = """
import sys
from pathlib import Path
from herbid.data.download import download_images
from herbid.data.sources.base import ProblemLog
urls = Path(sys.argv[1]).read_text(encoding="utf-8").split()
got = download_images(urls, Path(sys.argv[2]), ProblemLog(), workers=int(sys.argv[3]), per_host=int(sys.argv[4]),
                      progress=False, allow_private_hosts=True)
print(len(got))
"""


def run_herbid_download(url_list: Path, out: Path, threads: int, per_host: int) -> dict[str, Any]:
    """The build's fetch stage alone (``download_images`` with the build's options)."""
    seconds, printed = _timed([sys.executable, "-c", _HERBID_DOWNLOAD, str(url_list), str(out), str(threads),
                               str(per_host)])
    return {"stored": int(printed.split()[-1]), "seconds": seconds, "written_mb": _folder_bytes(out) / 2**20}


def run_img2dataset(exe: str, url_list: Path, out: Path, *, processes: int, threads: int, urls: int,
                    download_only: bool) -> dict[str, Any]:
    # several shards per process, or one process would get all the work
    per_shard = max(10, -(-urls // (processes * 4)))
    command = [exe, f"--url_list={url_list}", "--input_format=txt", f"--output_folder={out}",
               "--output_format=files", f"--processes_count={processes}", f"--thread_count={threads}",
               f"--number_sample_per_shard={per_shard}", "--timeout=30", "--enable_wandb=False"]
    if download_only:
        command += ["--resize_mode=no", "--disable_all_reencoding=True"]
    else:
        command += ["--image_size=1024", "--resize_mode=keep_ratio", "--resize_only_if_bigger=True",
                    "--encode_quality=92", "--disable_all_reencoding=False"]
    # no update check over the network at import, no wandb
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled"}
    seconds, _ = _timed(command, env)
    shards = [json.loads(p.read_text(encoding="utf-8")) for p in out.glob("*_stats.json")]
    return {"stored": sum(s["successes"] for s in shards), "seconds": seconds,
            "failed": sum(s["count"] - s["successes"] for s in shards),
            "written_mb": _folder_bytes(out) / 2**20}


def measure(urls: int = 600, hosts: int = 4, img2dataset: str | None = None, *, workers: int = 2,
            threads: int = 8, per_host: int = 2, image_size: tuple[int, int] = SHEET_SIZE,
            start_up: bool = True) -> dict[str, Any]:
    """Time herbid's build and img2dataset on ``urls`` sheet-sized URLs over ``hosts`` loopback hosts.

    ``img2dataset`` is its executable (default: the one on ``PATH``; its half is skipped,
    with the reason, when there is none). Both tools get ``workers`` processes and
    ``threads`` requests in flight (herbid: ``threads`` download threads capped at
    ``per_host`` per host; img2dataset: ``threads // workers`` threads per process).
    Returns, per run: images stored, seconds, images/s, MB/s (bytes the server sent) and
    the work done per image. With ``start_up``, each run is also timed on one URL, before
    (which warms the file cache for the run that counts) and after; the faster of the two
    is its fixed cost (interpreter, imports, process pools), which ``net_images_per_s``
    leaves out.
    """
    exe = img2dataset or shutil.which("img2dataset")
    started = time.perf_counter()
    bases, stop = start_image_server(hosts, image_size=image_size, distinct=urls)
    startup = time.perf_counter() - started
    url_list = make_urls(bases, urls)
    runs: dict[str, dict[str, Any]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="herbid-downloaders-") as tmp:
            tmp = Path(tmp)
            i2d_threads = max(1, threads // workers)
            # full runs first, then download-only ones, each herbid then img2dataset
            steps: list[tuple[str, Callable[[Path, Path, int, Path], dict[str, Any]]]] = [
                ("herbid build", lambda _, table, n, out: run_herbid_build(table, out, workers, per_host)),
                ("img2dataset", lambda listed, _, n, out: run_img2dataset(
                    exe, listed, out, processes=workers, threads=i2d_threads, urls=n, download_only=False)),
                ("herbid download only", lambda listed, _, n, out: run_herbid_download(listed, out, threads, per_host)),
                ("img2dataset download only", lambda listed, _, n, out: run_img2dataset(
                    exe, listed, out, processes=workers, threads=i2d_threads, urls=n, download_only=True)),
            ]
            inputs = {n: (write_url_list(url_list[:n], tmp / f"urls-{n}.txt"),
                          write_specimen_csv(url_list[:n], tmp / f"specimens-{n}.csv"))
                      for n in ((1, urls) if start_up else (urls,))}
            for index, (name, step) in enumerate(steps):
                if name.startswith("img2dataset") and not exe:
                    continue
                if start_up:
                    one = step(*inputs[1], 1, tmp / f"one-{index}")["seconds"]
                server_stats(bases, reset=True)
                run = step(*inputs[urls], urls, tmp / f"run-{index}")
                served = server_stats(bases).values()
                shutil.rmtree(tmp / f"run-{index}", ignore_errors=True)  # keep the disk (and page cache) small
                sent = sum(s["bytes"] for s in served)
                run.update(images_per_s=run["stored"] / run["seconds"], mb_per_s=sent / run["seconds"] / 2**20,
                           requests=sum(s["served"] for s in served),
                           max_in_flight_per_host=max(s["max_in_flight"] for s in served), work=WORK[name])
                if start_up:
                    one = min(one, step(*inputs[1], 1, tmp / f"one-again-{index}")["seconds"])
                    # a fixed cost over half the run leaves too little to subtract from on a busy machine
                    run.update(start_up_s=one, net_images_per_s=(
                        (run["stored"] - 1) / (run["seconds"] - one) if run["seconds"] > 2 * one else None))
                runs[name] = {k: round(v, 3) if isinstance(v, float) else v for k, v in run.items()}
    finally:
        stop()
    result: dict[str, Any] = {
        "urls": urls, "hosts": hosts, "image_size": list(image_size), "processes": workers,
        "requests_in_flight": threads, "server_startup_s": round(startup, 1),
        "cpu_cores": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2), "runs": runs,
    }
    if not exe:
        result["img2dataset_skipped"] = NOT_FOUND
    else:  # images/s of herbid over img2dataset's: above 1, herbid is faster
        result["herbid_build_vs_img2dataset_throughput"] = round(
            runs["herbid build"]["images_per_s"] / runs["img2dataset"]["images_per_s"], 3)
        result["herbid_vs_img2dataset_download_only_throughput"] = round(
            runs["herbid download only"]["images_per_s"] / runs["img2dataset download only"]["images_per_s"], 3)
        nets = [runs[name].get("net_images_per_s") for name in ("herbid build", "img2dataset")]
        if all(nets):
            result["herbid_build_vs_img2dataset_net_throughput"] = round(nets[0] / nets[1], 3)
    return result


def table(result: dict[str, Any]) -> str:
    header = (f"{result['urls']} URLs of {result['image_size'][0]}x{result['image_size'][1]} JPEGs over "
              f"{result['hosts']} loopback hosts; each tool {result['processes']} processes and "
              f"{result['requests_in_flight']} requests in flight; a shared {result['cpu_cores']}-core machine "
              f"(load {result['load_average_1min']}): compare the ratios, not the absolute rates.")
    columns = (f"{'run':28s} {'stored':>6s} {'seconds':>8s} {'images/s':>9s} {'MB/s':>7s} "
               f"{'start-up s':>10s} {'net images/s':>12s}")
    lines = [header, columns]
    for name, run in result["runs"].items():
        lines.append(f"{name:28s} {run['stored']:6d} {run['seconds']:8.2f} {run['images_per_s']:9.1f} "
                     f"{run['mb_per_s']:7.2f} {run.get('start_up_s') or float('nan'):10.2f} "
                     f"{run.get('net_images_per_s') or float('nan'):12.1f}")
    if "img2dataset_skipped" in result:
        lines.append(result["img2dataset_skipped"])
    else:
        net = result.get("herbid_build_vs_img2dataset_net_throughput")
        lines.append(f"herbid build / img2dataset throughput: {result['herbid_build_vs_img2dataset_throughput']:.2f}"
                     + (f" (net of start-up {net:.2f})" if net else "")
                     + f"; download only: {result['herbid_vs_img2dataset_download_only_throughput']:.2f}")
    lines += ["", "work per image:"] + [f"  {name}: {run['work']}" for name, run in result["runs"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="2,000 URLs over 8 hosts (default 600 over 4)")
    parser.add_argument("--urls", type=int, default=None)
    parser.add_argument("--hosts", type=int, default=None)
    parser.add_argument("--img2dataset", default=None, metavar="PATH", help="its executable (default: on PATH)")
    parser.add_argument("--workers", type=int, default=2, help="processes for each tool")
    parser.add_argument("--threads", type=int, default=8, help="requests in flight for each tool")
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON too")
    args = parser.parse_args()
    if args.img2dataset and not Path(args.img2dataset).is_file():
        parser.error(f"--img2dataset: {args.img2dataset} is not a file")
    result = measure(args.urls or (2_000 if args.full else 600), args.hosts or (8 if args.full else 4),
                     args.img2dataset, workers=args.workers, threads=args.threads)
    print(table(result))
    if args.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
