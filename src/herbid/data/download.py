"""Fetching images and API pages over HTTP, politely and without ever raising on a bad URL.

Herbarium portals hand out image URLs on hundreds of hosts of very uneven quality: some are
gone, some are slow, some rate-limit, some answer an HTML error page with status 200. A
dataset build must survive all of them, so :func:`download_images` turns every failure into
a :class:`~herbid.data.records.Problem` (stage ``fetch``) and returns only what it got.

The same retry policy (exponential back-off on network errors and 5xx, ``Retry-After`` on
429 and 503, at most one quick retry when a host cannot be reached at all) serves the portal
API calls through :func:`get_json`, so an offline run fails in seconds rather than minutes.

Image downloads are also polite per host (:mod:`herbid.data.politeness`): at most
``per_host`` requests in flight to one host, and a host that answers ``Retry-After`` is
paused as a whole while the other hosts go on. What failed for good is logged to
``failed.jsonl`` in the download folder (:mod:`herbid.data.failed_downloads`).
:func:`fetch_image` is the per-URL step, for engines other than the thread pool here.

Both follow redirects by hand (at most :data:`MAX_REDIRECTS`) so that every hop passes
:func:`~herbid.data.url_policy.check_url` before it is connected to: only http(s), and only
public addresses unless ``allow_private_hosts``. A refused URL is never retried.

What does not depend on the retry policy lives beside this module and is importable from
here: the redirect follower (:mod:`herbid.data.redirects`), the outcomes an attempt ends
in (:mod:`herbid.data.http_outcomes`), the local names of downloaded images
(:mod:`herbid.data.image_files`), the per-host scheduling and pauses
(:mod:`herbid.data.politeness`) and the failed-URL log (:mod:`herbid.data.failed_downloads`).

One cohesive module: the retrying fetcher, that is one :class:`RetryPolicy`, the loop
that applies it, and the two kinds of request it serves (JSON pages and streamed images
under a hard deadline). They stay together because ``backoff_sleep`` and
``MAX_JSON_BYTES`` are module-wide switches that callers and tests patch here, for both
kinds at once: that pins the policy and :func:`get_json` to this module, and the image
worker, moved out, would have to import the policy back from here (an import cycle).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx

from herbid import __version__
from herbid.data.dataset_folder import atomic_path
from herbid.data.failed_downloads import FailedLog
from herbid.data.http_outcomes import FetchError, _classify_transport_error, _GiveUp, _Retry, error_text
from herbid.data.image_files import completed_downloads, existing_download, guess_extension, image_filename_stem
from herbid.data.politeness import DEFAULT_PER_HOST, HostGate, host_key, map_per_host
from herbid.data.redirects import MAX_REDIRECTS as MAX_REDIRECTS
from herbid.data.redirects import _send_checked
from herbid.data.sources.base import ProblemLog
from herbid.data.url_policy import URLRefused, check_url_syntax
from herbid.errors import InvalidOption
from herbid.progress import progress_bar

__all__ = [
    "FetchError",
    "FetchOutcome",
    "RetryPolicy",
    "completed_downloads",
    "download_images",
    "existing_download",
    "fetch_image",
    "get_json",
    "image_filename_stem",
]

#: The back-off wait. Tests patch this (or pass ``sleep=``) so that retries cost no time.
backoff_sleep: Callable[[float], None] = time.sleep

USER_AGENT = f"herbid/{__version__} (herbarium dataset builder; python-httpx)"
#: Largest portal API answer read (a page of 100 iDigBio records is ~0.5 MB): a hostile or
#: broken server cannot make herbid hold an endless body in memory.
MAX_JSON_BYTES = 64 * 2**20

#: Content types that are certainly not a specimen photograph (error pages, SVG placeholders).
_NOT_IMAGES = ("text/", "application/json", "application/xml", "application/xhtml", "image/svg")

T = TypeVar("T")


@dataclass
class RetryPolicy:
    """How often, and after how long, to ask a server again.

    Network errors, timeouts and 5xx answers are retried ``retries`` times with exponential
    back-off (``base * 2**attempt``, capped at ``cap``). A host that cannot be reached at
    all is retried only ``connect_retries`` times after ``connect_delay`` seconds: offline,
    every URL fails that way, and waiting longer would only delay the report. A 429, and a
    503 that carries ``Retry-After``, waits for the server's ``Retry-After`` (capped at
    ``max_wait``; a 429 without one backs off) and counts as an attempt.
    """

    retries: int = 3
    connect_retries: int = 1
    base: float = 0.5
    cap: float = 30.0
    connect_delay: float = 0.25
    max_wait: float = 60.0
    sleep: Callable[[float], None] | None = None

    def backoff(self, attempt: int) -> float:
        return min(self.base * (2**attempt), self.cap)

    def retry_after(self, headers: httpx.Headers, attempt: int) -> float:
        """Seconds to wait after a 429 or 503: the server's ``Retry-After`` if it gave one, capped."""
        wait = parse_retry_after(headers.get("retry-after"))
        if wait is None:
            wait = self.backoff(attempt)
        return max(0.0, min(wait, self.max_wait))

    def wait(self, seconds: float) -> None:
        # ``backoff_sleep`` is looked up at call time so that patching the module works.
        (self.sleep if self.sleep is not None else backoff_sleep)(seconds)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds from now; HTTP allows a number or a date."""
    if not value:
        return None
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when.timestamp() - time.time()


def _check_status(response: httpx.Response, policy: RetryPolicy, attempt: int) -> None:
    """Raise the outcome a non-2xx answer means; return quietly on success."""
    status = response.status_code
    if 200 <= status < 300:
        return
    label = f"{status} {response.reason_phrase}".strip()
    if status == 429:
        raise _Retry(f"rate limited: {label}", wait=policy.retry_after(response.headers, attempt), status=status,
                     throttle=True)
    if status == 503 and "retry-after" in response.headers:  # "overloaded, come back then": a throttle too
        raise _Retry(f"server error: {label}", wait=policy.retry_after(response.headers, attempt), status=status,
                     throttle=True)
    if status >= 500:
        raise _Retry(f"server error: {label}", status=status)
    raise _GiveUp(f"http error: {label}", status=status)


class _Attempts:
    """Runs one request again until it succeeds, gives up, or the policy says stop."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.count = 0

    def run(self, attempt_once: Callable[[int], T]) -> T:
        """Call ``attempt_once(attempt)``; re-raise the last ``_Retry``/``_GiveUp`` on failure."""
        retries = connect_failures = 0
        while True:
            self.count += 1
            try:
                return attempt_once(self.count - 1)
            except _Retry as failure:
                if failure.connect:
                    connect_failures += 1
                    if connect_failures > self.policy.connect_retries:
                        raise
                    delay = self.policy.connect_delay
                else:
                    if retries >= self.policy.retries:
                        raise
                    delay = failure.wait if failure.wait is not None else self.policy.backoff(retries)
                    retries += 1
                self.policy.wait(delay)


