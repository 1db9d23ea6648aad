"""What every portal source shares: its location query, HTTP client and paging through a search API.

A subclass (:mod:`herbid.data.sources.gbif`, :mod:`herbid.data.sources.idigbio`) says how
to fetch one page and how to map one result to records; :class:`PortalSource` reads the
first page alone (its failure fails the location), then the rest several at once with the
retry policy of :func:`herbid.data.download.get_json`, reporting a later page's failure
and keeping what was read.
"""

from __future__ import annotations

import os
from abc import abstractmethod
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import unquote_plus, urlsplit

import httpx

from herbid.data.download import USER_AGENT, FetchError, get_json
from herbid.data.records import SourceRecord, clean_value
from herbid.data.sources.base import ProblemLog, Source, SourceError


def parse_portal_query(text: str, bare_key: str) -> tuple[list[tuple[str, str]], int | None]:
    """Split ``a=b&c=d&limit=N`` into filter pairs and the record limit.

    A text without ``=`` is a value for ``bare_key`` (``Viola sororia`` → scientific name).
    Repeated keys stay repeated: both APIs read them as "any of".
    """
    text = text.strip()
    if not text:
        raise SourceError("empty portal query; write e.g. gbif:scientificName=Viola&limit=100")
    pairs = [_query_pair(part, bare_key) for part in text.split("&") if part.strip()]
    limit: int | None = None
    filters: list[tuple[str, str]] = []
    for key, value in pairs:
        if key.lower() == "limit":
            try:
                limit = int(value)
            except ValueError:
                raise SourceError(f"limit must be a whole number, not {value!r}") from None
            if limit < 0:
                raise SourceError(f"limit must not be negative, not {limit}")
        else:
            filters.append((key.strip(), value.strip()))
    return filters, limit


def _query_pair(part: str, bare_key: str) -> tuple[str, str]:
    """``key=value`` (URL-encoded), or a bare value for ``bare_key``."""
    if "=" in part:
        key, value = part.split("=", 1)
        return unquote_plus(key), unquote_plus(value)
    return bare_key, unquote_plus(part)


@dataclass
class Page:
    """One page of API results: its items, the total the API reports, and whether it was the last."""

    offset: int
    items: list[Any]
    total: int | None
    end: bool


