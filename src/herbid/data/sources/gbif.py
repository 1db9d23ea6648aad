"""The GBIF source: preserved specimens with still images from the occurrence search API."""

from __future__ import annotations

from typing import Any, ClassVar

import httpx

from herbid.data.records import SourceRecord
from herbid.data.sources.base import ProblemLog, register_source
from herbid.data.sources.portal_search import Page, PortalSource, first_value

#: GBIF deep paging stops here (offset + limit); larger sets need a GBIF download instead.
GBIF_MAX_OFFSET = 100_000


def _no_name(name: Any) -> bool:
    # GBIF files names it cannot match to its backbone under "incertae sedis".
    return name is None or str(name).strip().lower() == "incertae sedis"


# API documentation: https://www.gbif.org/developer/occurrence (occurrence search:
# GET /v1/occurrence/search, limit at most 300, offset paging, answer
# {offset, limit, endOfRecords, count, results[]}; each result's media[] has type/identifier).


def gbif_records(occurrence: dict[str, Any], problems: ProblemLog, source: str = "gbif") -> list[SourceRecord]:
    """One record per still image of a GBIF occurrence (search result or ``/occurrence/{key}``)."""
    key = first_value(occurrence.get("key"), occurrence.get("gbifID"))
    origin = str(key) if key is not None else ""
    urls = list(dict.fromkeys(
        str(medium["identifier"]).strip()
        for medium in occurrence.get("media") or []
        if isinstance(medium, dict) and medium.get("type") == "StillImage" and first_value(medium.get("identifier"))
    ))
    verbatim = first_value(occurrence.get("verbatimScientificName"))
    name = first_value(occurrence.get("scientificName"))
    if _no_name(name):
        name = None
    if not urls:
        problems.add("source", origin, "no image URL", detail="GBIF occurrence without a StillImage")
        return []
    if name is None and verbatim is None:
        problems.add("source", origin, "no scientific name", detail="GBIF occurrence without a usable name")
        return []
    fields = {
        "occurrenceID": first_value(occurrence.get("occurrenceID")),
        "catalogNumber": first_value(occurrence.get("catalogNumber")),
        "institutionCode": first_value(occurrence.get("institutionCode")),
        "scientificName": name,
        "verbatimScientificName": verbatim,
        "genus": first_value(occurrence.get("genus")),
        "family": first_value(occurrence.get("family")),
        "recordedBy": first_value(occurrence.get("recordedBy")),
        "recordNumber": first_value(occurrence.get("recordNumber")),
        "eventDate": first_value(occurrence.get("eventDate")),
        "country": first_value(occurrence.get("country"), occurrence.get("countryCode")),
    }
    licence = first_value(occurrence.get("license"))
    return [
        SourceRecord(source_path=url, source=source, origin=origin,
                     extra={"gbif_key": origin, "license": licence}, **fields)
        for url in urls
    ]


@register_source
class GBIFSource(PortalSource):
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

    def fetch_page(self, client: httpx.Client, offset: int, size: int) -> Page:
        answer = self.get(client, "/occurrence/search", self.search_params(offset, size))
        results = answer.get("results") or []
        total = answer.get("count")
        return Page(offset, results, total if isinstance(total, int) else None, bool(answer.get("endOfRecords")))

    def map_item(self, item: Any, problems: ProblemLog) -> list[SourceRecord]:
        return gbif_records(item, problems, self.name)