# --- JSON pages (portal APIs) -----------------------------------------------------------------


def get_json(
    client: httpx.Client,
    url: str,
    params: httpx.QueryParams | Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
    *,
    retries: int = 3,
    sleep: Callable[[float], None] | None = None,
    timeout: float | None = None,
    max_wait: float = 60.0,
    allow_private_hosts: bool = False,
) -> dict[str, Any]:
    """GET ``url`` and return its JSON object, with the downloader's retry policy.

    Raises :class:`FetchError` when the server cannot be reached, keeps failing, answers a
    client error (the reason quotes the start of the body, which is where APIs explain a
    bad query) or answers something that is not a JSON object, and (``refused``) when
    ``url`` or a redirect is not http(s) or leads to a non-public address without
    ``allow_private_hosts``.
    """
    policy = RetryPolicy(retries=retries, sleep=sleep, max_wait=max_wait)
    request_timeout: Any = timeout if timeout is not None else client.timeout

    def attempt_once(attempt: int) -> dict[str, Any]:
        request = client.build_request("GET", url, params=params, timeout=request_timeout)
        try:
            with _send_checked(client, request, allow_private_hosts=allow_private_hosts) as response:
                body = _read_at_most(response, MAX_JSON_BYTES)
        except httpx.TransportError as exc:
            raise _classify_transport_error(exc, _timeout_seconds(request_timeout)) from exc
        if 400 <= response.status_code < 500 and response.status_code != 429:
            snippet = " ".join(body[:300].decode("utf-8", "replace").split())
            raise _GiveUp(f"http error: {response.status_code} {response.reason_phrase}: {snippet}",
                          response.status_code)
        _check_status(response, policy, attempt)
        return _json_object(body)

    try:
        return _Attempts(policy).run(attempt_once)
    except _Retry as failure:
        raise FetchError(url, failure.reason, status=failure.status, unreachable=failure.connect) from None
    except _GiveUp as failure:
        raise FetchError(url, failure.reason, status=failure.status) from None
    except URLRefused as refused:
        raise FetchError(url, str(refused), refused=True) from None


