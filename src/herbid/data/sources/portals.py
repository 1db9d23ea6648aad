"""Live portal sources: an iDigBio or GBIF search turned into one record per specimen image.

Location syntax (URL-query style; a bare text is a scientific name)::

    idigbio:scientificname=Viola&institutioncode=ny&limit=200
    idigbio:Viola sororia
    gbif:scientificName=Pectocarya&institutionCode=NY&limit=300
    gbif:Pectocarya

``limit`` caps how many API results are read (iDigBio media records, GBIF occurrences);
every other parameter goes to the API as a search filter. Only preserved specimens with
still images are asked for. Constructing a source does no network I/O; :meth:`records`
pages through the API (several pages at once, ``workers`` at most) with the retry policy
of :func:`herbid.data.download.get_json`. Base URLs can be pointed elsewhere (a test
server, a mirror) with ``base_url=`` or ``HERBID_IDIGBIO_URL`` / ``HERBID_GBIF_URL``; one
on a loopback or private address (and any redirect there) is refused unless
``allow_private_hosts``, as image downloads are.
"""

from __future__ import annotations

import json
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
from herbid.data.sources.base import ProblemLog, Source, SourceError, register_source

__all__ = ["GBIFSource", "IDigBioSource", "gbif_records", "idigbio_record", "parse_portal_query"]

#: GBIF deep paging stops here (offset + limit); larger sets need a GBIF download instead.
GBIF_MAX_OFFSET = 100_000
#: Record uuids looked up per iDigBio request (they travel in the URL, which must stay short).
IDIGBIO_UUIDS_PER_LOOKUP = 100


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
class _Page:
    """One page of API results: its items, the total the API reports, and whether it was the last."""

    offset: int
    items: list[Any]
    total: int | None
    end: bool


class _PortalSource(Source):
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
    def fetch_page(self, client: httpx.Client, offset: int, size: int) -> _Page:
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

    def _pages(self, client: httpx.Client, problems: ProblemLog) -> Iterator[_Page]:
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

    def _sequential_pages(self, client: httpx.Client, offset: int, problems: ProblemLog) -> Iterator[_Page]:
        while True:
            page = self._later_page(client, offset, self.page_size, problems)
            if page is None:
                return
            yield page
            if page.end or not page.items:
                return
            offset += self.page_size

    def _parallel_pages(self, client: httpx.Client, offsets: range, stop: int,
                        problems: ProblemLog) -> Iterator[_Page]:
        """Pages in order, with at most ``workers`` requests in flight."""
        todo = iter(offsets)
        pending: deque[Future[_Page | None]] = deque()
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

    def _later_page(self, client: httpx.Client, offset: int, size: int, problems: ProblemLog) -> _Page | None:
        """A page after the first: its failure is reported and ends the paging, keeping what was read."""
        try:
            return self.fetch_page(client, offset, size)
        except FetchError as error:
            problems.add("source", error.url, f"page failed: {error.reason}", "dropped",
                         detail=f"{self.location}: results from offset {offset} on were not read")
            return None


def _first(*values: Any) -> Any:
    """The first value that is not blank."""
    for value in values:
        value = clean_value(value)
        if value is not None:
            return value
    return None


def _no_name(name: Any) -> bool:
    # GBIF files names it cannot match to its backbone under "incertae sedis".
    return name is None or str(name).strip().lower() == "incertae sedis"


# --- GBIF ---------------------------------------------------------------------------------------
# API documentation: https://www.gbif.org/developer/occurrence (occurrence search:
# GET /v1/occurrence/search, limit at most 300, offset paging, answer
# {offset, limit, endOfRecords, count, results[]}; each result's media[] has type/identifier).


