"""The web app through its HTTP interface: identification, similar sheets, bad uploads, auth.

One tiny ``small_cnn`` bundle (6 synthetic species, one epoch) and its specimen index are
built once per session by :func:`web_assets` (``tests/test_browser.py`` reuses them);
accuracy does not matter here, only what the API returns and refuses.
"""

from __future__ import annotations

import asyncio
import io
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from herbid.cli.main import main
from herbid.data.build import BuildOptions, build_dataset
from herbid.data.splits import split_dataset
from herbid.data.synthetic import make_synthetic_collection
from herbid.identification.index import build_index
from herbid.training.config import TrainConfig
from herbid.training.loop import train
from herbid.web.app import Service, create_app
from herbid.web.server import UnsafeBindError, check_bind, is_loopback, running_server

N_SPECIES = 6
TOKEN = "test-token-3f9a"
#: The app answers only Hosts naming this machine (DNS rebinding defence): not "testserver".
LOCAL = "http://localhost"


@dataclass(frozen=True)
class WebAssets:
    """A trained bundle, its index, and the source sheets it was built from."""

    bundle: Path
    index: Path
    dataset: Path
    sheets: list[Path]
    service: Service

    @property
    def species(self) -> list[str]:
        return list(self.service.identifier.species)


_ASSETS: dict[str, WebAssets] = {}