def _read_at_most(response: httpx.Response, limit: int) -> bytes:
    """The (decoded) body of ``response``; :class:`_GiveUp` past ``limit`` bytes, without reading on."""
    parts: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limit:
            raise _GiveUp(f"too large: API answer over {limit:,} bytes")
        parts.append(chunk)
    return b"".join(parts)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: [[[[… nesting
        raise _GiveUp(f"not JSON: {error_text(exc)}") from exc
    if not isinstance(data, dict):
        raise _GiveUp(f"not JSON: expected an object, got {type(data).__name__}")
    return data


def _timeout_seconds(timeout: Any) -> float:
    if isinstance(timeout, httpx.Timeout):
        return timeout.read or timeout.connect or 0.0
    return float(timeout or 0.0)


# --- images -----------------------------------------------------------------------------------


@dataclass
class _Job:
    """What every worker of one :func:`download_images` call (or one :func:`fetch_image`) shares."""

    client: httpx.Client
    dest_dir: Path
    policy: RetryPolicy
    timeout: float
    max_bytes: int
    allow_private_hosts: bool = False
    #: Per-host pauses asked for with ``Retry-After``; None honours them per request only.
    gate: HostGate | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Hosts that could not be reached at all, with why: their later URLs fail at once.
    dead_hosts: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FetchOutcome:
    """How fetching one URL ended: ``path`` once stored, else why not. Plain data, so it pickles."""

    url: str
    path: Path | None = None
    reason: str = ""
    detail: str = ""
    status: int | None = None
    attempts: int = 0
    unreachable: bool = False

    @property
    def ok(self) -> bool:
        return self.path is not None


def _refuse_content_type(content_type: str | None) -> None:
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind.startswith(_NOT_IMAGES):
        raise _GiveUp(f"not an image: content-type {kind}")


def _declared_length(response: httpx.Response) -> int | None:
    try:
        return int(response.headers["content-length"])
    except (KeyError, ValueError):
        return None


def _target_in(dest_dir: Path, name: str) -> Path:
    target = (dest_dir / name).resolve()
    if target.parent != dest_dir.resolve():  # cannot happen with hex names; guards later edits
        raise _GiveUp(f"refused: file name {name!r} would leave {dest_dir}")
    return target


def _stream_once(job: _Job, url: str, attempt: int) -> Path:
    """One GET of ``url`` into ``dest_dir``; the file gets its name only once complete.

    ``job.timeout`` is a deadline for the whole attempt, redirects included: each hop gets
    only what is left of it (at most ``job.timeout``) for connecting and for each read, and
    the body is cut off at the first network read that ends after it, so an attempt that
    keeps receiving bytes ends within about twice ``job.timeout``. Response *headers* are
    read by httpx without a hook, so there only the per-read limit applies.
    """
    deadline = time.monotonic() + job.timeout
    request = job.client.build_request("GET", url)
    try:
        with _send_checked(job.client, request, allow_private_hosts=job.allow_private_hosts,
                          hop_timeout=lambda: _time_left(job, deadline)) as response:
            _check_status(response, job.policy, attempt)
            _refuse_content_type(response.headers.get("content-type"))
            declared = _declared_length(response)
            if declared is not None and declared > job.max_bytes:
                raise _GiveUp(f"too large: Content-Length {declared} > {job.max_bytes} bytes")
            response.stream = _DeadlineStream(response.stream, deadline, job.timeout)
            return _write_body(job, url, response, declared)
    except URLRefused as refused:
        raise _GiveUp(refused.reason, detail=refused.detail) from None
    except httpx.TransportError as exc:
        raise _classify_transport_error(exc, job.timeout) from exc
    except httpx.HTTPError as exc:  # undecodable body
        raise _GiveUp(f"http error: {error_text(exc)}") from exc


def _deadline_passed(timeout: float) -> _GiveUp:
    # Not retried: a server that drips the body this slowly does so again (and a retry would
    # multiply the time a hostile server holds a worker).
    return _GiveUp(f"timed out: deadline passed, not complete within {timeout:g} s")


def _time_left(job: _Job, deadline: float) -> httpx.Timeout:
    """The next hop's timeouts: the per-request timeout, or what is left of the deadline."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise _deadline_passed(job.timeout)
    return httpx.Timeout(min(job.timeout, left))


class _DeadlineStream(httpx.SyncByteStream):
    """A response body that fails once ``deadline`` has passed, checked at every network read.

    Checked on the raw bytes as they arrive, whatever their size: decoded chunks can be
    empty for a long time (a compressed body of empty blocks), so checking those would not do.
    """

    def __init__(self, raw: httpx.SyncByteStream | httpx.AsyncByteStream, deadline: float, timeout: float) -> None:
        assert isinstance(raw, httpx.SyncByteStream)  # a sync client's stream
        self.raw = raw
        self.deadline = deadline
        self.timeout = timeout

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.raw:
            if time.monotonic() > self.deadline:
                raise _deadline_passed(self.timeout)
            yield chunk

    def close(self) -> None:
        self.raw.close()


def _write_body(job: _Job, url: str, response: httpx.Response, declared: int | None) -> Path:
    chunks = response.iter_bytes()
    head = _read_head(chunks, 16)  # enough to recognise the format before naming the file
    target = _target_in(job.dest_dir, image_filename_stem(url) + guess_extension(
        url, response.headers.get("content-type"), head))
    received = 0
    with atomic_path(target) as tmp, open(tmp, "wb") as out:
        for chunk in _chain_first(head, chunks):
            received += len(chunk)
            if received > job.max_bytes:
                raise _GiveUp(f"too large: more than {job.max_bytes} bytes")
            out.write(chunk)
        identity = response.headers.get("content-encoding", "identity").lower() == "identity"
        if declared is not None and identity and received != declared:
            raise _Retry(f"network error: incomplete body ({received} of {declared} bytes)")
        if received == 0:
            raise _GiveUp("empty response")
    return target


def _read_head(chunks: Iterator[bytes], size: int) -> bytes:
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= size:
            break
    return head


def _chain_first(first: bytes, rest: Iterable[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


def _fetch(job: _Job, url: str) -> FetchOutcome:
    """Fetch one URL with retries, every attempt waiting for its host's pause; never raises."""
    try:
        check_url_syntax(url)
    except URLRefused as refused:
        return FetchOutcome(url, reason=refused.reason, detail=refused.detail)
    host = host_key(url)
    with job.lock:
        dead = job.dead_hosts.get(host)
    if dead is not None:
        return FetchOutcome(url, reason=dead, detail="host unreachable earlier in this run; not tried",
                            unreachable=True)
    own_pause = 0.0  # the end of the pause this URL's last 429/503 set, which the retry loop sleeps through

    def attempt_once(attempt: int) -> Path:
        nonlocal own_pause
        if job.gate is not None:
            job.gate.wait_open(host, job.policy.wait, own_pause)
        try:
            return _stream_once(job, url, attempt)
        except _Retry as failure:
            if failure.throttle and job.gate is not None:
                own_pause = job.gate.pause(host, failure.wait or 0.0)
            raise

    attempts = _Attempts(job.policy)
    try:
        return FetchOutcome(url, attempts.run(attempt_once), attempts=attempts.count)
    except _Retry as failure:
        if failure.connect:
            with job.lock:
                job.dead_hosts.setdefault(host, failure.reason)
        return FetchOutcome(url, reason=failure.reason, detail=f"{attempts.count} attempts", status=failure.status,
                            attempts=attempts.count, unreachable=failure.connect)
    except _GiveUp as failure:
        return FetchOutcome(url, reason=failure.reason, detail=failure.detail, status=failure.status,
                            attempts=attempts.count)
    except OSError as exc:  # disk full, permissions: still this URL's problem, not the run's
        return FetchOutcome(url, reason=f"cannot write: {error_text(exc)}", attempts=attempts.count)
    except Exception as exc:  # noqa: BLE001 - the contract is to report, never to raise
        return FetchOutcome(url, reason=f"failed: {type(exc).__name__}: {error_text(exc)}", attempts=attempts.count)


def fetch_image(
    url: str,
    dest_dir: Path,
    *,
    client: httpx.Client,
    timeout: float = 30.0,
    max_bytes: int = 100 * 2**20,
    retries: int = 3,
    sleep: Callable[[float], None] | None = None,
    max_wait: float = 60.0,
    allow_private_hosts: bool = False,
    gate: HostGate | None = None,
) -> FetchOutcome:
    """Download one URL into ``dest_dir`` exactly as :func:`download_images` does; say how it ended.

    The per-URL step, for engines other than the thread pool of :func:`download_images`
    (a Ray task per batch of URLs, with its own client). File name, deadline, size cap, URL
    policy and retries are the same, so runs by different engines resume each other. It
    neither looks for an earlier download (filter the URLs with :func:`completed_downloads`
    first: one folder listing for all) nor reports: the caller logs a failed outcome, e.g.
    to a :class:`~herbid.data.failed_downloads.FailedLog`. Per-host caps are the caller's
    (group URLs by :func:`~herbid.data.politeness.host_key`, or hold ``gate.slot(host)``);
    ``gate``'s pauses are honoured. Never raises for a bad URL.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    job = _Job(client, dest_dir, RetryPolicy(retries=retries, sleep=sleep, max_wait=max_wait), timeout, max_bytes,
               allow_private_hosts, gate)
    return _fetch(job, url)


def _make_client(workers: int, timeout: float) -> httpx.Client:
    # No follow_redirects: _send_checked follows them, checking every hop.
    return httpx.Client(
        timeout=httpx.Timeout(timeout),
        limits=httpx.Limits(max_connections=workers, max_keepalive_connections=workers),
        headers={"User-Agent": USER_AGENT},
    )


def download_images(
    urls: Sequence[str],
    dest_dir: Path,
    problems: ProblemLog,
    *,
    workers: int = 8,
    per_host: int = DEFAULT_PER_HOST,
    timeout: float = 30.0,
    max_bytes: int = 100 * 2**20,
    retries: int = 3,
    progress: bool = True,
    client: httpx.Client | None = None,
    sleep: Callable[[float], None] | None = None,
    max_wait: float = 60.0,
    allow_private_hosts: bool = False,
    skip_failed: bool = False,
) -> dict[str, Path]:
    """Download ``urls`` into ``dest_dir``; return ``{url: local path}`` for those that worked.

    Each file is named ``sha1(url)`` plus an extension taken from its first bytes, content
    type or URL, and gets that name only once complete, so a rerun (by any engine that
    uses :func:`fetch_image`) fetches nothing already stored. ``timeout`` is the deadline
    of each attempt at each file (connecting, every read, redirects and the whole body);
    ``max_bytes`` bounds each file. At most ``workers`` requests run at once and at most
    ``per_host`` to any one ``host:port``; a host that answers 429, or 503 with
    ``Retry-After``, is paused as a whole while the other hosts go on. Only http(s) URLs
    are fetched, and (unless ``allow_private_hosts``) only from public addresses, checked
    again at every redirect. Nothing raises for a bad URL: each failure is added to
    ``problems`` (stage ``fetch``, action ``dropped``) and to ``dest_dir/failed.jsonl``. A
    rerun tries the logged URLs again, unless ``skip_failed``: then it reports them from
    the log without a request. A host that refuses connections twice is not tried again
    in the same call. ``sleep`` replaces the back-off wait.
    """
    if per_host < 1:
        raise InvalidOption(f"--per-host must be at least 1, not {per_host}")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    unique = list(dict.fromkeys(urls))
    workers = max(1, workers)
    completed = completed_downloads(dest_dir)
    fetched: dict[str, Path] = {}
    failed = FailedLog(dest_dir)
    todo: list[str] = []
    for url in unique:
        done = completed.get(image_filename_stem(url))
        if done is not None:
            fetched[url] = done
        elif skip_failed and url in failed.earlier:
            problems.add("fetch", url, failed.earlier[url].reason, "dropped",
                         detail="failed in an earlier run (failed.jsonl); not tried again")
        else:
            todo.append(url)
    own_client = client is None
    http = client if client is not None else _make_client(workers, timeout)
    job = _Job(http, dest_dir, RetryPolicy(retries=retries, sleep=sleep, max_wait=max_wait), timeout, max_bytes,
               allow_private_hosts, HostGate(per_host))
    try:
        show = progress and sys.stderr.isatty()
        with progress_bar("downloading", total=len(todo), enabled=show) as advance:
            # Outcomes arrive in this thread, so ProblemLog (not thread-safe) needs no lock.
            for url, outcome in map_per_host(partial(_fetch, job), todo, host_key, workers=workers,
                                             per_host=per_host):
                if outcome.path is not None:
                    fetched[url] = outcome.path
                else:
                    problems.add("fetch", url, outcome.reason, "dropped", detail=outcome.detail)
                    failed.add(url, outcome.reason, status=outcome.status, attempts=outcome.attempts,
                               detail=outcome.detail)
                advance()
    finally:
        if own_client:
            http.close()
        failed.close(stored=fetched)
    return {url: fetched[url] for url in unique if url in fetched}