def gbif_records(occurrence: dict[str, Any], problems: ProblemLog, source: str = "gbif") -> list[SourceRecord]:
    """One record per still image of a GBIF occurrence (search result or ``/occurrence/{key}``)."""
    key = _first(occurrence.get("key"), occurrence.get("gbifID"))
    origin = str(key) if key is not None else ""
    urls = list(dict.fromkeys(
        str(medium["identifier"]).strip()
        for medium in occurrence.get("media") or []
        if isinstance(medium, dict) and medium.get("type") == "StillImage" and _first(medium.get("identifier"))
    ))
    verbatim = _first(occurrence.get("verbatimScientificName"))
    name = _first(occurrence.get("scientificName"))
    if _no_name(name):
        name = None
    if not urls:
        problems.add("source", origin, "no image URL", detail="GBIF occurrence without a StillImage")
        return []
    if name is None and verbatim is None:
        problems.add("source", origin, "no scientific name", detail="GBIF occurrence without a usable name")
        return []
    fields = {
        "occurrenceID": _first(occurrence.get("occurrenceID")),
        "catalogNumber": _first(occurrence.get("catalogNumber")),
        "institutionCode": _first(occurrence.get("institutionCode")),
        "scientificName": name,
        "verbatimScientificName": verbatim,
        "genus": _first(occurrence.get("genus")),
        "family": _first(occurrence.get("family")),
        "recordedBy": _first(occurrence.get("recordedBy")),
        "recordNumber": _first(occurrence.get("recordNumber")),
        "eventDate": _first(occurrence.get("eventDate")),
        "country": _first(occurrence.get("country"), occurrence.get("countryCode")),
    }
    licence = _first(occurrence.get("license"))
    return [
        SourceRecord(source_path=url, source=source, origin=origin,
                     extra={"gbif_key": origin, "license": licence}, **fields)
        for url in urls
    ]


@register_source
class GBIFSource(_PortalSource):
    """Preserved specimens with still images from the GBIF occurrence search API."""

    name = "gbif"
    prefix = "gbif:"
    default_url = "https://api.gbif.org/v1"
    env_var = "HERBID_GBIF_URL"
    bare_key = "scientificName"
    default_page_size = 300
    max_page_size = 300
    max_offset = GBIF_MAX_OFFSET
    #: Always sent, whatever the query says: herbid builds sets of herbarium sheet images.
    fixed_params: ClassVar[tuple[tuple[str, str], ...]] = (
        ("mediaType", "StillImage"),
        ("basisOfRecord", "PRESERVED_SPECIMEN"),
    )

    def search_params(self, offset: int, size: int) -> list[tuple[str, str]]:
        fixed = {key.lower() for key, _ in self.fixed_params} | {"offset", "limit"}
        params = [(k, v) for k, v in self.filters if k.lower() not in fixed]
        return params + list(self.fixed_params) + [("offset", str(offset)), ("limit", str(size))]

    def fetch_page(self, client: httpx.Client, offset: int, size: int) -> _Page:
        answer = self.get(client, "/occurrence/search", self.search_params(offset, size))
        results = answer.get("results") or []
        total = answer.get("count")
        return _Page(offset, results, total if isinstance(total, int) else None, bool(answer.get("endOfRecords")))

    def map_item(self, item: Any, problems: ProblemLog) -> list[SourceRecord]:
        return gbif_records(item, problems, self.name)


# --- iDigBio ------------------------------------------------------------------------------------
# API documentation: https://github.com/iDigBio/idigbio-search-api/wiki (search API v2:
# GET /v2/search/media?rq=<record query JSON>&mq=<media query JSON>&limit&offset and
# /v2/search/records; answers {itemCount, items[]} with items[].uuid, items[].data (raw
# terms: dwc:*, ac:accessURI) and items[].indexTerms (lower-cased, e.g. records, accessuri)).


def idigbio_record(media: dict[str, Any], record: dict[str, Any] | None, problems: ProblemLog,
                   source: str = "idigbio") -> SourceRecord | None:
    """The record for one iDigBio media item and the specimen record it belongs to.

    Raw Darwin Core (``data``) wins over iDigBio's lower-cased index terms, which are only
    a fallback. The provider's name also goes to ``verbatimScientificName``.
    """
    media_data = media.get("data") or {}
    media_terms = media.get("indexTerms") or {}
    data = (record or {}).get("data") or {}
    terms = (record or {}).get("indexTerms") or {}
    origin = str(_first((record or {}).get("uuid"), terms.get("uuid"), media.get("uuid")) or "")
    url = _first(media_data.get("ac:accessURI"), media_terms.get("accessuri"))
    if url is None:
        problems.add("source", origin, "no image URL", detail=f"iDigBio media record {media.get('uuid')}")
        return None
    verbatim = _first(data.get("dwc:verbatimScientificName"), data.get("dwc:scientificName"))
    name = _first(data.get("dwc:scientificName"), _capitalised(terms.get("scientificname")))
    if name is None and verbatim is None:
        problems.add("source", origin, "no scientific name", detail=f"iDigBio media record {media.get('uuid')}")
        return None
    return SourceRecord(
        source_path=str(url),
        source=source,
        origin=origin,
        occurrenceID=_first(data.get("dwc:occurrenceID"), terms.get("occurrenceid")),
        catalogNumber=_first(data.get("dwc:catalogNumber"), terms.get("catalognumber")),
        institutionCode=_first(data.get("dwc:institutionCode"), _upper(terms.get("institutioncode"))),
        scientificName=name,
        verbatimScientificName=verbatim,
        genus=_first(data.get("dwc:genus"), _capitalised(terms.get("genus"))),
        family=_first(data.get("dwc:family"), _capitalised(terms.get("family"))),
        recordedBy=_first(data.get("dwc:recordedBy"), terms.get("collector")),
        recordNumber=_first(data.get("dwc:recordNumber"), terms.get("recordnumber")),
        eventDate=_first(data.get("dwc:eventDate"), _date_part(terms.get("datecollected"))),
        country=_first(data.get("dwc:country"), terms.get("country")),
        extra={"idigbio_media": media.get("uuid"),
               "license": _first(media_data.get("dcterms:rights"), media_terms.get("rights"))},
    )


