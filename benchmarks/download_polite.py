"""Download throughput: herbid's polite downloader against a loopback server of small JPEGs.

The server runs in its own process (so it does not share the client's GIL) and listens on
``hosts`` loopback ports, each one "host" to the per-host cap. It serves
``/img/<n>.jpg`` (64 distinct noise JPEGs of ~3 KB, optionally after ``--latency``
seconds, as a far-away server would) and ``/_stats`` (requests and bytes served and the
most in flight at once, per port). With ``--image-size WxH --distinct N`` it serves N
sheet-sized JPEGs instead (:func:`_sheets`), each of its own content. Each measurement
downloads every URL into a fresh folder, then runs again to time the resume (which should
ask nothing).

    python benchmarks/download_polite.py                      # quick: 2,000 URLs, 8 hosts
    python benchmarks/download_polite.py --full               # 20,000 URLs, 64 hosts
    python benchmarks/download_polite.py serve --hosts 8 --urls 10000 --url-list urls.txt

``serve`` starts the server alone and writes the URL list (one URL per line), for other
downloaders (img2dataset) to be timed against the same server; it runs until Ctrl-C.
Other scripts call :func:`start_image_server`, :func:`make_urls`, :func:`write_url_list`
and :func:`measure`.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

DISTINCT_IMAGES = 64


def _jpegs(count: int = DISTINCT_IMAGES, size: int = 48) -> list[bytes]:
    from PIL import Image

    rng = random.Random(0)
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.frombytes("RGB", (size, size), rng.randbytes(size * size * 3)).save(buffer, format="JPEG", quality=85)
        out.append(buffer.getvalue())
    return out


def _sheets(count: int, size: tuple[int, int], seed: int = 0, grain: int = 3) -> list[bytes]:
    """``count`` sheet-like JPEGs (~170 KB at 1200×1680), each of different bytes and content.

    A smooth random colour field with a few shapes, so that no two are near duplicates by
    perceptual hash, under a paper-like grain that gives the bytes of a real sheet's web copy.
    The grain is one shared layer cropped at a random offset: drawing it per image costs
    more than all the rest.
    """
    import numpy as np
    from PIL import Image, ImageChops, ImageDraw

    width, height = size
    margin = 64
    rng = np.random.default_rng(seed)
    layer = Image.fromarray(rng.integers(0, 2 * grain + 1, (height + margin, width + margin), dtype=np.uint8))
    layer = layer.convert("RGB")
    out = []
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        field = Image.fromarray(rng.integers(0, 256, (7, 5, 3), dtype=np.uint8))
        # bicubic to a quarter, then bilinear: as smooth as bicubic all the way, at half the cost
        image = field.resize((width // 4, height // 4), Image.Resampling.BICUBIC).resize(
            size, Image.Resampling.BILINEAR)
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
            dx, dy = int(rng.integers(20, width // 4)), int(rng.integers(20, height // 4))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            if rng.random() < 0.5:
                draw.ellipse((x - dx, y - dy, x + dx, y + dy), fill=colour)
            else:
                draw.line((x, y, x + dx, y + dy), fill=colour, width=int(rng.integers(2, 12)))
        left, top = (int(v) for v in rng.integers(0, margin, 2))
        image = ImageChops.add(image, layer.crop((left, top, left + width, top + height)), 1.0, -grain)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        out.append(buffer.getvalue())
    return out


class _Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.served = 0
        self.bytes = 0
        self.connections = 0
        self.in_flight = 0
        self.max_in_flight = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes; with Nagle on, a kept-alive connection waits for
    # the client's delayed ACK between them, and the server, not the client, sets the pace.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        stats: _Stats = self.server.stats  # type: ignore[attr-defined]
        with stats.lock:
            stats.connections += 1

    def do_GET(self) -> None:  # http.server's naming
        stats: _Stats = self.server.stats  # type: ignore[attr-defined]
        if self.path in ("/_stats", "/_stats?reset=1"):
            with stats.lock:
                body = json.dumps({"served": stats.served, "bytes": stats.bytes, "max_in_flight": stats.max_in_flight,
                                   "connections": stats.connections}).encode()
                if self.path.endswith("reset=1"):
                    stats.served = stats.bytes = stats.max_in_flight = stats.connections = 0
            return self._send(body, "application/json")
        with stats.lock:
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        latency = self.server.latency  # type: ignore[attr-defined]
        if latency:
            time.sleep(latency)
        name = self.path.rsplit("/", 1)[-1].split(".")[0]
        images: list[bytes] = self.server.images  # type: ignore[attr-defined]
        body = images[int(name) % len(images)] if name.isdigit() else b""
        with stats.lock:  # before writing: the client cannot have sent its next request yet
            stats.in_flight -= 1
            stats.served += 1
            stats.bytes += len(body)
        if not body:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        return self._send(body, "image/jpeg")

    def _send(self, body: bytes, kind: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


def _serve_child(hosts: int, latency: float, image_size: tuple[int, int] | None = None,
                 distinct: int = DISTINCT_IMAGES) -> None:
    """The server process: ``hosts`` ports; prints them as JSON, serves until stdin closes."""
    images = _sheets(distinct, image_size) if image_size else _jpegs(distinct)
    servers = []
    for _ in range(hosts):
        server = _Server(("127.0.0.1", 0), _Handler)
        server.stats, server.latency, server.images = _Stats(), latency, images  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
    print(json.dumps([server.server_address[1] for server in servers]), flush=True)
    sys.stdin.read()  # the parent closes our stdin (or dies) to stop us
    for server in servers:
        server.shutdown()
        server.server_close()


def start_image_server(hosts: int, *, latency: float = 0.0, image_size: tuple[int, int] | None = None,
                       distinct: int = DISTINCT_IMAGES) -> tuple[list[str], Callable[[], None]]:
    """Start the JPEG server in a child process; return its base URLs (one per host) and a stop callback.

    It serves ``distinct`` different images, URL ``n`` getting image ``n % distinct``: tiny
    noise JPEGs, or with ``image_size`` (width, height) sheet-sized ones (rendered at
    startup, ~30 ms each on one core). A subprocess, not :mod:`multiprocessing`, so that a
    calling script needs no ``if __name__ == "__main__"`` guard.
    """
    command = [sys.executable, str(Path(__file__).resolve()), "_child", "--hosts", str(hosts),
               "--latency", str(latency), "--distinct", str(distinct)]
    if image_size:
        command += ["--image-size", f"{image_size[0]}x{image_size[1]}"]
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    line = child.stdout.readline()
    if not line:
        child.kill()
        raise RuntimeError(f"the image server did not start (exit status {child.wait()})")
    ports = json.loads(line)

    def stop() -> None:
        if child.poll() is None:
            child.stdin.close()  # type: ignore[union-attr]
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    return [f"http://127.0.0.1:{port}" for port in ports], stop


def make_urls(bases: list[str], count: int) -> list[str]:
    """``count`` image URLs spread round-robin over the hosts."""
    return [f"{bases[i % len(bases)]}/img/{i}.jpg" for i in range(count)]


def write_url_list(urls: list[str], path: Path) -> Path:
    """One URL per line (img2dataset's ``input_format="txt"``)."""
    path = Path(path)
    path.write_text("".join(url + "\n" for url in urls), encoding="utf-8")
    return path


def server_stats(bases: list[str], *, reset: bool = False) -> dict[str, dict[str, int]]:
    """Per host: images and bytes served and the most requests in flight at once (since the last reset)."""
    with httpx.Client() as client:
        return {base: client.get(base + ("/_stats?reset=1" if reset else "/_stats")).json() for base in bases}


def _run(urls: list[str], dest: Path, workers: int, per_host: int) -> tuple[float, dict[str, Any], int]:
    # herbid is imported here, not at the top, so that the server process starts light
    from herbid.data.download import download_images
    from herbid.data.sources.base import ProblemLog

    problems = ProblemLog()
    start = time.perf_counter()
    got = download_images(urls, dest, problems, workers=workers, per_host=per_host, timeout=30.0, progress=False,
                          allow_private_hosts=True)
    return time.perf_counter() - start, got, len(problems)


def measure(urls: int, hosts: int, *, workers: int = 16, per_host: int = 2, latency: float = 0.0,
            uncapped: bool = True, repeat: int = 2) -> dict[str, Any]:
    """Time herbid's downloader on ``urls`` URLs over ``hosts`` loopback hosts; a dict of figures.

    Each of ``repeat`` rounds downloads everything into a fresh folder with ``per_host``,
    and (``uncapped``) again with ``per_host=workers``, alternating so that a busy machine
    slows both alike; medians are reported, with the cap's cost as a throughput ratio. The
    last capped folder is then downloaded again to time the resume (it should ask nothing).
    """
    bases, stop = start_image_server(hosts, latency=latency)
    url_list = make_urls(bases, urls)
    modes = {"capped": per_host, **({"uncapped": workers} if uncapped else {})}
    seconds: dict[str, list[float]] = {mode: [] for mode in modes}
    peak: dict[str, int] = dict.fromkeys(modes, 0)
    fewest: dict[str, int] = dict.fromkeys(modes, urls)  # images stored, worst round
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for round_ in range(repeat):
                for mode, cap in modes.items():
                    server_stats(bases, reset=True)
                    dest = Path(tmp) / f"{mode}-{round_}"
                    took, got, failed = _run(url_list, dest, workers, cap)
                    stats = server_stats(bases)
                    seconds[mode].append(took)
                    fewest[mode] = min(fewest[mode], len(got))
                    peak[mode] = max(peak[mode], *(s["max_in_flight"] for s in stats.values()))
                    if mode == "capped":
                        stored, stored_bytes, last = len(got), sum(p.stat().st_size for p in got.values()), dest
            server_stats(bases, reset=True)
            resume_seconds, again, _ = _run(url_list, last, workers, per_host)
            resume_requests = sum(s["served"] for s in server_stats(bases).values())
    finally:
        stop()
    median = {mode: statistics.median(values) for mode, values in seconds.items()}
    result: dict[str, Any] = {
        "urls": urls, "hosts": hosts, "workers": workers, "per_host": per_host, "latency_s": latency,
        "repeat": repeat, "stored": stored, "failed": failed, "seconds": round(median["capped"], 3),
        "images_per_s": round(stored / median["capped"], 1),
        "mb_per_s": round(stored_bytes / median["capped"] / 2**20, 2),
        "max_in_flight_per_host": peak["capped"],
        "resume_seconds": round(resume_seconds, 3), "resume_requests": resume_requests, "resume_stored": len(again),
    }
    if uncapped:
        result.update({"uncapped_seconds": round(median["uncapped"], 3),
                       "uncapped_images_per_s": round(fewest["uncapped"] / median["uncapped"], 1),
                       "uncapped_max_in_flight_per_host": peak["uncapped"],
                       "capped_vs_uncapped_throughput": round(median["uncapped"] / median["capped"], 3)})
    return result


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 1200x1680, not {text!r}") from None
    return width, height


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", choices=["measure", "serve", "_child"], default="measure")
    parser.add_argument("--full", action="store_true", help="20,000 URLs over 64 hosts (default 2,000 over 8)")
    parser.add_argument("--urls", type=int, default=None)
    parser.add_argument("--hosts", type=int, default=None)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--per-host", type=int, default=2)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds the server waits before each image")
    parser.add_argument("--repeat", type=int, default=2, help="rounds (capped and uncapped alternate); medians")
    parser.add_argument("--url-list", type=Path, default=None, help="serve: write the URLs here, one per line")
    parser.add_argument("--image-size", type=_size, default=None, metavar="WxH",
                        help="serve sheet-like JPEGs of this size (e.g. 1200x1680) instead of tiny noise")
    parser.add_argument("--distinct", type=int, default=DISTINCT_IMAGES, metavar="N", help="distinct images served")
    args = parser.parse_args()
    urls = args.urls or (20_000 if args.full else 2_000)
    hosts = args.hosts or (64 if args.full else 8)
    if args.mode == "_child":
        return _serve_child(hosts, args.latency, args.image_size, args.distinct)
    if args.mode == "serve":
        bases, stop = start_image_server(hosts, latency=args.latency, image_size=args.image_size,
                                         distinct=args.distinct)
        if args.url_list:
            write_url_list(make_urls(bases, urls), args.url_list)
        print(json.dumps({"bases": bases, "url_list": str(args.url_list) if args.url_list else None}), flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            stop()
        return
    result = measure(urls, hosts, workers=args.workers, per_host=args.per_host, latency=args.latency,
                     repeat=args.repeat)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
