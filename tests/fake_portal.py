"""A small HTTP server on 127.0.0.1 that answers like iDigBio, GBIF and an image host.

Tests import the fixtures ``fake_portal`` and ``loopback_only`` from here (as
``fake_portal_fixture`` and ``loopback_only_fixture``, so the names do not clash with the
test arguments). The server holds a fixed set of specimens, pages through them like the real APIs, serves
small generated JPEG/PNG images, and can be told to misbehave once per path (``plan``):
answer 429 with Retry-After, 500, answer slowly, or cut a body short. It counts every
request so tests can check that nothing was fetched twice.

``loopback_only`` makes any connection to a host other than 127.0.0.1/localhost fail the
way an unresolvable host does, so no test can reach the network by accident — and tests
of offline behaviour get a realistic DNS failure for free.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
import zlib
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


# --- the fixed data set --------------------------------------------------------------------------


def gbif_occurrences(base: str) -> list[dict[str, Any]]:
    """Six GBIF-shaped occurrences: four give images (five in all), two are reported."""

    def image(name: str) -> dict[str, str]:
        return {"type": "StillImage", "format": "image/jpeg", "license": "CC0",
                "identifier": f"{base}/img/{name}.jpg"}

    common = {"basisOfRecord": "PRESERVED_SPECIMEN", "kingdom": "Plantae", "family": "Boraginaceae",
              "genus": "Pectocarya", "institutionCode": "NY", "country": "United States of America",
              "countryCode": "US", "license": "http://creativecommons.org/publicdomain/zero/1.0/legalcode"}
    return [
        {**common, "key": 1001, "gbifID": "1001", "occurrenceID": "urn:catalog:NY:V:0001",
         "catalogNumber": "00001", "scientificName": "Pectocarya linearis (Ruiz & Pav.) DC.",
         "recordedBy": "R. Reina", "recordNumber": "42", "eventDate": "1985-06-12",
         "media": [image("g1a"), image("g1b"), {"type": "Sound", "identifier": f"{base}/img/call.mp3"}]},
        {**common, "key": 1002, "catalogNumber": "00002", "scientificName": "Pectocarya setosa A.Gray",
         "eventDate": "1990-04-01", "media": [image("g2")]},
        {**common, "key": 1003, "catalogNumber": "00003", "scientificName": "incertae sedis",
         "verbatimScientificName": "Pectocarya linearis", "media": [image("g3")]},
        {**common, "key": 1004, "catalogNumber": "00004", "scientificName": "Pectocarya recurvata",
         "media": []},
        {**common, "key": 1005, "catalogNumber": "00005", "scientificName": "incertae sedis",
         "media": [image("g5")]},
        {**common, "key": 1006, "catalogNumber": "00006", "scientificName": "Pectocarya penicillata",
         "media": [image("g6")]},
    ]


def idigbio_records() -> list[dict[str, Any]]:
    """Five iDigBio specimen records (``/v2/search/records`` items)."""

    def record(uuid: str, data: dict[str, str], terms: dict[str, Any]) -> dict[str, Any]:
        return {"uuid": uuid, "type": "records", "etag": "e" + uuid, "data": data,
                "indexTerms": {"uuid": uuid, "hasImage": True, **terms}}

    return [
        record("r1", {"dwc:occurrenceID": "urn:uuid:occ-1", "dwc:catalogNumber": "NY01",
                      "dwc:institutionCode": "NY", "dwc:scientificName": "Viola sororia Willd.",
                      "dwc:genus": "Viola", "dwc:family": "Violaceae", "dwc:recordedBy": "H. H. Rusby",
                      "dwc:recordNumber": "123", "dwc:eventDate": "1890-05-04", "dwc:country": "USA"},
               {"scientificname": "viola sororia", "genus": "viola", "family": "violaceae"}),
        record("r2", {"dwc:catalogNumber": "NY02", "dwc:institutionCode": "NY",
                      "dwc:scientificName": "Viola pedata L."},
               {"scientificname": "viola pedata"}),
        record("r3", {"dwc:catalogNumber": "NY03"},  # a name only in the index terms
               {"scientificname": "viola pubescens", "genus": "viola", "family": "violaceae",
                "institutioncode": "ny", "datecollected": "1901-07-15T00:00:00+00:00"}),
        record("r4", {"dwc:catalogNumber": "NY04", "dwc:scientificName": "Viola rostrata"}, {}),
        record("r5", {"dwc:catalogNumber": "NY05"}, {}),  # no name anywhere
    ]


def idigbio_media(base: str) -> list[dict[str, Any]]:
    """Seven media items: five give records, one lacks a URL, one's specimen has no name."""

    def medium(uuid: str, record: str, url: str | None) -> dict[str, Any]:
        data = {"dcterms:rights": "CC BY 4.0"}
        terms: dict[str, Any] = {"uuid": uuid, "records": [record], "mediatype": "images"}
        if url:
            data["ac:accessURI"] = url
            terms["accessuri"] = url.lower()
        return {"uuid": uuid, "type": "mediarecords", "data": data, "indexTerms": terms}

    return [
        medium("m1", "r1", f"{base}/img/i1a.jpg"),
        medium("m2", "r1", f"{base}/img/i1b.jpg"),
        medium("m3", "r2", f"{base}/img/i2.jpg"),
        medium("m4", "r3", f"{base}/img/i3.jpg"),
        medium("m5", "r4", None),
        medium("m6", "r5", f"{base}/img/i5.jpg"),
        medium("m7", "r2", f"{base}/img/i2b.jpg"),
    ]


