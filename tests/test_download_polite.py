"""Issue 14, item 4: the downloader is polite to other people's servers, and resumable.

A loopback server on three ports (three "hosts") throttles (429 and 503 with
``Retry-After``), stalls past the client's timeout, resets connections and answers 500
or 404. It records, per host, every request's arrival time and the most requests it had
in progress at once. Counting is exact, not sampled: a request counts from its arrival
until the server starts writing the answer (the client cannot send the next one before
it has read it), a stalled one until the client hangs up (seen at once on loopback).
"""

from __future__ import annotations

import csv
import io
import json
import random
import select
import socket
import struct
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from herbid.cli.main import main
from herbid.data.download import completed_downloads, download_images, fetch_image
from herbid.data.failed_downloads import read_failed
from herbid.data.politeness import HostGate, host_key
from herbid.data.sources.base import ProblemLog

pytestmark = [pytest.mark.usefixtures("loopback_only"), pytest.mark.timeout(60)]

HANDLE_S = 0.015  # every answer takes this long, so that concurrent requests overlap
STALL_S = 2.0  # a stalled answer is held this long (the client's timeout is far shorter)
TIMEOUT = 0.3
RETRY_429, RETRY_503 = 0.6, 0.45
GRACE = 0.1  # a request sent before the client read the 429 may still arrive this late
TOLERANCE = 0.02  # clock granularity


@dataclass
class _Request:
    host: str
    path: str
    at: float
    ended: bool = False


