"""Hostile uploads and requests to ``herbid serve``, and herbid's pixel limit everywhere.

One test per row of the "hostile inputs" issue that concerns the web server and image
opening (rows 8, 9 and 11). Each drives a real server (``running_server``: uvicorn on a
loopback port) over HTTP, as a browser or a script would.
"""

from __future__ import annotations

import io
import json
import struct
import threading
import time
import zlib
from pathlib import Path

import httpx
import pytest
from PIL import Image

from herbid.cli.main import main
from herbid.data.build import BuildOptions, build_dataset
from herbid.data.dataset_folder import load_manifest
from herbid.data.imaging import decode_rgb
from herbid.web.app import DEFAULT_MAX_UPLOAD_PIXELS, create_app
from herbid.web.server import running_server, served_hosts
from peak_rss import PeakRss
from test_web import WebAssets, upload, web_assets


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> WebAssets:
    return web_assets(tmp_path_factory)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def grey16_png(side: int) -> bytes:
    """A ``side``×``side`` 16-bit greyscale PNG of a repeating ramp: small on disk
    (9400² is ~0.7 MB), 2 bytes a pixel once decoded."""
    header = struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)
    row = b"\x00" + (bytes(range(256)) * (2 * side // 256 + 1))[: 2 * side]
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def big_scan_jpeg(side: int = 9500) -> bytes:
    """A real-sized (``side``², 90 MP at 9500) baseline JPEG sheet: paper with a dark stem."""
    image = Image.new("L", (side, side), 235)
    image.paste(40, (side // 2 - side // 40, side // 8, side // 2 + side // 40, side - side // 8))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=70)
    return buffer.getvalue()


def post_all(url: str, bodies: list[bytes]) -> list[httpx.Response]:
    """POST every body to ``url`` at once, one thread each."""
    replies: list[httpx.Response | None] = [None] * len(bodies)

    def send(slot: int) -> None:
        replies[slot] = httpx.post(url, files=upload(bodies[slot], "sheet.png", "image/png"), timeout=120)

    threads = [threading.Thread(target=send, args=(slot,)) for slot in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert all(reply is not None for reply in replies), "a request did not come back"
    return replies  # type: ignore[return-value]


# ----------------------------------------------------------------------------- row 8


def test_row08_tiny_16bit_png_of_88_megapixels_is_refused_from_its_header(assets: WebAssets) -> None:
    bomb = grey16_png(9400)
    assert len(bomb) < 1_000_000  # under a MB on the wire, 177 MB as 16-bit pixels
    with running_server(create_app(service=assets.service)) as url, PeakRss().watching() as memory:
        started = time.monotonic()
        reply = httpx.post(f"{url}/api/identify", files=upload(bomb, "sheet.png", "image/png"), timeout=60)
        elapsed = time.monotonic() - started
    assert reply.status_code == 413, reply.text
    assert "9400×9400" in reply.json()["detail"] and "--max-upload-pixels" in reply.json()["detail"]
    assert elapsed < 2.0  # was 6.6 s: the pixels are never decoded
    assert memory.extra < 100 * 2**20, f"RSS grew by {memory.extra / 2**20:.0f} MiB"  # was +2.1 GB


def test_row08_concurrent_big_16bit_uploads_stay_under_the_stated_memory_bound(assets: WebAssets) -> None:
    # Just under the default pixel cap; three at once against two decode slots. Before the
    # fix each decode held float64 copies (~24 bytes a pixel, ~0.9 GB here, 2.6 GB for three).
    side = 6000
    assert side * side <= DEFAULT_MAX_UPLOAD_PIXELS
    body = grey16_png(side)
    app = create_app(service=assets.service)
    with running_server(app) as url:
        limits = httpx.get(f"{url}/api/health", timeout=30).json()["limits"]
        assert limits["max_upload_pixels"] == DEFAULT_MAX_UPLOAD_PIXELS and limits["concurrent_decodes"] == 2
        stated = limits["decode_memory_bytes_total"]
        with PeakRss().watching() as memory:
            replies = post_all(f"{url}/api/identify", [body] * 3)
    assert [reply.status_code for reply in replies] == [200, 200, 200], [reply.text for reply in replies]
    assert len({tuple(sorted(r.json()["top"][0].items())) for r in replies}) == 1  # the same answer each time
    print(f"row 8: 3 concurrent {side}² 16-bit uploads: RSS +{memory.extra / 2**20:.0f} MiB (stated bound {stated / 2**20:.0f} MiB)")
    assert memory.extra < stated, f"RSS grew by {memory.extra / 2**20:.0f} MiB, stated bound {stated / 2**20:.0f} MiB"
    assert memory.extra < 600 * 2**20, f"RSS grew by {memory.extra / 2**20:.0f} MiB"


def test_row08_health_states_the_limits_an_operator_set(assets: WebAssets) -> None:
    app = create_app(service=assets.service, max_upload_pixels=1_000_000, concurrent_decodes=3,
                     max_upload_bytes=2 * 2**20)
    with running_server(app) as url:
        limits = httpx.get(f"{url}/api/health", timeout=30).json()["limits"]
        too_big = httpx.post(f"{url}/api/identify", files=upload(grey16_png(1100), "s.png", "image/png"), timeout=30)
    assert limits["max_upload_pixels"] == 1_000_000 and limits["concurrent_decodes"] == 3
    per_request = limits["decode_memory_bytes_per_request"]
    assert 1_000_000 < per_request < 20 * 1_000_000 + 2 * 2**20
    assert limits["decode_memory_bytes_total"] == 3 * per_request
    assert too_big.status_code == 413


# ----------------------------------------------------------------------------- row 9


@pytest.fixture(scope="module")
def ninety_megapixels() -> bytes:
    return big_scan_jpeg(9500)


def test_row09_a_real_90_megapixel_scan_is_built_not_quarantined(ninety_megapixels: bytes, tmp_path: Path) -> None:
    folder = tmp_path / "src" / "Quercus robur"
    folder.mkdir(parents=True)
    (folder / "big.jpg").write_bytes(ninety_megapixels)
    result = build_dataset([tmp_path / "src"], tmp_path / "ds", BuildOptions(workers=1, progress=False))
    manifest = load_manifest(tmp_path / "ds")
    assert len(manifest) == 1, result.report["problems"]
    assert (int(manifest["width"][0]), int(manifest["height"][0])) == (9500, 9500)


def test_row09_herbid_limit_is_the_one_in_force_both_ways(ninety_megapixels: bytes, tmp_path: Path) -> None:
    image, original, _ = decode_rgb(ninety_megapixels)  # 90.25 MP: over Pillow's 89.5 MP default
    assert original == (9500, 9500) and image.width <= 1024 * 2
    folder = tmp_path / "src" / "Quercus robur"
    folder.mkdir(parents=True)
    (folder / "big.jpg").write_bytes(ninety_megapixels)
    # a stricter --max-pixels than Pillow's is herbid's own, with herbid's reason
    code = main(["dataset", "build", str(tmp_path / "src"), "--out", str(tmp_path / "ds"), "--max-pixels",
                 "50000000", "--workers", "1", "--no-progress"])
    problems = json.loads((tmp_path / "ds" / "report.json").read_text())["problems"]
    assert code in (0, 1) and len(problems) == 1, problems
    assert "too many pixels (9500×9500 > 50,000,000)" in json.dumps(problems, ensure_ascii=False)


def test_row09_a_90_megapixel_jpeg_upload_is_identified(assets: WebAssets, ninety_megapixels: bytes) -> None:
    with running_server(create_app(service=assets.service)) as url:
        reply = httpx.post(f"{url}/api/identify", files=upload(ninety_megapixels), timeout=60)
    assert reply.status_code == 200, reply.text  # a baseline JPEG decodes at 1/8 scale: within the cap
    assert len(reply.json()["top"]) == 5


# ----------------------------------------------------------------------------- row 11


def test_row11_dns_rebinding_host_is_refused_on_loopback(assets: WebAssets, sheet_bytes: bytes) -> None:
    with running_server(create_app(service=assets.service)) as url:
        port = url.rsplit(":", 1)[1]
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "localhost.evil.example"):
            for method, path in (("GET", "/api/health"), ("GET", "/"), ("POST", "/api/identify")):
                files = upload(sheet_bytes) if method == "POST" else None
                reply = httpx.request(method, f"{url}{path}", headers={"Host": host}, files=files, timeout=30)
                assert reply.status_code == 400, (host, path, reply.status_code)
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", "LOCALHOST"):
            reply = httpx.post(f"{url}/api/identify", headers={"Host": host}, files=upload(sheet_bytes), timeout=30)
            assert reply.status_code == 200, (host, reply.text)


def test_row11_allowed_host_option_adds_names(assets: WebAssets, sheet_bytes: bytes) -> None:
    app = create_app(service=assets.service, allowed_hosts=["herbarium.example.org", "*.lab.example"])
    with running_server(app) as url:
        def status(host: str) -> int:
            return httpx.post(f"{url}/api/identify", headers={"Host": host}, files=upload(sheet_bytes),
                              timeout=30).status_code

        assert status("herbarium.example.org") == 200
        assert status("gpu1.lab.example:8000") == 200
        assert status("lab.example.evil") == 400
        assert status("evil.example") == 400


def test_row11_served_hosts_follow_the_bind_address() -> None:
    assert served_hosts("127.0.0.1") == ["localhost", "127.0.0.1", "[::1]"]
    assert served_hosts("::1", ["Herbarium.Example.org"]) == ["localhost", "127.0.0.1", "[::1]",
                                                             "herbarium.example.org"]
    assert "10.1.2.3" in served_hosts("10.1.2.3")


@pytest.fixture(scope="module")
def sheet_bytes(assets: WebAssets) -> bytes:
    return assets.sheets[0].read_bytes()
