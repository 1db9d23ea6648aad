"""Hostile inputs, network rows: internal addresses (5), slow-drip servers (6), odd schemes (7).

A small server on 127.0.0.1 plays the hostile image host; it is reachable only with
``allow_private_hosts`` (the option an in-house image server needs), which is itself part
of row 5. Addresses that cannot be bound here (169.254.169.254, 10.x) come from a patched
``getaddrinfo`` and an ``httpx.MockTransport``: nothing leaves the machine.
"""

from __future__ import annotations

import csv
import ipaddress
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from fake_portal import make_image
from herbid.cli.main import main
from herbid.data import download
from herbid.data.download import MAX_REDIRECTS, FetchError, download_images, get_json
from herbid.data.sources.base import ProblemLog, SourceError
from herbid.data.sources.portals import GBIFSource
from herbid.data.sources.tabular import DwcCsvSource
from herbid.data.url_policy import non_public_reason

pytestmark = [pytest.mark.usefixtures("loopback_only"), pytest.mark.timeout(30)]

JPEG = make_image("hostile.jpg")
PUBLIC = "93.184.216.34"  # a global unicast address; never connected to (mock transport)


# --- the hostile server ---------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        host: HostileServer = self.server.host  # type: ignore[attr-defined]
        with host.lock:
            host.hits[self.path] += 1
        route = host.routes.get(self.path)
        if route is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        try:
            route(self)
        except OSError:  # the client gave up (deadline tests): expected
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class HostileServer:
    """Routes are ``path -> handler(request_handler)``; ``hits`` counts requests per path."""

    def __init__(self) -> None:
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.host = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.lock = threading.Lock()
        self.hits: Counter[str] = Counter()
        self.routes: dict[str, Callable[[BaseHTTPRequestHandler], None]] = {"/img.jpg": image}
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)