@dataclass
class Recorder:
    """What every host saw. All times are ``time.monotonic()`` of this process."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: list[_Request] = field(default_factory=list)
    in_flight: Counter[str] = field(default_factory=Counter)
    max_in_flight: Counter[str] = field(default_factory=Counter)
    #: (host, time the throttling answer was about to be written, its Retry-After)
    throttles: list[tuple[str, float, float]] = field(default_factory=list)
    bodies: Counter[str] = field(default_factory=Counter)  # 200 answers per URL
    stalled: dict[str, list[tuple[socket.socket, _Request]]] = field(default_factory=lambda: defaultdict(list))
    recovered: set[str] = field(default_factory=set)  # kinds that now answer normally

    def arrive(self, host: str, path: str) -> tuple[_Request, int]:
        with self.lock:
            self._reap(host)
            attempt = sum(1 for r in self.requests if r.path == path)
            request = _Request(host, path, time.monotonic())
            self.requests.append(request)
            self.in_flight[host] += 1
            self.max_in_flight[host] = max(self.max_in_flight[host], self.in_flight[host])
            return request, attempt

    def end(self, request: _Request) -> None:
        with self.lock:
            self._end(request)

    def _end(self, request: _Request) -> None:
        if not request.ended:
            request.ended = True
            self.in_flight[request.host] -= 1

    def _reap(self, host: str) -> None:
        """End the stalled requests of ``host`` whose client has hung up."""
        still = []
        for conn, request in self.stalled[host]:
            if not request.ended and _hung_up(conn, 0):
                self._end(request)
            if not request.ended:
                still.append((conn, request))
        self.stalled[host] = still

    def hits(self, path: str | None = None) -> int:
        with self.lock:
            return sum(1 for r in self.requests if path is None or r.path == path)


def _hung_up(conn: socket.socket, wait: float) -> bool:
    try:
        readable, _, _ = select.select([conn], [], [], wait)
        return bool(readable) and conn.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real image hosts

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # http.server's naming
        server: PoliteServer = self.server.polite  # type: ignore[attr-defined]
        host = self.server.name  # type: ignore[attr-defined]
        rec = server.recorder
        request, attempt = rec.arrive(host, self.path)
        time.sleep(HANDLE_S)
        kind = self.path.split("/")[1]
        if kind in rec.recovered:
            kind = "ok"
        first = attempt == 0
        if kind == "stall" or (kind == "stall_once" and first):
            return self._stall(rec, host, request)
        if kind == "reset" and first:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            rec.end(request)
            self.connection.close()  # RST: "connection reset by peer"
            self.close_connection = True
            return
        if (kind == "throttle429" and first) or (kind == "throttle503" and first):
            status, wait = (429, RETRY_429) if kind == "throttle429" else (503, RETRY_503)
            with rec.lock:
                rec.throttles.append((host, time.monotonic(), wait))
            return self._send(rec, request, status, b"slow down", "text/plain", {"Retry-After": str(wait)})
        if kind == "dead500" or (kind == "flaky500" and first):
            return self._send(rec, request, 500, b"oops", "text/plain")
        if kind == "gone":
            return self._send(rec, request, 404, b"gone", "text/plain")
        url = f"http://{host}{self.path}"
        with rec.lock:
            rec.bodies[url] += 1
        self._send(rec, request, 200, server.body(url), "image/jpeg")

    def _stall(self, rec: Recorder, host: str, request: _Request) -> None:
        with rec.lock:
            rec.stalled[host].append((self.connection, request))
        deadline = time.monotonic() + STALL_S
        while time.monotonic() < deadline and not _hung_up(self.connection, 0.01):
            pass
        rec.end(request)
        self.close_connection = True

    def _send(self, rec: Recorder, request: _Request, status: int, body: bytes, kind: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        rec.end(request)  # before the client can have the answer, so never after its next request
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # resets and hung-up clients are the point


class PoliteServer:
    """``hosts`` loopback ports sharing one :class:`Recorder`."""

    def __init__(self, hosts: int) -> None:
        self.recorder = Recorder()
        self.servers: list[_Server] = []
        self._bodies: dict[str, bytes] = {}
        for index in range(hosts):
            server = _Server(("127.0.0.1", 0), _Handler)
            server.polite = self  # type: ignore[attr-defined]
            server.name = f"127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
            self.servers.append(server)
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True,
                             name=f"polite-{index}").start()
        self.bases = [f"http://{server.name}" for server in self.servers]  # type: ignore[attr-defined]

    def body(self, url: str) -> bytes:
        """A small JPEG of noise seeded by ``url``: no two URLs' images are (near) duplicates."""
        if url not in self._bodies:
            noise = Image.frombytes("RGB", (32, 32), random.Random(url).randbytes(32 * 32 * 3))
            buffer = io.BytesIO()
            noise.save(buffer, format="JPEG", quality=90)
            self._bodies[url] = buffer.getvalue()
        return self._bodies[url]

    def stop(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def polite() -> Iterator[PoliteServer]:
    server = PoliteServer(3)
    try:
        yield server
    finally:
        server.stop()


def path_of(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def host_urls(base: str, kinds: dict[int, str], count: int) -> list[str]:
    return [f"{base}/{kinds.get(i, 'ok')}/{i}.jpg" for i in range(count)]


def test_polite_resumable_download_against_a_hostile_server(polite: PoliteServer, tmp_path: Path) -> None:
    throttling, busy, flaky = polite.bases
    urls = (host_urls(throttling, {1: "throttle429", 6: "throttle429"}, 14)
            + host_urls(busy, {0: "throttle503", 5: "throttle503", 9: "flaky500"}, 14)
            + host_urls(flaky, {0: "stall", 1: "dead500", 2: "reset", 3: "flaky500", 4: "stall_once",
                                7: "gone", 8: "reset"}, 14))
    bad = {u for u in urls if any(f"/{kind}/" in u for kind in ("stall", "dead500", "gone"))}
    rec = polite.recorder
    dest = tmp_path / "downloads"
    start = time.monotonic()
    problems = ProblemLog()
    got = download_images(urls, dest, problems, workers=8, per_host=2, timeout=TIMEOUT, retries=2,
                          progress=False, allow_private_hosts=True)
    first_run_s = time.monotonic() - start

    # every URL ends stored or reported, none twice
    failed = read_failed(dest / "failed.jsonl")
    assert set(got) == set(urls) - bad
    assert set(failed) == bad
    assert sorted(p.where for p in problems) == sorted(bad)
    lines = (dest / "failed.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(bad)
    by_kind = {path_of(u).split("/")[1]: entry for u, entry in failed.items()}
    assert by_kind["stall"].reason == f"timed out: no answer within {TIMEOUT:g} s"
    assert (by_kind["dead500"].reason, by_kind["dead500"].status, by_kind["dead500"].attempts) == (
        "server error: 500 Internal Server Error", 500, 3)
    assert (by_kind["gone"].status, by_kind["gone"].attempts) == (404, 1)
    assert all(entry.time for entry in failed.values())

    # stored bytes are the served bytes, each body served once
    for url, path in got.items():
        assert path.read_bytes() == polite.body(url)
    assert max(rec.bodies.values()) == 1 and sum(rec.bodies.values()) == len(got)

    # never more than per_host in flight to one host, and that many were used (not serialised)
    assert dict(rec.max_in_flight) == {host_key(base): 2 for base in polite.bases}

    # no request reached a throttled host before its Retry-After passed; other hosts went on meanwhile
    assert sorted(wait for _, _, wait in rec.throttles) == [RETRY_503, RETRY_503, RETRY_429, RETRY_429]
    during_pauses = 0
    for host, sent, wait in rec.throttles:
        early = [r.at - sent for r in rec.requests if r.host == host and sent + GRACE < r.at < sent + wait - TOLERANCE]
        assert early == [], f"{host} asked {early} s after a {wait} s Retry-After"
        during_pauses += sum(1 for r in rec.requests if r.host != host and sent < r.at < sent + wait)
    assert during_pauses > 0
    assert first_run_s < 8

    # a rerun that skips logged failures asks nothing
    before = rec.hits()
    skipped = ProblemLog()
    again = download_images(urls, dest, skipped, per_host=2, timeout=TIMEOUT, progress=False,
                            allow_private_hosts=True, skip_failed=True)
    assert rec.hits() == before
    assert again == got
    assert {p.where: p.reason for p in skipped} == {u: e.reason for u, e in failed.items()}

    # a default rerun tries the logged failures again, and only those; the log keeps what still fails
    rec.recovered.add("stall")
    third = download_images(urls, dest, ProblemLog(), per_host=2, timeout=TIMEOUT, retries=0, progress=False,
                            allow_private_hosts=True)
    assert sorted(r.path for r in rec.requests[before:]) == sorted(path_of(u) for u in bad)
    assert set(third) == set(urls) - (bad - {u for u in bad if "/stall/" in u})
    assert set(read_failed(dest / "failed.jsonl")) == {u for u in bad if "/stall/" not in u}
    assert max(rec.bodies.values()) == 1  # no body downloaded twice across the three runs
    assert {p.stem for p in completed_downloads(dest).values()} == {p.stem for p in third.values()}


def test_urls_fetched_by_another_engine_are_not_fetched_again(polite: PoliteServer, tmp_path: Path) -> None:
    """Half the URLs go through ``fetch_image`` (as a Ray task would), then the thread pool does the rest."""
    urls = host_urls(polite.bases[0], {}, 6) + host_urls(polite.bases[1], {1: "gone"}, 6)
    dest = tmp_path / "downloads"
    with httpx.Client() as client:
        outcomes = [fetch_image(u, dest, client=client, timeout=TIMEOUT, allow_private_hosts=True) for u in urls[::2]]
    assert [o.ok for o in outcomes] == [True] * 6
    assert outcomes[0].attempts == 1 and outcomes[0].path.read_bytes() == polite.body(urls[0])
    before = polite.recorder.hits()
    problems = ProblemLog()
    got = download_images(urls, dest, problems, timeout=TIMEOUT, progress=False, allow_private_hosts=True)
    assert sorted(r.path for r in polite.recorder.requests[before:]) == sorted(path_of(u) for u in urls[1::2])
    assert set(got) == set(urls) - {urls[7]}
    assert [p.where for p in problems] == [urls[7]]
    assert max(polite.recorder.bodies.values()) == 1


def test_gate_slots_cap_threads_that_bring_their_own_pool() -> None:
    gate = HostGate(per_host=3)
    seen: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    lock = threading.Lock()

    def hold(host: str) -> None:
        with gate.slot(host):
            with lock:
                seen[host] += 1
                peak[host] = max(peak[host], seen[host])
            time.sleep(0.01)
            with lock:
                seen[host] -= 1

    threads = [threading.Thread(target=hold, args=(f"h{i % 2}",)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert dict(peak) == {"h0": 3, "h1": 3}


def test_gate_pause_extends_and_waits_once() -> None:
    now = [100.0]
    gate = HostGate(clock=lambda: now[0])
    slept: list[float] = []
    own = gate.pause("h", 2.0)
    assert gate.pause("h", 1.0) == 101.0  # its own end; the host stays paused until 102
    assert gate.wait_open("h", slept.append, waited_until=own) == 0.0  # already slept through its own pause
    now[0] = 101.0
    assert gate.wait_open("h", slept.append, waited_until=101.0) == 1.0
    assert gate.wait_open("other", slept.append) == 0.0
    assert slept == [2.0 - 1.0]


def test_cli_per_host_option_caps_each_host(polite: PoliteServer, tmp_path: Path) -> None:
    table = tmp_path / "specimens.csv"
    urls = host_urls(polite.bases[0], {}, 4) + host_urls(polite.bases[1], {}, 4)
    with table.open("w", newline="", encoding="utf-8") as out:
        csv.writer(out).writerows([["occurrenceID", "scientificName", "associatedMedia"],
                                   *[[f"o{i}", f"Viola species{i % 2}", u] for i, u in enumerate(urls)]])
    out_dir = tmp_path / "built"
    assert main(["dataset", "build", str(table), "--out", str(out_dir), "--per-host", "1", "--allow-private-hosts",
                 "--workers", "1", "--no-progress", "--json"]) == 0
    report = json.loads((out_dir / "report.json").read_text(encoding="utf-8"))
    assert report["options"]["download_per_host"] == 1
    assert report["counts"]["images"] == 8
    assert dict(polite.recorder.max_in_flight) == {host_key(base): 1 for base in polite.bases[:2]}
    assert main(["dataset", "build", str(table), "--out", str(tmp_path / "b2"), "--per-host", "0",
                 "--allow-private-hosts", "--no-progress"]) == 1