def make_image(name: str, fmt: str = "JPEG", size: tuple[int, int] = (24, 36)) -> bytes:
    """A small image whose colour depends on ``name``, so different URLs give different files."""
    seed = zlib.crc32(name.encode())
    colour = (seed & 255, (seed >> 8) & 255, (seed >> 16) & 255)
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


# --- the server ----------------------------------------------------------------------------------


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (timeout tests) leaves a broken pipe here; that is expected.
        pass


class FakePortal:
    """The server and what it has seen. ``url`` is its base, e.g. ``http://127.0.0.1:40123``."""

    def __init__(self) -> None:
        self.server = _QuietServer(("127.0.0.1", 0), _Handler)
        self.server.portal = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.lock = threading.Lock()
        self.requests: list[tuple[str, dict[str, list[str]]]] = []
        self.plans: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        self.gbif = gbif_occurrences(self.url)
        self.idigbio_records = idigbio_records()
        self.idigbio_media = idigbio_media(self.url)
        #: Raw body to answer every GBIF search with (a recorded answer), instead of ``gbif``.
        self.gbif_body: bytes | None = None
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)

    def start(self) -> FakePortal:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def plan(self, path: str, *actions: tuple[Any, ...]) -> None:
        """Misbehave on the next requests for ``path``, one action each, then behave.

        Actions: ``("status", code, headers)``, ``("slow", seconds)``, ``("truncate",)``,
        ``("pass",)`` (answer normally).
        """
        with self.lock:
            self.plans[path].extend(actions)

    def hits(self, path: str | None = None) -> int:
        with self.lock:
            return sum(1 for p, _ in self.requests if path is None or p == path)

    def queries(self, path: str) -> list[dict[str, list[str]]]:
        with self.lock:
            return [q for p, q in self.requests if p == path]

    def image_bytes(self, path: str) -> bytes:
        """The bytes served for an image path (``/img/x.jpg`` JPEG, ``/img/x`` PNG)."""
        name = path.rsplit("/", 1)[-1]
        return make_image(name, "JPEG" if name.endswith(".jpg") else "PNG")

    def _next_action(self, path: str) -> tuple[Any, ...] | None:
        with self.lock:
            plan = self.plans.get(path)
            return plan.pop(0) if plan else None

    def _record(self, path: str, query: dict[str, list[str]]) -> None:
        with self.lock:
            self.requests.append((path, query))


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakePortal/1"

    @property
    def portal(self) -> FakePortal:
        return self.server.portal  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        self.portal._record(path, query)
        action = self.portal._next_action(path)
        truncate = False
        if action is not None:
            if action[0] == "status":
                headers = action[2] if len(action) > 2 else {}
                return self._send(action[1], b'{"error": "planned"}', "application/json", headers)
            if action[0] == "slow":
                time.sleep(action[1])
            truncate = action[0] == "truncate"
        self._route(path, query, truncate)

    def _route(self, path: str, query: dict[str, list[str]], truncate: bool) -> None:
        if path == "/v1/occurrence/search":
            return self._json(self._gbif_search(query))
        if path == "/v2/search/media":
            return self._json(self._idigbio_media(query))
        if path == "/v2/search/records":
            return self._json(self._idigbio_records(query))
        if path == "/huge.jpg":  # declares far more than any cap, sends nothing
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(10**12))
            self.end_headers()
            return None
        if path == "/stream-big.jpg":  # no Content-Length: only counting bytes can stop it
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.end_headers()
            self.wfile.write(b"\xff\xd8\xff" + b"\0" * 300_000)
            return None
        if path == "/page.html":
            return self._send(200, b"<html>gone</html>", "text/html; charset=utf-8")
        if path.startswith("/img/"):
            body = self.portal.image_bytes(path)
            kind = "image/jpeg" if path.endswith(".jpg") else "image/png"
            return self._send(200, body, kind, cut=len(body) // 3 if truncate else None)
        return self._send(404, b'{"error": "not found"}', "application/json")

    # --- API answers ---

    def _page(self, query: dict[str, list[str]], default: int) -> tuple[int, int]:
        offset = int(query.get("offset", ["0"])[0])
        limit = int(query.get("limit", [str(default)])[0])
        return offset, limit

    def _gbif_search(self, query: dict[str, list[str]]) -> dict[str, Any] | bytes:
        if self.portal.gbif_body is not None:
            return self.portal.gbif_body
        offset, limit = self._page(query, 20)
        results = self.portal.gbif[offset:offset + limit]
        count = len(self.portal.gbif)
        return {"offset": offset, "limit": limit, "endOfRecords": offset + limit >= count,
                "count": count, "results": results, "facets": []}

    def _idigbio_media(self, query: dict[str, list[str]]) -> dict[str, Any]:
        offset, limit = self._page(query, 100)
        media = self.portal.idigbio_media
        return {"itemCount": len(media), "lastModified": "2024-01-01T00:00:00.000Z",
                "items": media[offset:offset + limit], "attribution": []}

    def _idigbio_records(self, query: dict[str, list[str]]) -> dict[str, Any]:
        rq = json.loads(query.get("rq", ["{}"])[0])
        wanted = rq.get("uuid", [])
        wanted = [wanted] if isinstance(wanted, str) else wanted
        items = [r for r in self.portal.idigbio_records if r["uuid"] in wanted]
        return {"itemCount": len(items), "items": items, "attribution": []}

    # --- writing ---

    def _json(self, data: dict[str, Any] | bytes) -> None:
        body = data if isinstance(data, bytes) else json.dumps(data).encode()
        self._send(200, body, "application/json")

    def _send(self, status: int, body: bytes, kind: str, headers: dict[str, str] | None = None,
              cut: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body if cut is None else body[:cut])
        if cut is not None:
            self.close_connection = True


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(name="fake_portal")
def fake_portal_fixture() -> Iterator[FakePortal]:
    """A running :class:`FakePortal`, stopped after the test."""
    portal = FakePortal().start()
    try:
        yield portal
    finally:
        portal.stop()


@pytest.fixture(name="loopback_only")
def loopback_only_fixture(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail every name lookup except loopback, the way an unresolvable host fails."""
    real = socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in LOOPBACK:
            raise socket.gaierror(socket.EAI_NONAME, f"test blocks non-loopback host {name}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)


def closed_port() -> int:
    """A loopback port nobody listens on (connections are refused at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
