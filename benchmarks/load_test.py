"""Bounded load test of the web API: N concurrent clients, a fixed number of identifications.

    python benchmarks/load_test.py [--clients 8] [--per-client 25] [--arch efficientnet_lite0]
                                   [--bundle BUNDLE] [--image SHEET] [--url http://127.0.0.1:PORT]

Without ``--url`` it starts ``herbid serve`` as a subprocess on a free 127.0.0.1 port
(a separate process, so the clients do not share the server's interpreter lock), waits
for ``/api/health``, runs, and stops the server. ``--url`` targets a running server, on
a loopback address only: this script must never load anything but this machine.

Without ``--bundle`` it writes a bundle with *untrained* weights of ``--arch`` (speed
does not depend on what the weights learned), and without ``--image`` it renders one
synthetic sheet at ``--sheet-size`` (default 1400×2100, the size of a typical web-sized
herbarium scan). Reports requests/s, p50/p95/max latency and the error count; exits 1
when any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from herbid.web.server import is_loopback


@dataclass
class LoadResult:
    url: str
    clients: int
    requests: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    max_ms: float
    errors: int
    error_samples: list[str] = field(default_factory=list)
    server: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- inputs


def untrained_bundle(folder: Path, arch: str, n_species: int = 20) -> Path:
    """A bundle of ``arch`` with random weights and invented species (inference cost only)."""
    from herbid.inference.bundle import save_bundle
    from herbid.models.registry import create_model

    model, _ = create_model(arch, n_species)
    species = [f"Genus{i // 4} species{i}" for i in range(n_species)]
    taxonomy = {name: {"genus": name.split()[0], "family": f"Family{i // 8}"} for i, name in enumerate(species)}
    return save_bundle(folder / "bundle", model=model, arch=arch, species=species, taxonomy=taxonomy,
                       preprocessing=model.preprocessing, provenance={"created": "load-test"})


def synthetic_sheet(size: tuple[int, int]) -> bytes:
    import numpy as np

    from herbid.data.synthetic import render_sheet

    image, _ = render_sheet(0, np.random.default_rng(0), size=size)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(bundle: Path, port: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "herbid.cli.main", "serve", str(bundle), "--host", "127.0.0.1",
               "--port", str(port)]
    env = {key: value for key, value in os.environ.items() if key != "HERBID_TOKEN"}
    with open(log, "wb") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)


def wait_healthy(url: str, process: subprocess.Popen | None, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"the server exited with code {process.returncode} during start-up")
        try:
            response = httpx.get(f"{url}/api/health", timeout=2)
            if response.status_code == 200:
                return response.json()
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"{url} did not become healthy within {timeout:.0f} s")


def check_loopback_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise SystemExit(f"--url must be http(s)://HOST:PORT, not {url!r}")
    if not is_loopback(parts.hostname):
        raise SystemExit(f"refusing to load {parts.hostname}: this load test targets loopback addresses only")
    return url.rstrip("/")


# ----------------------------------------------------------------------------- load


async def one_client(client: httpx.AsyncClient, url: str, image: bytes, count: int, headers: dict[str, str],
                     latencies: list[float], errors: list[str]) -> None:
    for _ in range(count):
        started = time.perf_counter()
        try:
            response = await client.post(url, files={"file": ("sheet.jpg", image, "image/jpeg")}, headers=headers)
            if response.status_code != 200:
                errors.append(f"HTTP {response.status_code}: {response.text[:200]}")
                continue
        except httpx.HTTPError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        latencies.append(time.perf_counter() - started)


async def run_load(base: str, image: bytes, clients: int, per_client: int, token: str | None) -> LoadResult:
    url = f"{base}/api/identify?top_k=5"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    latencies: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        await one_client(client, url, image, 2, headers, [], errors)  # warm-up, not counted
        started = time.perf_counter()
        await asyncio.gather(*(one_client(client, url, image, per_client, headers, latencies, errors)
                               for _ in range(clients)))
        seconds = time.perf_counter() - started
    ordered = sorted(latencies) or [float("nan")]
    return LoadResult(url=base, clients=clients, requests=clients * per_client, seconds=seconds,
                      requests_per_s=len(latencies) / seconds, p50_ms=1000 * percentile(ordered, 50),
                      p95_ms=1000 * percentile(ordered, 95), max_ms=1000 * ordered[-1], errors=len(errors),
                      error_samples=errors[:5])


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    rank = max(1, round(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


# ----------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--per-client", type=int, default=25, help="requests each client sends")
    parser.add_argument("--url", help="a running server on a loopback address (default: start one)")
    parser.add_argument("--token", default=os.environ.get("HERBID_TOKEN"), help="bearer token for --url")
    parser.add_argument("--bundle", type=Path, help="bundle to serve (default: untrained --arch)")
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--image", type=Path, help="the sheet to send (default: a synthetic sheet)")
    parser.add_argument("--sheet-size", default="1400x2100", help="WIDTHxHEIGHT of the synthetic sheet")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args()


def report(result: LoadResult, args: argparse.Namespace, image_bytes: int) -> None:
    if args.json:
        print(json.dumps(asdict(result), indent=2))
        return
    server = result.server
    print(f"server   {result.url}  model {server.get('model_id')}  ({server.get('species')} species)")
    print(f"load     {result.clients} clients × {result.requests // result.clients} requests = {result.requests} "
          f"identifications of a {image_bytes / 1024:.0f} KiB sheet")
    print(f"result   {result.requests_per_s:.2f} requests/s over {result.seconds:.1f} s; latency p50 "
          f"{result.p50_ms:.0f} ms, p95 {result.p95_ms:.0f} ms, max {result.max_ms:.0f} ms; errors {result.errors}")
    for sample in result.error_samples:
        print(f"error    {sample}")


def main() -> int:
    args = parse_args()
    width, height = (int(v) for v in args.sheet_size.lower().split("x"))
    image = args.image.read_bytes() if args.image else synthetic_sheet((width, height))
    with tempfile.TemporaryDirectory(prefix="herbid-load-") as tmp:
        process = None
        if args.url:
            base = check_loopback_url(args.url)
        else:
            bundle = args.bundle or untrained_bundle(Path(tmp), args.arch)
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            process = start_server(bundle, port, Path(tmp) / "server.log")
        try:
            health = wait_healthy(base, process)
            result = asyncio.run(run_load(base, image, args.clients, args.per_client, args.token))
            result.server = health
        finally:
            if process is not None:
                process.terminate()
                process.wait(30)
    report(result, args, len(image))
    return 1 if result.errors else 0


if __name__ == "__main__":
    sys.exit(main())