class PortalSource(Source):
    """Shared machinery: options, HTTP client, parallel paging, errors as :class:`SourceError`."""

    priority: ClassVar[int] = 10
    prefix: ClassVar[str] = ""
    default_url: ClassVar[str] = ""
    env_var: ClassVar[str] = ""
    bare_key: ClassVar[str] = ""
    default_page_size: ClassVar[int] = 100
    max_page_size: ClassVar[int] = 100
    #: Beyond this offset the API refuses to page (None: no known limit).
    max_offset: ClassVar[int | None] = None

    def __init__(
        self,
        location: str,
        *,
        base_url: str | None = None,
        limit: int | None = None,
        page_size: int | None = None,
        workers: int = 2,
        retries: int = 3,
        timeout: float = 30.0,
        sleep: Callable[[float], None] | None = None,
        client: httpx.Client | None = None,
        allow_private_hosts: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(location, **options)
        self.base_url = (base_url or os.environ.get(self.env_var) or self.default_url).rstrip("/")
        self.filters, query_limit = parse_portal_query(self._query_text(), self.bare_key)
        self.limit = query_limit if query_limit is not None else (int(limit) if limit is not None else None)
        self.page_size = max(1, min(page_size or self.default_page_size, self.max_page_size))
        self.workers = max(1, workers)
        self.retries = retries
        self.timeout = timeout
        self.sleep = sleep
        self.client = client
        self.allow_private_hosts = allow_private_hosts

    def _query_text(self) -> str:
        text = self.location.strip()
        # ``--kind gbif`` may name a bare query; strip the prefix only where there is one.
        return text[len(self.prefix):] if text.lower().startswith(self.prefix) else text

    @classmethod
    def detect(cls, location: str) -> bool:
        return str(location).strip().lower().startswith(cls.prefix)

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).netloc or self.base_url

    # --- what each portal supplies ---

    @abstractmethod
    def fetch_page(self, client: httpx.Client, offset: int, size: int) -> Page:
        """One page of results starting at ``offset`` (raises :class:`FetchError`)."""

    @abstractmethod
    def map_item(self, item: Any, problems: ProblemLog) -> list[SourceRecord]:
        """The records one result item gives; report items that give none."""

    # --- shared ---

    def records(self, problems: ProblemLog) -> Iterator[SourceRecord]:
        """Yield one record per image, reading pages until the limit or the last page."""
        seen: set[tuple[str, str]] = set()
        with self._client() as client:
            for page in self._pages(client, problems):
                for item in page.items:
                    for record in self.map_item(item, problems):
                        key = (record.origin, record.source_path)
                        if key not in seen:  # pages may overlap if the index changes meanwhile
                            seen.add(key)
                            yield record

    @contextmanager
    def _client(self) -> Iterator[httpx.Client]:
        if self.client is not None:
            yield self.client
            return
        # No follow_redirects: get_json follows them, checking every hop.
        client = httpx.Client(
            timeout=httpx.Timeout(self.timeout),
            limits=httpx.Limits(max_connections=self.workers),
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
        )
        try:
            yield client
        finally:
            client.close()

    def get(self, client: httpx.Client, path: str, params: Any) -> dict[str, Any]:
        """GET ``base_url + path`` as JSON with the shared retry policy."""
        return get_json(client, f"{self.base_url}{path}", params, retries=self.retries, sleep=self.sleep,
                        timeout=self.timeout, allow_private_hosts=self.allow_private_hosts)

    def _whole_failure(self, error: FetchError) -> SourceError:
        if error.refused:
            return SourceError(f"not querying {self.host}: {error.reason}")
        if error.unreachable:
            detail = error.reason.removeprefix("unreachable: ")
            return SourceError(f"cannot reach {self.host}: {detail}; are you offline?")
        return SourceError(f"{self.host} did not answer the query {self.location!r}: {error.reason}")

    def _stop_offset(self, total: int | None, problems: ProblemLog) -> int | None:
        """Where paging ends: the reported total, the user's limit, or the API's paging limit."""
        stop = total
        if self.limit is not None:
            stop = self.limit if stop is None else min(stop, self.limit)
        if self.max_offset is not None and (stop is None or stop > self.max_offset):
            problems.add("source", self.location, f"truncated: {self.host} pages at most {self.max_offset} results",
                         "reported", detail=f"the query matches {total}; only the first {self.max_offset} are read")
            stop = self.max_offset
        return stop

    def _pages(self, client: httpx.Client, problems: ProblemLog) -> Iterator[Page]:
        """The first page alone (its failure fails the location), then the rest in parallel."""
        if self.limit == 0:
            return
        first_size = self.page_size if self.limit is None else min(self.page_size, self.limit)
        try:
            first = self.fetch_page(client, 0, first_size)
        except FetchError as error:
            raise self._whole_failure(error) from None
        yield first
        if first.end or not first.items:
            return
        stop = self._stop_offset(first.total, problems)
        if stop is None:  # no total reported: read on one page at a time until the last
            yield from self._sequential_pages(client, first_size, problems)
            return
        offsets = range(first_size, stop, self.page_size)
        yield from self._parallel_pages(client, offsets, stop, problems)

    def _sequential_pages(self, client: httpx.Client, offset: int, problems: ProblemLog) -> Iterator[Page]:
        while True:
            page = self._later_page(client, offset, self.page_size, problems)
            if page is None:
                return
            yield page
            if page.end or not page.items:
                return
            offset += self.page_size

    def _parallel_pages(self, client: httpx.Client, offsets: range, stop: int,
                        problems: ProblemLog) -> Iterator[Page]:
        """Pages in order, with at most ``workers`` requests in flight."""
        todo = iter(offsets)
        pending: deque[Future[Page | None]] = deque()
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix=f"herbid-{self.name}") as pool:

            def submit_next() -> None:
                offset = next(todo, None)
                if offset is not None:
                    size = min(self.page_size, stop - offset)
                    pending.append(pool.submit(self._later_page, client, offset, size, problems))

            for _ in range(self.workers):
                submit_next()
            try:
                while pending:
                    page = pending.popleft().result()
                    if page is None:
                        return
                    yield page
                    if page.end or not page.items:
                        return
                    submit_next()
            finally:
                for future in pending:
                    future.cancel()

    def _later_page(self, client: httpx.Client, offset: int, size: int, problems: ProblemLog) -> Page | None:
        """A page after the first: its failure is reported and ends the paging, keeping what was read."""
        try:
            return self.fetch_page(client, offset, size)
        except FetchError as error:
            problems.add("source", error.url, f"page failed: {error.reason}", "dropped",
                         detail=f"{self.location}: results from offset {offset} on were not read")
            return None


def first_value(*values: Any) -> Any:
    """The first value that is not blank."""
    for value in values:
        value = clean_value(value)
        if value is not None:
            return value
    return None
