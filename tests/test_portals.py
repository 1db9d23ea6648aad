"""iDigBio and GBIF sources against the fake portal on 127.0.0.1 (and a recorded GBIF answer)."""

from __future__ import annotations

import json

import pytest
import yaml

from fake_portal import FakePortal, closed_port
from herbid.data.sources.base import SOURCES, ProblemLog, SourceError
from herbid.data.sources.portals import GBIFSource, IDigBioSource, gbif_records, idigbio_record, parse_portal_query

pytestmark = [pytest.mark.usefixtures("loopback_only"), pytest.mark.timeout(30)]

from conftest import SHARED_DATA

GBIF_CASSETTE = SHARED_DATA / "api-samples" / "gbif-test_search.yaml"
SEARCH = "/v1/occurrence/search"
MEDIA = "/v2/search/media"
RECORDS = "/v2/search/records"


def no_sleep(seconds: float) -> None:
    pass


def gbif(portal: FakePortal, query: str = "scientificName=Pectocarya", **options) -> GBIFSource:
    options.setdefault("sleep", no_sleep)
    options.setdefault("allow_private_hosts", True)  # the fake portal is on 127.0.0.1
    return GBIFSource(f"gbif:{query}", base_url=portal.url + "/v1", **options)


def idigbio(portal: FakePortal, query: str = "scientificname=Viola", **options) -> IDigBioSource:
    options.setdefault("sleep", no_sleep)
    options.setdefault("allow_private_hosts", True)
    return IDigBioSource(f"idigbio:{query}", base_url=portal.url + "/v2", **options)


def first(query: dict[str, list[str]], key: str) -> str:
    return query[key][0]


# --- location syntax -----------------------------------------------------------------------------


def test_detect_by_prefix_only() -> None:
    assert GBIFSource.detect("gbif:scientificName=Pectocarya")
    assert GBIFSource.detect("GBIF:Pectocarya")
    assert IDigBioSource.detect("idigbio:Viola sororia")
    assert not GBIFSource.detect("idigbio:Viola")
    assert not IDigBioSource.detect("/data/herbarium")
    assert not GBIFSource.detect("gbif-export.csv")
    assert SOURCES["gbif"] is GBIFSource and SOURCES["idigbio"] is IDigBioSource


def test_parse_portal_query() -> None:
    assert parse_portal_query("scientificName=Pectocarya&institutionCode=NY&limit=300", "scientificName") == (
        [("scientificName", "Pectocarya"), ("institutionCode", "NY")], 300)
    assert parse_portal_query("Viola sororia", "scientificname") == ([("scientificname", "Viola sororia")], None)
    assert parse_portal_query("Viola sororia&limit=3", "scientificname") == (
        [("scientificname", "Viola sororia")], 3)
    assert parse_portal_query("scientificname=Viola%20sororia&country=us&country=ca", "x") == (
        [("scientificname", "Viola sororia"), ("country", "us"), ("country", "ca")], None)
    with pytest.raises(SourceError, match="limit must be a whole number"):
        parse_portal_query("genus=Viola&limit=lots", "x")
    with pytest.raises(SourceError, match="empty portal query"):
        GBIFSource("gbif:")


def test_constructing_does_no_network_io(fake_portal: FakePortal) -> None:
    gbif(fake_portal)
    idigbio(fake_portal)
    GBIFSource("gbif:Pectocarya")  # the real base URL: nothing may be looked up either
    assert fake_portal.hits() == 0


