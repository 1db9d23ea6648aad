"""The iDigBio source: specimen images from the search API, media joined to their records."""

from __future__ import annotations

import json
from typing import Any

import httpx

from herbid.data.records import SourceRecord
from herbid.data.sources.base import ProblemLog, register_source
from herbid.data.sources.portal_search import Page, PortalSource, first_value

#: Record uuids looked up per iDigBio request (they travel in the URL, which must stay short).
IDIGBIO_UUIDS_PER_LOOKUP = 100


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
    origin = str(first_value((record or {}).get("uuid"), terms.get("uuid"), media.get("uuid")) or "")
    url = first_value(media_data.get("ac:accessURI"), media_terms.get("accessuri"))
    if url is None:
        problems.add("source", origin, "no image URL", detail=f"iDigBio media record {media.get('uuid')}")
        return None
    verbatim = first_value(data.get("dwc:verbatimScientificName"), data.get("dwc:scientificName"))
    name = first_value(data.get("dwc:scientificName"), _capitalised(terms.get("scientificname")))
    if name is None and verbatim is None:
        problems.add("source", origin, "no scientific name", detail=f"iDigBio media record {media.get('uuid')}")
        return None
    return SourceRecord(
        source_path=str(url),
        source=source,
        origin=origin,
        occurrenceID=first_value(data.get("dwc:occurrenceID"), terms.get("occurrenceid")),
        catalogNumber=first_value(data.get("dwc:catalogNumber"), terms.get("catalognumber")),
        institutionCode=first_value(data.get("dwc:institutionCode"), _upper(terms.get("institutioncode"))),
        scientificName=name,
        verbatimScientificName=verbatim,
        genus=first_value(data.get("dwc:genus"), _capitalised(terms.get("genus"))),
        family=first_value(data.get("dwc:family"), _capitalised(terms.get("family"))),
        recordedBy=first_value(data.get("dwc:recordedBy"), terms.get("collector")),
        recordNumber=first_value(data.get("dwc:recordNumber"), terms.get("recordnumber")),
        eventDate=first_value(data.get("dwc:eventDate"), _date_part(terms.get("datecollected"))),
        country=first_value(data.get("dwc:country"), terms.get("country")),
        extra={"idigbio_media": media.get("uuid"),
               "license": first_value(media_data.get("dcterms:rights"), media_terms.get("rights"))},
    )


def _capitalised(value: Any) -> str | None:
    value = first_value(value)
    return str(value)[:1].upper() + str(value)[1:] if value is not None else None


def _upper(value: Any) -> str | None:
    value = first_value(value)
    return str(value).upper() if value is not None else None


def _date_part(value: Any) -> str | None:
    value = first_value(value)
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
class IDigBioSource(PortalSource):
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

    def fetch_page(self, client: httpx.Client, offset: int, size: int) -> Page:
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
        return Page(offset, items, total, end)

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