def image(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.send_header("Content-Length", str(len(JPEG)))
    handler.end_headers()
    handler.wfile.write(JPEG)


def redirect(location: str) -> Callable[[BaseHTTPRequestHandler], None]:
    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return route


def drip(body: bytes, piece: int, every: float, headers: dict[str, str]) -> Callable[[BaseHTTPRequestHandler], None]:
    """Answer at once, then send ``body`` ``piece`` bytes every ``every`` seconds."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.end_headers()
        for start in range(0, len(body), piece):
            handler.wfile.write(body[start:start + piece])
            handler.wfile.flush()
            time.sleep(every)

    return route


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    host = HostileServer()
    host.thread.start()
    try:
        yield host
    finally:
        host.server.shutdown()
        host.server.server_close()


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def fetch(urls: list[str], dest: Path, **kwargs: Any) -> tuple[dict[str, Path], ProblemLog, Sleeps]:
    problems, sleeps = ProblemLog(), Sleeps()
    got = download_images(urls, dest, problems, progress=False, sleep=sleeps, **kwargs)
    return got, problems, sleeps


def only(problems: ProblemLog) -> tuple[str, str, str]:
    [problem] = problems.items
    assert (problem.stage, problem.action) == ("fetch", "dropped")
    return problem.where, problem.reason, problem.detail


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names the test maps to addresses (any number each); every other name fails to resolve."""
    table: dict[str, list[str]] = {}

    def resolve(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in table:
            raise socket.gaierror(socket.EAI_NONAME, f"test resolves no {name}")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in table[name]]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    return table


def mock_client(routes: dict[str, httpx.Response]) -> tuple[httpx.Client, list[str]]:
    """A client that never connects: answers by URL, records every URL it was asked for."""
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        return routes.get(str(request.url), httpx.Response(404))

    return httpx.Client(transport=httpx.MockTransport(handler)), asked


def found(location: str) -> httpx.Response:
    return httpx.Response(302, headers={"Location": location})


def jpeg() -> httpx.Response:
    return httpx.Response(200, headers={"Content-Type": "image/jpeg"}, content=JPEG)


# --- row 5: loopback, private, link-local, multicast addresses -------------------------------------


def test_row05_loopback_refused_without_option(hostile: HostileServer, tmp_path: Path) -> None:
    url = hostile.url + "/img.jpg"
    got, problems, sleeps = fetch([url], tmp_path)
    assert got == {}
    assert only(problems) == (url, "refused address: 127.0.0.1 (loopback)",
                              "pass --allow-private-hosts for an in-house server")
    assert hostile.hits["/img.jpg"] == 0  # refused before connecting
    assert sleeps == []
    assert [p.name for p in tmp_path.iterdir()] == ["failed.jsonl"]  # the refusal is logged, nothing else


def test_row05_option_allows_the_loopback_server(hostile: HostileServer, tmp_path: Path) -> None:
    url = hostile.url + "/img.jpg"
    got, problems, _ = fetch([url], tmp_path, allow_private_hosts=True)
    assert list(problems) == []
    assert got[url].read_bytes() == JPEG
    assert hostile.hits["/img.jpg"] == 1


def test_row05_localhost_name_is_resolved_and_refused(hostile: HostileServer, tmp_path: Path) -> None:
    url = hostile.url.replace("127.0.0.1", "localhost") + "/img.jpg"
    got, problems, _ = fetch([url], tmp_path)
    where, reason, detail = only(problems)
    assert got == {}
    assert reason in ("refused address: 127.0.0.1 (loopback)", "refused address: ::1 (loopback)")
    assert detail == "localhost resolves to it; pass --allow-private-hosts for an in-house server"
    assert hostile.hits["/img.jpg"] == 0


@pytest.mark.parametrize(("url", "reason"), [
    ("http://169.254.169.254/latest/meta-data/", "refused address: 169.254.169.254 (link-local)"),
    ("http://10.0.0.5/a.jpg", "refused address: 10.0.0.5 (private)"),
    ("http://192.168.1.1/a.jpg", "refused address: 192.168.1.1 (private)"),
    ("http://224.0.0.251/a.jpg", "refused address: 224.0.0.251 (multicast)"),
    ("http://0.0.0.0:8080/a.jpg", "refused address: 0.0.0.0 (unspecified)"),
    ("http://[::1]/a.jpg", "refused address: ::1 (loopback)"),
    ("http://[::ffff:127.0.0.1]/a.jpg", "refused address: ::ffff:7f00:1 (loopback)"),
    ("http://[::ffff:169.254.169.254]/a.jpg", "refused address: ::ffff:a9fe:a9fe (link-local)"),
    ("http://[fe80::1]/a.jpg", "refused address: fe80::1 (link-local)"),
    ("http://[fd00::1]/a.jpg", "refused address: fd00::1 (private)"),
    ("http://[ff02::1]/a.jpg", "refused address: ff02::1 (multicast)"),
    ("http://2130706433/a.jpg", "refused address: 127.0.0.1 (loopback)"),  # 127.0.0.1 as one number
])
def test_row05_address_literals_refused_before_any_request(tmp_path: Path, url: str, reason: str,
                                                           dns: dict[str, list[str]]) -> None:
    dns["2130706433"] = ["127.0.0.1"]  # what the C resolver makes of it
    client, asked = mock_client({url: jpeg()})
    with client:
        got, problems, sleeps = fetch([url], tmp_path, client=client)
    assert got == {}
    assert only(problems)[1] == reason
    assert asked == []
    assert sleeps == []


def test_row05_link_local_metadata_address_refused(tmp_path: Path, dns: dict[str, list[str]]) -> None:
    """A name that resolves to the cloud metadata service is refused; the service is never asked."""
    dns["metadata.example.org"] = ["169.254.169.254"]
    url = "http://metadata.example.org/latest/meta-data/iam/security-credentials/"
    client, asked = mock_client({url: httpx.Response(200, headers={"Content-Type": "image/jpeg"},
                                                      content=b"\xff\xd8\xff secret")})
    with client:
        got, problems, _ = fetch([url], tmp_path, client=client)
    assert got == {}
    assert only(problems) == (url, "refused address: 169.254.169.254 (link-local)",
                              "metadata.example.org resolves to it; pass --allow-private-hosts for an in-house server")
    assert asked == []


def test_row05_every_resolved_address_is_checked(tmp_path: Path, dns: dict[str, list[str]]) -> None:
    dns["mixed.example.org"] = [PUBLIC, "10.1.2.3"]  # either could be connected to
    url = "http://mixed.example.org/a.jpg"
    client, asked = mock_client({url: jpeg()})
    with client:
        got, problems, _ = fetch([url], tmp_path, client=client)
    assert got == {}
    assert only(problems)[1] == "refused address: 10.1.2.3 (private)"
    assert asked == []


def test_row05_public_host_is_fetched(tmp_path: Path, dns: dict[str, list[str]]) -> None:
    dns["images.example.org"] = [PUBLIC, "2606:2800:220:1:248:1893:25c8:1946"]
    url = "https://images.example.org/a.jpg"
    client, asked = mock_client({url: jpeg()})
    with client:
        got, problems, _ = fetch([url], tmp_path, client=client)
    assert list(problems) == []
    assert got[url].read_bytes() == JPEG
    assert asked == [url]


@pytest.mark.parametrize(("target", "reason"), [
    ("http://10.0.0.7/internal.jpg", "refused address: 10.0.0.7 (private)"),
    ("http://metadata.example.org/latest/", "refused address: 169.254.169.254 (link-local)"),
    ("http://[::ffff:10.0.0.7]/x.jpg", "refused address: ::ffff:a00:7 (private)"),
])
def test_row05_redirect_to_private_refused_at_hop(tmp_path: Path, dns: dict[str, list[str]], target: str,
                                                   reason: str) -> None:
    dns["images.example.org"] = [PUBLIC]
    dns["metadata.example.org"] = ["169.254.169.254"]
    url = "http://images.example.org/a.jpg"
    client, asked = mock_client({url: found("/hop"), "http://images.example.org/hop": found(target),
                                 target: jpeg()})
    with client:
        got, problems, sleeps = fetch([url], tmp_path, client=client)
    where, got_reason, detail = only(problems)
    assert got == {}
    assert (where, got_reason) == (url, reason)
    assert detail.startswith(f"redirect 2 to {target}; ")
    assert asked == [url, "http://images.example.org/hop"]  # the internal target never asked
    assert sleeps == []  # refusals are not retried


def test_row05_redirect_to_loopback_server_allowed_with_option(hostile: HostileServer, tmp_path: Path) -> None:
    hostile.routes["/old.jpg"] = redirect("/img.jpg")
    got, problems, _ = fetch([hostile.url + "/old.jpg"], tmp_path, allow_private_hosts=True)
    assert list(problems) == []
    assert got[hostile.url + "/old.jpg"].read_bytes() == JPEG


def test_row05_redirects_are_bounded(hostile: HostileServer, tmp_path: Path) -> None:
    hostile.routes["/loop"] = redirect("/loop")
    got, problems, sleeps = fetch([hostile.url + "/loop"], tmp_path, allow_private_hosts=True)
    assert got == {}
    assert only(problems)[1] == f"too many redirects: more than {MAX_REDIRECTS}"
    assert hostile.hits["/loop"] == MAX_REDIRECTS + 1
    assert sleeps == []


def test_row05_portal_api_on_loopback_refused_without_option(hostile: HostileServer) -> None:
    source = GBIFSource("gbif:Viola", base_url=hostile.url + "/v1", sleep=Sleeps())
    with pytest.raises(SourceError) as caught:
        list(source.records(ProblemLog()))
    host = hostile.url.removeprefix("http://")
    assert str(caught.value) == (f"not querying {host}: refused address: 127.0.0.1 (loopback); "
                                 "pass --allow-private-hosts for an in-house server")
    assert sum(hostile.hits.values()) == 0


def test_row05_portal_api_redirect_to_private_refused(dns: dict[str, list[str]]) -> None:
    dns["api.example.org"] = [PUBLIC]
    url = "https://api.example.org/v1/occurrence/search"
    client, asked = mock_client({url: found("http://10.9.9.9/v1/occurrence/search")})
    with client, pytest.raises(FetchError) as caught:
        get_json(client, url, None, sleep=Sleeps())
    assert caught.value.refused
    assert not caught.value.unreachable
    assert caught.value.reason == ("refused address: 10.9.9.9 (private); redirect 1 to "
                                   "http://10.9.9.9/v1/occurrence/search; "
                                   "pass --allow-private-hosts for an in-house server")
    assert asked == [url]


def test_row05_build_and_cli_option(hostile: HostileServer, tmp_path: Path) -> None:
    table = tmp_path / "specimens.csv"
    with table.open("w", newline="", encoding="utf-8") as out:
        csv.writer(out).writerows([["occurrenceID", "scientificName", "associatedMedia"],
                                   ["o1", "Viola sororia", hostile.url + "/img.jpg"]])
    refused_out, allowed_out = tmp_path / "refused", tmp_path / "allowed"
    common = ["--workers", "1", "--no-progress", "--json"]
    assert main(["dataset", "build", str(table), "--out", str(refused_out), *common]) == 1
    report = json.loads((refused_out / "report.json").read_text(encoding="utf-8"))
    assert report["options"]["allow_private_hosts"] is False
    assert report["problems_by_reason"] == {"refused address": 1}
    assert hostile.hits["/img.jpg"] == 0

    assert main(["dataset", "build", str(table), "--out", str(allowed_out), "--allow-private-hosts", *common]) == 0
    report = json.loads((allowed_out / "report.json").read_text(encoding="utf-8"))
    assert report["options"]["allow_private_hosts"] is True
    assert report["counts"]["images"] == 1
    assert hostile.hits["/img.jpg"] == 1


@pytest.mark.parametrize(("address", "why"), [
    ("127.8.9.10", "loopback"), ("10.255.0.1", "private"), ("172.16.5.4", "private"),
    ("192.168.0.10", "private"), ("169.254.169.254", "link-local"), ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"), ("0.0.0.0", "unspecified"), ("100.64.0.1", "not globally routable"),
    ("::1", "loopback"), ("::", "unspecified"), ("fe80::1", "link-local"), ("fc00::1", "private"),
    ("fec0::1", "site-local"), ("ff05::2", "multicast"), ("::ffff:192.168.0.1", "private"),
    ("::ffff:127.0.0.1", "loopback"), ("::127.0.0.1", "reserved"),
    ("8.8.8.8", None), ("93.184.216.34", None), ("2606:4700:4700::1111", None),
])
def test_row05_address_classes(address: str, why: str | None) -> None:
    assert non_public_reason(ipaddress.ip_address(address)) == why


# --- row 6: a server that sends one byte at a time -------------------------------------------------


def test_row06_slow_drip_server_hits_hard_deadline(hostile: HostileServer, tmp_path: Path) -> None:
    body = b"\xff\xd8\xff" + b"\0" * 200  # 200 s at this pace; the deadline is 1 s
    hostile.routes["/drip.jpg"] = drip(body, 1, 0.2, {"Content-Type": "image/jpeg",
                                                      "Content-Length": str(len(body))})
    url = hostile.url + "/drip.jpg"
    start = time.monotonic()
    got, problems, sleeps = fetch([url], tmp_path, timeout=1.0, allow_private_hosts=True)
    elapsed = time.monotonic() - start
    assert got == {}
    assert only(problems)[1] == "timed out: deadline passed, not complete within 1 s"
    assert elapsed < 3.0
    assert hostile.hits["/drip.jpg"] == 1  # a dripping server is not asked again
    assert sleeps == []
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["failed.jsonl"]


def test_row06_deadline_holds_for_a_compressed_body_that_decodes_to_nothing(
        hostile: HostileServer, tmp_path: Path) -> None:
    """Empty deflate blocks decode to no bytes at all: the deadline is checked on raw reads."""
    gzip_header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    empty_block = b"\x00\x00\x00\xff\xff"  # stored, not final, length 0
    hostile.routes["/empty.jpg"] = drip(gzip_header + empty_block * 200, 5, 0.05,
                                        {"Content-Type": "image/jpeg", "Content-Encoding": "gzip"})
    start = time.monotonic()
    got, problems, _ = fetch([hostile.url + "/empty.jpg"], tmp_path, timeout=1.0, allow_private_hosts=True)
    assert got == {}
    assert only(problems)[1] == "timed out: deadline passed, not complete within 1 s"
    assert time.monotonic() - start < 3.0


def test_row06_redirect_hops_share_one_deadline(hostile: HostileServer, tmp_path: Path) -> None:
    """Ten slow hops of 0.3 s each do not get a fresh timeout each: 1 s for all of them."""

    def slow_hop(number: int) -> Callable[[BaseHTTPRequestHandler], None]:
        def route(handler: BaseHTTPRequestHandler) -> None:
            time.sleep(0.3)
            redirect(f"/hop{number + 1}")(handler)

        return route

    for number in range(10):
        hostile.routes[f"/hop{number}"] = slow_hop(number)
    start = time.monotonic()
    got, problems, _ = fetch([hostile.url + "/hop0"], tmp_path, timeout=1.0, retries=0, allow_private_hosts=True)
    assert got == {}
    assert only(problems)[1].startswith("timed out: ")
    assert time.monotonic() - start < 2.0
    assert sum(hostile.hits.values()) <= 5


def test_row06_fast_body_is_unaffected(hostile: HostileServer, tmp_path: Path) -> None:
    body = JPEG + b"\0" * 300_000  # several network reads, well within the deadline
    hostile.routes["/big.jpg"] = drip(body, 64 * 1024, 0.0, {"Content-Type": "image/jpeg",
                                                             "Content-Length": str(len(body))})
    got, problems, _ = fetch([hostile.url + "/big.jpg"], tmp_path, timeout=5.0, allow_private_hosts=True)
    assert list(problems) == []
    assert got[hostile.url + "/big.jpg"].read_bytes() == body


# --- row 7: file://, gopher://, ftp:// ---------------------------------------------------------------


@pytest.mark.parametrize(("location", "scheme"), [
    ("file:///etc/passwd", "file"),
    ("gopher://127.0.0.1:70/_stats", "gopher"),
    ("ftp://ftp.example.org/a.jpg", "ftp"),
])
def test_row07_redirect_to_file_scheme_unsupported_no_retry(hostile: HostileServer, tmp_path: Path,
                                                            location: str, scheme: str) -> None:
    hostile.routes["/away.jpg"] = redirect(location)
    url = hostile.url + "/away.jpg"
    got, problems, sleeps = fetch([url], tmp_path, allow_private_hosts=True, retries=3)
    where, reason, detail = only(problems)
    assert got == {}
    assert (where, reason) == (url, f"unsupported URL scheme: {scheme!r}")
    assert detail.startswith(f"redirect 1 to {scheme}://")
    assert hostile.hits["/away.jpg"] == 1  # exactly one request: not retried
    assert sleeps == []


@pytest.mark.parametrize("url", ["ftp://ftp.example.org/herbarium/a.jpg", "gopher://example.org/1",
                                 "FTP://ftp.example.org/B.JPG"])
def test_row07_ftp_media_unsupported(tmp_path: Path, url: str) -> None:
    got, problems, sleeps = fetch([url], tmp_path)
    assert got == {}
    scheme = url.split(":", 1)[0].lower()
    assert only(problems) == (url, f"unsupported URL scheme: {scheme!r}", "")
    assert problems.by_reason() == {"unsupported URL scheme": 1}
    assert sleeps == []


@pytest.mark.parametrize("column", ["associatedMedia", "identifier"])
def test_row07_ftp_media_in_a_table_is_unsupported_not_no_image(tmp_path: Path, column: str) -> None:
    table = tmp_path / "specimens.csv"
    with table.open("w", newline="", encoding="utf-8") as out:
        csv.writer(out).writerows([
            ["occurrenceID", "scientificName", column],
            ["o1", "Viola sororia", "ftp://ftp.example.org/herbarium/1.jpg"],
            ["o2", "Viola sororia", "https://img.example.org/2.jpg"],
            ["o3", "Viola sororia", "urn:catalog:NY:3"],  # an identifier, not a location
        ])
    problems = ProblemLog()
    records = list(DwcCsvSource(str(table)).records(problems))
    assert [r.source_path for r in records] == ["https://img.example.org/2.jpg"]
    assert [(p.where, p.reason, p.detail) for p in problems] == [
        (f"{table}:2", "unsupported URL scheme: 'ftp'", "ftp://ftp.example.org/herbarium/1.jpg"),
        (f"{table}:4", "no image", ""),
    ]


def test_row07_portal_redirect_to_gopher_unsupported_no_retry(dns: dict[str, list[str]]) -> None:
    dns["api.example.org"] = [PUBLIC]
    url = "https://api.example.org/v2/search/media"
    client, asked = mock_client({url: found("gopher://api.example.org:70/1")})
    sleeps = Sleeps()
    with client, pytest.raises(FetchError) as caught:
        get_json(client, url, None, retries=3, sleep=sleeps)
    assert caught.value.refused
    assert caught.value.reason == "unsupported URL scheme: 'gopher'; redirect 1 to gopher://api.example.org:70/1"
    assert asked == [url]
    assert sleeps == []


# --- portal answers: bounded in bytes and in nesting ------------------------------------------------


def test_portal_answer_over_the_byte_cap_is_refused_without_reading_on(dns: dict[str, list[str]],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    dns["api.example.org"] = [PUBLIC]
    url = "https://api.example.org/v1/occurrence/search"
    monkeypatch.setattr(download, "MAX_JSON_BYTES", 1000)
    pieces: list[int] = []

    def endless() -> Iterator[bytes]:  # a body that never ends: only the cap stops the read
        yield b'{"results": ['
        while True:
            pieces.append(1)
            yield b'{"a": 1},' * 50

    client, _ = mock_client({url: httpx.Response(200, content=endless())})
    with client, pytest.raises(FetchError) as caught:
        get_json(client, url, None, sleep=Sleeps())
    assert caught.value.reason == "too large: API answer over 1,000 bytes"
    assert len(pieces) <= 3


def test_portal_answer_nested_beyond_recursion_is_not_json(dns: dict[str, list[str]]) -> None:
    dns["api.example.org"] = [PUBLIC]
    url = "https://api.example.org/v1/occurrence/search"
    client, _ = mock_client({url: httpx.Response(200, content=b'{"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}")})
    with client, pytest.raises(FetchError) as caught:
        get_json(client, url, None, sleep=Sleeps())
    assert caught.value.reason.startswith("not JSON")