def test_base_url_from_environment(fake_portal: FakePortal, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERBID_GBIF_URL", fake_portal.url + "/v1/")
    monkeypatch.setenv("HERBID_IDIGBIO_URL", fake_portal.url + "/v2")
    source = GBIFSource("gbif:Pectocarya", sleep=no_sleep, allow_private_hosts=True)
    assert source.base_url == fake_portal.url + "/v1"
    assert len(list(source.records(ProblemLog()))) == 5
    idigbio_source = IDigBioSource("idigbio:Viola", sleep=no_sleep, allow_private_hosts=True)
    assert len(list(idigbio_source.records(ProblemLog()))) == 5
    assert GBIFSource("gbif:x", base_url="http://mirror.test/v1").base_url == "http://mirror.test/v1"


def test_defaults_point_at_the_real_apis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HERBID_GBIF_URL", raising=False)
    monkeypatch.delenv("HERBID_IDIGBIO_URL", raising=False)
    assert GBIFSource("gbif:x").base_url == "https://api.gbif.org/v1"
    assert IDigBioSource("idigbio:x").base_url == "https://search.idigbio.org/v2"


# --- GBIF ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 3])
def test_gbif_pages_collect_every_record_once(fake_portal: FakePortal, workers: int) -> None:
    problems = ProblemLog()
    records = list(gbif(fake_portal, page_size=2, workers=workers).records(problems))
    assert [(r.origin, r.source_path.rsplit("/", 1)[-1]) for r in records] == [
        ("1001", "g1a.jpg"), ("1001", "g1b.jpg"), ("1002", "g2.jpg"), ("1003", "g3.jpg"), ("1006", "g6.jpg")]
    queries = fake_portal.queries(SEARCH)
    assert sorted((first(q, "offset"), first(q, "limit")) for q in queries) == [("0", "2"), ("2", "2"), ("4", "2")]
    for query in queries:
        assert query["mediaType"] == ["StillImage"]
        assert query["basisOfRecord"] == ["PRESERVED_SPECIMEN"]
        assert query["scientificName"] == ["Pectocarya"]
    assert [(p.stage, p.where, p.reason) for p in problems] == [
        ("source", "1004", "no image URL"), ("source", "1005", "no scientific name")]


def test_gbif_fields_are_mapped(fake_portal: FakePortal) -> None:
    records = list(gbif(fake_portal).records(ProblemLog()))
    first_record = records[0]
    assert first_record.source == "gbif"
    assert first_record.source_path == fake_portal.url + "/img/g1a.jpg"
    assert first_record.to_dict() | {"extra": None} == {
        "source_path": fake_portal.url + "/img/g1a.jpg", "source": "gbif",
        "occurrenceID": "urn:catalog:NY:V:0001", "catalogNumber": "00001", "institutionCode": "NY",
        "scientificName": "Pectocarya linearis (Ruiz & Pav.) DC.", "verbatimScientificName": None,
        "genus": "Pectocarya", "family": "Boraginaceae", "recordedBy": "R. Reina", "recordNumber": "42",
        "eventDate": "1985-06-12", "country": "United States of America", "origin": "1001", "extra": None}
    unmatched = next(r for r in records if r.origin == "1003")
    assert (unmatched.scientificName, unmatched.verbatimScientificName) == (None, "Pectocarya linearis")


def test_gbif_limit_caps_occurrences_read(fake_portal: FakePortal) -> None:
    records = list(gbif(fake_portal, "scientificName=Pectocarya&limit=3", page_size=2).records(ProblemLog()))
    assert [r.origin for r in records] == ["1001", "1001", "1002", "1003"]
    assert sorted((first(q, "offset"), first(q, "limit")) for q in fake_portal.queries(SEARCH)) == [
        ("0", "2"), ("2", "1")]


def test_gbif_user_cannot_drop_the_fixed_filters(fake_portal: FakePortal) -> None:
    list(gbif(fake_portal, "basisOfRecord=HUMAN_OBSERVATION&mediaType=Sound&offset=9").records(ProblemLog()))
    [query] = fake_portal.queries(SEARCH)
    assert query["basisOfRecord"] == ["PRESERVED_SPECIMEN"]
    assert query["mediaType"] == ["StillImage"]
    assert query["offset"] == ["0"]


def test_gbif_429_and_500_on_pages_are_retried(fake_portal: FakePortal) -> None:
    sleeps: list[float] = []
    fake_portal.plan(SEARCH, ("status", 429, {"Retry-After": "4"}), ("status", 500))
    records = list(gbif(fake_portal, page_size=3, workers=1, sleep=sleeps.append).records(ProblemLog()))
    assert len(records) == 5
    assert sleeps == [4.0, 1.0]
    assert fake_portal.hits(SEARCH) == 4


def test_gbif_unreachable_is_a_source_error() -> None:
    port = closed_port()
    source = GBIFSource("gbif:Pectocarya", base_url=f"http://127.0.0.1:{port}/v1", sleep=no_sleep,
                        allow_private_hosts=True)
    with pytest.raises(SourceError) as caught:
        list(source.records(ProblemLog()))
    message = str(caught.value)
    assert message.startswith(f"cannot reach 127.0.0.1:{port}: ")
    assert message.endswith("; are you offline?")
    assert "\n" not in message


def test_unresolvable_api_host_is_a_source_error() -> None:
    source = GBIFSource("gbif:Pectocarya", base_url="https://api.gbif.org/v1", sleep=no_sleep)
    with pytest.raises(SourceError, match=r"^cannot reach api\.gbif\.org: .*; are you offline\?$"):
        list(source.records(ProblemLog()))


def test_rejected_query_is_a_source_error(fake_portal: FakePortal) -> None:
    fake_portal.plan(SEARCH, ("status", 400))
    with pytest.raises(SourceError, match="did not answer the query .*http error: 400 Bad Request"):
        list(gbif(fake_portal).records(ProblemLog()))


def test_failed_later_page_is_reported_and_keeps_earlier_records(fake_portal: FakePortal) -> None:
    fake_portal.plan(SEARCH, ("pass",), *[("status", 503)] * 3)
    problems = ProblemLog()
    records = list(gbif(fake_portal, page_size=2, workers=1, retries=2).records(problems))
    assert [r.origin for r in records] == ["1001", "1001", "1002"]
    [problem] = problems.items
    assert problem.reason == "page failed: server error: 503 Service Unavailable"
    assert "from offset 2 on" in problem.detail
    assert fake_portal.hits(SEARCH) == 4  # page 1, then page 2 three times; page 3 never asked


# --- iDigBio -------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 4])
def test_idigbio_pages_collect_every_image_once(fake_portal: FakePortal, workers: int) -> None:
    problems = ProblemLog()
    records = list(idigbio(fake_portal, page_size=2, workers=workers).records(problems))
    assert [(r.origin, r.extra["idigbio_media"]) for r in records] == [
        ("r1", "m1"), ("r1", "m2"), ("r2", "m3"), ("r3", "m4"), ("r2", "m7")]
    media_queries = fake_portal.queries(MEDIA)
    assert sorted(int(first(q, "offset")) for q in media_queries) == [0, 2, 4, 6]
    for query in media_queries:
        assert json.loads(first(query, "rq")) == {"scientificname": "Viola", "hasImage": True}
        assert json.loads(first(query, "mq")) == {"mediatype": "images"}
    looked_up = sorted(u for q in fake_portal.queries(RECORDS) for u in json.loads(first(q, "rq"))["uuid"])
    assert looked_up == ["r1", "r2", "r2", "r3", "r4", "r5"]  # r2 is on two pages
    assert [(p.stage, p.where, p.reason) for p in problems] == [
        ("source", "r4", "no image URL"), ("source", "r5", "no scientific name")]


def test_idigbio_fields_are_mapped(fake_portal: FakePortal) -> None:
    records = list(idigbio(fake_portal).records(ProblemLog()))
    sororia = records[0]
    assert sororia.to_dict() | {"extra": None} == {
        "source_path": fake_portal.url + "/img/i1a.jpg", "source": "idigbio",
        "occurrenceID": "urn:uuid:occ-1", "catalogNumber": "NY01", "institutionCode": "NY",
        "scientificName": "Viola sororia Willd.", "verbatimScientificName": "Viola sororia Willd.",
        "genus": "Viola", "family": "Violaceae", "recordedBy": "H. H. Rusby", "recordNumber": "123",
        "eventDate": "1890-05-04", "country": "USA", "origin": "r1", "extra": None}
    assert sororia.extra == {"idigbio_media": "m1", "license": "CC BY 4.0"}
    # r3 has a name only in iDigBio's lower-cased index terms
    pubescens = next(r for r in records if r.origin == "r3")
    assert (pubescens.scientificName, pubescens.verbatimScientificName) == ("Viola pubescens", None)
    assert (pubescens.genus, pubescens.family, pubescens.institutionCode) == ("Viola", "Violaceae", "NY")
    assert pubescens.eventDate == "1901-07-15"


def test_idigbio_bare_text_is_a_scientific_name_and_limit_caps_media(fake_portal: FakePortal) -> None:
    records = list(idigbio(fake_portal, "Viola sororia&limit=3", page_size=2).records(ProblemLog()))
    assert len(records) == 3
    media_queries = fake_portal.queries(MEDIA)
    assert json.loads(first(media_queries[0], "rq")) == {"scientificname": "Viola sororia", "hasImage": True}
    assert sorted((first(q, "offset"), first(q, "limit")) for q in media_queries) == [("0", "2"), ("2", "1")]


def test_idigbio_query_terms(fake_portal: FakePortal) -> None:
    source = idigbio(fake_portal, "genus=Viola&institutionCode=ny&institutionCode=nybg&hasimage=false"
                                  "&data.dwc:recordedBy=Rusby")
    assert source.record_query() == {"genus": "Viola", "institutioncode": ["ny", "nybg"], "hasImage": True,
                                     "data.dwc:recordedBy": "Rusby"}


def test_idigbio_5xx_is_retried(fake_portal: FakePortal) -> None:
    sleeps: list[float] = []
    fake_portal.plan(MEDIA, ("status", 502))
    fake_portal.plan(RECORDS, ("status", 429, {"Retry-After": "1"}))
    records = list(idigbio(fake_portal, sleep=sleeps.append).records(ProblemLog()))
    assert len(records) == 5
    assert sorted(sleeps) == [0.5, 1.0]


def test_idigbio_unreachable_is_a_source_error() -> None:
    source = IDigBioSource("idigbio:Viola", base_url=f"http://127.0.0.1:{closed_port()}/v2", sleep=no_sleep,
                           allow_private_hosts=True)
    with pytest.raises(SourceError, match=r"^cannot reach 127\.0\.0\.1:\d+: .*; are you offline\?$"):
        list(source.records(ProblemLog()))


def test_idigbio_record_without_specimen_is_reported() -> None:
    problems = ProblemLog()
    media = {"uuid": "m9", "data": {"ac:accessURI": "https://example.org/x.jpg"}, "indexTerms": {"records": []}}
    assert idigbio_record(media, None, problems) is None
    assert [(p.where, p.reason) for p in problems] == [("m9", "no scientific name")]


# --- the recorded GBIF answer (real shape) ---------------------------------------------------------


def cassette_body() -> str:
    if not GBIF_CASSETTE.exists():
        pytest.skip(f"{GBIF_CASSETTE} not available (../shared/data is absent)")
    cassette = yaml.safe_load(GBIF_CASSETTE.read_text(encoding="utf-8"))
    return cassette["interactions"][0]["response"]["body"]["string"]


@pytest.mark.shared_data
def test_recorded_gbif_answer_maps_to_records() -> None:
    answer = json.loads(cassette_body())
    assert (answer["count"], answer["endOfRecords"], len(answer["results"])) == (765, False, 300)
    problems = ProblemLog()
    records = [r for occurrence in answer["results"] for r in gbif_records(occurrence, problems)]
    assert len(records) == 487
    assert len({r.source_path for r in records}) == 487
    assert all(r.source_path.startswith("https://") for r in records)
    assert len({r.origin for r in records}) == 287
    assert problems.by_reason() == {"no image URL": 13}
    assert all(r.scientificName and r.catalogNumber and r.institutionCode for r in records)
    assert records[0].origin == "4909740830"
    assert records[0].scientificName == "Amanita muscaria (L.) Hook."
    assert records[0].source_path == "https://arter.dk/media/747389ab-7915-4a92-8ae8-b1b2010dcb62.jpg"


@pytest.mark.shared_data
def test_recorded_gbif_answer_served_through_the_source(fake_portal: FakePortal) -> None:
    fake_portal.gbif_body = cassette_body().encode()
    problems = ProblemLog()
    records = list(gbif(fake_portal, "taxonKey=3329049&limit=300").records(problems))
    assert len(records) == 487
    assert fake_portal.hits(SEARCH) == 1  # the limit is met by the first page
    assert len(problems) == 13