def _capitalised(value: Any) -> str | None:
    value = _first(value)
    return str(value)[:1].upper() + str(value)[1:] if value is not None else None


def _upper(value: Any) -> str | None:
    value = _first(value)
    return str(value).upper() if value is not None else None


def _date_part(value: Any) -> str | None:
    value = _first(value)
    return str(value)[:10] if value is not None else None


#: iDigBio index terms that are not all lower case (the rest are: Darwin Core names lower-cased).
_IDIGBIO_CAMEL_TERMS = {term.lower(): term for term in ("hasImage", "hasMedia")}


def _idigbio_term(key: str) -> str:
    """The index term a user's key means: ``scientificName`` → ``scientificname``.

    Raw-data fields (``data.dwc:scientificName``) are case-sensitive and stay as written.
    """
    key = key.strip()
    if "." in key or ":" in key:
        return key
    return _IDIGBIO_CAMEL_TERMS.get(key.lower(), key.lower())


def _record_ids(media: dict[str, Any]) -> list[str]:
    ids = (media.get("indexTerms") or {}).get("records") or []
    return [str(i) for i in ([ids] if isinstance(ids, str) else ids)]


@register_source
class IDigBioSource(_PortalSource):
    """Specimen images from the iDigBio search API (media search joined to their records)."""

    name = "idigbio"
    prefix = "idigbio:"
    default_url = "https://search.idigbio.org/v2"
    env_var = "HERBID_IDIGBIO_URL"
    bare_key = "scientificname"
    max_page_size = 1000

    def record_query(self) -> dict[str, Any]:
        """The rq object; repeated keys mean any of, and ``hasImage`` is always true."""
        query: dict[str, Any] = {}
        for key, value in self.filters:
            key = _idigbio_term(key)
            parsed: Any = {"true": True, "false": False}.get(value.lower(), value)
            if key in query:
                previous = query[key]
                query[key] = (previous if isinstance(previous, list) else [previous]) + [parsed]
            else:
                query[key] = parsed
        query["hasImage"] = True
        return query

    def fetch_page(self, client: httpx.Client, offset: int, size: int) -> _Page:
        params = {
            "rq": json.dumps(self.record_query()),
            "mq": json.dumps({"mediatype": "images"}),
            "offset": offset,
            "limit": size,
        }
        answer = self.get(client, "/search/media", params)
        media = [m for m in answer.get("items") or [] if isinstance(m, dict)]
        specimens = self._specimens(client, media)
        items = [(m, next((specimens[i] for i in _record_ids(m) if i in specimens), None)) for m in media]
        total = answer.get("itemCount")
        total = total if isinstance(total, int) else None
        end = len(media) < size or (total is not None and offset + len(media) >= total)
        return _Page(offset, items, total, end)

    def _specimens(self, client: httpx.Client, media: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The specimen records the media items belong to, by uuid."""
        wanted = list(dict.fromkeys(i for m in media for i in _record_ids(m)))
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(wanted), IDIGBIO_UUIDS_PER_LOOKUP):
            chunk = wanted[start:start + IDIGBIO_UUIDS_PER_LOOKUP]
            answer = self.get(client, "/search/records", {"rq": json.dumps({"uuid": chunk}), "limit": len(chunk)})
            for item in answer.get("items") or []:
                if isinstance(item, dict) and item.get("uuid"):
                    found[str(item["uuid"])] = item
        return found

    def map_item(self, item: Any, problems: ProblemLog) -> list[SourceRecord]:
        media, specimen = item
        record = idigbio_record(media, specimen, problems, self.name)
        return [record] if record is not None else []