def web_assets(tmp_path_factory: pytest.TempPathFactory) -> WebAssets:
    """Build (once per session) a 6-species synthetic dataset, a 1-epoch bundle and an index."""
    if "assets" not in _ASSETS:
        root = tmp_path_factory.mktemp("web")
        source = make_synthetic_collection(root / "source", n_species=N_SPECIES, per_species=4, seed=11)
        dataset = root / "dataset"
        build_dataset([source], dataset, BuildOptions(workers=1, progress=False))
        split_dataset(dataset, by="collector", test_fraction=0.3, seed=0)
        run = train(TrainConfig.from_recipe("paper", dataset=str(dataset), out=str(root / "run"), arch="small_cnn", epochs=1,
                                batch_size=4, lr=0.02, workers=0, device="cpu"), progress=False)
        index = build_index(run.bundle_dir, dataset, root / "index", device="cpu", progress=False)
        sheets = sorted((source.parent / "images").glob("*.jpg"))
        service = Service.load(run.bundle_dir, index, device="cpu")
        _ASSETS["assets"] = WebAssets(run.bundle_dir, index, dataset, sheets, service)
    return _ASSETS["assets"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> WebAssets:
    return web_assets(tmp_path_factory)


@pytest.fixture(scope="module")
def client(assets: WebAssets) -> TestClient:
    with TestClient(create_app(service=assets.service), base_url=LOCAL) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def sheet(assets: WebAssets) -> bytes:
    return assets.sheets[0].read_bytes()


def upload(data: bytes, name: str = "sheet.jpg", content_type: str = "image/jpeg") -> dict:
    return {"file": (name, data, content_type)}


def assert_still_serving(client: TestClient, sheet: bytes, headers: dict | None = None) -> None:
    assert client.get("/api/health").json()["status"] == "ok"
    assert client.post("/api/identify", files=upload(sheet), headers=headers or {}).status_code == 200


# ----------------------------------------------------------------------------- health, page


def test_health_reports_model_species_and_index(client: TestClient, assets: WebAssets) -> None:
    health = client.get("/api/health").json()
    assert health["status"] == "ok"
    assert health["model_id"] == assets.service.identifier.model_id
    assert health["species"] == N_SPECIES
    assert health["index_size"] == len(assets.sheets)
    assert health["auth"] is False and health["max_upload_bytes"] == 20 * 2**20


def test_page_and_assets_are_local(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and 'id="file-input"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset, kind in (("/static/app.js", "javascript"), ("/static/style.css", "text/css")):
        response = client.get(asset)
        assert response.status_code == 200 and kind in response.headers["content-type"]
        # no CDN, no web fonts: the page works on an offline network
        assert "http://" not in response.text and "https://" not in response.text
    assert "https://" not in page.text and "http://" not in page.text


def test_openapi_is_served_and_documents_uploads(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/api/identify", "/api/similar", "/api/health", "/api/specimens/{image_id}/thumbnail"} <= set(schema["paths"])
    body = schema["paths"]["/api/identify"]["post"]["requestBody"]["content"]
    assert "file" in body["multipart/form-data"]["schema"]["properties"]


# ---------------------------------------------------------------------------- identification


def test_identify_returns_top5_of_the_bundle_species(client: TestClient, assets: WebAssets, sheet: bytes) -> None:
    response = client.post("/api/identify", files=upload(sheet))
    assert response.status_code == 200, response.text
    result = response.json()
    names = [entry["scientificName"] for entry in result["top"]]
    probabilities = [entry["probability"] for entry in result["top"]]
    assert len(names) == 5 and len(set(names)) == 5 and set(names) <= set(assets.species)
    assert sum(probabilities) <= 1 + 1e-6 and probabilities == sorted(probabilities, reverse=True)
    assert result["genus"]["name"] and result["family"]["name"]
    assert isinstance(result["uncertain"], bool) and result["suggested_rank"] in {"species", "genus", "family", "none"}
    # the one-pass path of the app agrees with the library's own identification
    expected = assets.service.identifier.identify_bytes(sheet, top_k=5).to_dict()
    assert names == [entry["scientificName"] for entry in expected["top"]]
    assert probabilities == pytest.approx([entry["probability"] for entry in expected["top"]], abs=1e-5)


def test_identify_top_k_is_bounded_by_the_species(client: TestClient, sheet: bytes) -> None:
    assert len(client.post("/api/identify?top_k=50", files=upload(sheet)).json()["top"]) == N_SPECIES
    assert client.post("/api/identify?top_k=0", files=upload(sheet)).status_code == 422


def test_similar_returns_neighbours_with_catalogue_data(client: TestClient, assets: WebAssets) -> None:
    response = client.post("/api/similar?k=3", files=upload(assets.sheets[2].read_bytes()))
    assert response.status_code == 200, response.text
    neighbours = response.json()["neighbours"]
    assert len(neighbours) == 3
    for item in neighbours:
        assert {"image_id", "catalogNumber", "institutionCode", "recordedBy", "scientificName", "similarity",
                "thumbnail_url"} <= set(item)
        assert not {"image_path", "source_path", "large_image_path"} & set(item), "server paths must not leak"
    # a sheet of the index finds itself first (its catalogue number is its file name)
    assert neighbours[0]["catalogNumber"] == assets.sheets[2].stem
    assert neighbours[0]["similarity"] == pytest.approx(1.0, abs=1e-3)
    similarities = [item["similarity"] for item in neighbours]
    assert similarities == sorted(similarities, reverse=True)


def test_identify_can_include_similar_sheets(client: TestClient, sheet: bytes) -> None:
    result = client.post("/api/identify?similar=2", files=upload(sheet)).json()
    assert len(result["top"]) == 5 and len(result["similar"]) == 2


def test_similar_without_an_index_is_409(assets: WebAssets, sheet: bytes) -> None:
    no_index = Service(assets.service.identifier)
    with TestClient(create_app(service=no_index), base_url=LOCAL) as bare:
        assert bare.get("/api/health").json()["index_size"] is None
        for url in ("/api/similar", "/api/identify?similar=3"):
            response = bare.post(url, files=upload(sheet))
            assert response.status_code == 409 and "--index" in response.json()["detail"]
        assert bare.get("/api/specimens/0123456789abcdef/thumbnail").status_code == 404
        assert bare.post("/api/identify", files=upload(sheet)).status_code == 200


# ---------------------------------------------------------------------------- bad uploads


def png_claiming(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header claims ``width × height`` pixels (a bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


BAD_UPLOADS = {
    "zero bytes": (b"", 400, "empty"),
    "not an image": (b"name,species\nA,B\n" * 20, 415, "not an image"),
    "decompression bomb": (png_claiming(60_000, 60_000), 422, "bomb"),
}


@pytest.mark.parametrize("kind", sorted(BAD_UPLOADS))
def test_bad_upload_is_a_clear_4xx(client: TestClient, sheet: bytes, kind: str) -> None:
    data, status, words = BAD_UPLOADS[kind]
    response = client.post("/api/identify", files=upload(data))
    assert response.status_code == status, response.text
    assert words in response.json()["detail"].lower()
    assert_still_serving(client, sheet)


def test_truncated_image_is_422(client: TestClient, sheet: bytes) -> None:
    response = client.post("/api/identify", files=upload(sheet[: len(sheet) // 3]))
    assert response.status_code == 422 and "truncated" in response.json()["detail"]
    assert_still_serving(client, sheet)


def test_png_bytes_named_jpg_are_fine(client: TestClient, sheet: bytes) -> None:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(sheet)).save(buffer, format="PNG")
    assert client.post("/api/identify", files=upload(buffer.getvalue(), "sheet.jpg")).status_code == 200


def test_max_pixels_is_configurable(assets: WebAssets, sheet: bytes) -> None:
    strict = Service.load(assets.bundle, device="cpu", max_pixels=10_000)
    with TestClient(create_app(service=strict), base_url=LOCAL) as small:
        response = small.post("/api/identify", files=upload(sheet))
        assert response.status_code == 422 and "decompression bomb" in response.json()["detail"]


def test_request_shape_errors(client: TestClient, sheet: bytes) -> None:
    not_multipart = client.post("/api/identify", content=sheet, headers={"content-type": "image/jpeg"})
    assert not_multipart.status_code == 415
    wrong_field = client.post("/api/identify", files={"image": ("a.jpg", sheet, "image/jpeg")})
    assert wrong_field.status_code == 400 and "'file'" in wrong_field.json()["detail"]
    garbage = client.post("/api/identify", content=b"--x\r\nnonsense",
                          headers={"content-type": "multipart/form-data; boundary=x"})
    assert garbage.status_code == 400
    assert_still_serving(client, sheet)


@pytest.fixture(scope="module")
def small_limit(assets: WebAssets) -> TestClient:
    with TestClient(create_app(service=assets.service, max_upload_bytes=100_000), base_url=LOCAL) as test_client:
        yield test_client


def test_oversized_upload_is_413(small_limit: TestClient, sheet: bytes) -> None:
    big = sheet + b"\0" * 200_000
    response = small_limit.post("/api/identify", files=upload(big))
    assert response.status_code == 413 and "limit" in response.json()["detail"]
    assert small_limit.get("/api/health").json()["max_upload_bytes"] == 100_000
    assert small_limit.post("/api/identify", files=upload(sheet)).status_code == 200


def asgi_post(app, path: str, headers: dict[str, str], chunks: int, chunk: bytes = b"\0" * 65536,
              first: bytes = b"") -> tuple[int, int]:
    """POST a streamed body straight to the ASGI app; return (status, body chunks it pulled).

    TestClient reads a request body completely before the app sees it, so whether the app
    stops reading at the limit can only be seen at the ASGI level.
    """
    pulled = 0
    status: list[int] = []

    async def receive() -> dict:
        nonlocal pulled
        if pulled == 0 and first:
            pulled += 1
            return {"type": "http.request", "body": first, "more_body": True}
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": pulled < chunks}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1")] + [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    return status[0], pulled


def test_oversized_streamed_upload_is_413_without_reading_it_all(assets: WebAssets) -> None:
    """A chunked body (no Content-Length) is counted while streaming and cut off early."""
    app = create_app(service=assets.service, max_upload_bytes=100_000)
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
    status, pulled = asgi_post(app, "/api/identify", {"content-type": "multipart/form-data; boundary=b"},
                               chunks=1000, first=part)  # 64 MB if it were all read
    assert status == 413
    assert pulled <= 4, f"the app read {pulled} chunks of 64 KiB past a 100 kB limit"


def test_declared_huge_length_is_refused_before_reading(small_limit: TestClient) -> None:
    response = small_limit.post("/api/identify", content=b"x" * 10, headers={
        "content-type": "multipart/form-data; boundary=b", "content-length": str(10 * 2**30)})
    assert response.status_code == 413


# ---------------------------------------------------------------------------- thumbnails


def test_thumbnail_serves_the_indexed_sheet(client: TestClient, assets: WebAssets) -> None:
    item = client.post("/api/similar?k=1", files=upload(assets.sheets[0].read_bytes())).json()["neighbours"][0]
    response = client.get(item["thumbnail_url"])
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    stored = assets.service.thumbnail_path(item["image_id"])
    assert stored is not None and response.content == stored.read_bytes()
    assert Image.open(io.BytesIO(response.content)).size == (256, 256)


@pytest.mark.parametrize("image_id", [
    "0000000000000000",  # well-formed, not in the index
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "%2e%2e",
    "..",
    "%2Fetc%2Fpasswd",
    "bundle.json",
    "a" * 65,
])
def test_thumbnail_refuses_unknown_ids_and_paths(client: TestClient, image_id: str) -> None:
    response = client.get(f"/api/specimens/{image_id}/thumbnail")
    assert response.status_code in {404, 422}, (image_id, response.status_code)
    assert b"root:" not in response.content


def test_thumbnail_lookup_uses_the_index_only(assets: WebAssets) -> None:
    assert assets.service.thumbnail_path("../../etc/passwd") is None
    assert assets.service.thumbnail_path(str(assets.bundle / "bundle.json")) is None
    known = next(iter(assets.service.thumbnails))
    assert assets.service.thumbnail_path(known).is_file()


# ---------------------------------------------------------------------------- auth


@pytest.fixture(scope="module")
def guarded(assets: WebAssets) -> TestClient:
    with TestClient(create_app(service=assets.service, token=TOKEN), base_url=LOCAL) as test_client:
        yield test_client


def test_token_guards_every_api_route_but_health(guarded: TestClient, sheet: bytes) -> None:
    health = guarded.get("/api/health")
    assert health.status_code == 200 and health.json()["auth"] is True
    assert guarded.get("/").status_code == 200  # the page holds no data; it asks for the token
    thumbnail = f"/api/specimens/{next(iter(guarded.app.state.service.thumbnails))}/thumbnail"
    calls = [("post", "/api/identify"), ("post", "/api/similar"), ("get", "/api/model"), ("get", thumbnail)]
    for method, url in calls:
        kwargs = {"files": upload(sheet)} if method == "post" else {}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            response = getattr(guarded, method)(url, headers=headers, **kwargs)
            assert response.status_code == 401, (url, headers)
            assert response.headers["www-authenticate"] == "Bearer"
        ok = getattr(guarded, method)(url, headers={"Authorization": f"Bearer {TOKEN}"}, **kwargs)
        assert ok.status_code == 200, (url, ok.text)


def test_unauthenticated_upload_is_not_read(assets: WebAssets) -> None:
    """Auth runs before the body is read: a stranger cannot make the server buffer uploads."""
    app = create_app(service=assets.service, token=TOKEN)
    status, pulled = asgi_post(app, "/api/identify", {"content-type": "multipart/form-data; boundary=b"}, chunks=200)
    assert status == 401 and pulled == 0


def test_create_app_refuses_an_empty_token(assets: WebAssets) -> None:
    with pytest.raises(ValueError):
        create_app(service=assets.service, token="")


# ---------------------------------------------------------------------------- serve rules


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"])
def test_loopback_needs_no_token(host: str) -> None:
    assert is_loopback(host)
    check_bind(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "example.org", "myhost"])
def test_public_bind_needs_token_or_no_auth(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(UnsafeBindError, match="--token"):
        check_bind(host)
    check_bind(host, token="s3cret")
    check_bind(host, no_auth=True)


def test_contradictory_or_empty_auth_is_refused() -> None:
    with pytest.raises(UnsafeBindError, match="empty"):
        check_bind("0.0.0.0", token="  ")
    with pytest.raises(UnsafeBindError, match="contradict"):
        check_bind("127.0.0.1", token="t", no_auth=True)


def test_cli_serve_refuses_public_bind_without_loading_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("HERBID_TOKEN", raising=False)
    # the bundle does not even exist: the bind check comes first, and nothing binds
    assert main(["serve", str(tmp_path / "no-bundle"), "--host", "0.0.0.0", "--port", "1"]) == 1
    assert "--no-auth" in capsys.readouterr().err


# ---------------------------------------------------------------------------- concurrency


def test_inference_does_not_block_the_event_loop(assets: WebAssets, sheet: bytes) -> None:
    """While one identification is stuck in its worker thread, health still answers."""
    release, entered = threading.Event(), threading.Event()
    slow = Service(assets.service.identifier, assets.service.index)
    real = slow.analyse

    def stuck(*args, **kwargs):
        entered.set()
        release.wait(30)
        return real(*args, **kwargs)

    slow.analyse = stuck  # type: ignore[method-assign]
    with running_server(create_app(service=slow)) as url:
        result: dict = {}
        worker = threading.Thread(target=lambda: result.update(
            r=httpx.post(f"{url}/api/identify", files=upload(sheet), timeout=60)))
        worker.start()
        try:
            assert entered.wait(30)
            # a blocked event loop could not answer until ``release`` is set, which only
            # happens after this request: it would time out instead of answering
            assert httpx.get(f"{url}/api/health", timeout=10).status_code == 200
            assert not release.is_set() and "r" not in result
        finally:
            release.set()
            worker.join(60)
        assert result["r"].status_code == 200
