"""Darwin Core Archive and Darwin Core CSV sources.

Small archives and tables are generated in ``tmp_path`` so every format rule and every
bad input is pinned by a test that always runs; the real SEINet, GBIF, NYBG and
python-dwca-reader samples in ``../shared/data`` are checked when that folder exists.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from herbid.data.records import Problem, SourceRecord
from herbid.data.sources.base import ProblemLog, SourceError
from herbid.data.sources.dwca import DwcaSource, parse_meta
from herbid.data.sources.tabular import DwcCsvSource, split_media, term_name

DWC = "http://rs.tdwg.org/dwc/terms/"
AC_MULTIMEDIA = "http://rs.tdwg.org/ac/terms/Multimedia"
GBIF_MULTIMEDIA = "http://rs.gbif.org/terms/1.0/Multimedia"
from conftest import SHARED_DATA as SHARED
from conftest import needs_shared_data

CORE_TERMS = ("occurrenceID", "scientificName", "recordedBy", "country")
CORE_HEADER = "id,occurrenceID,scientificName,recordedBy,country\n"


# --------------------------------------------------------------------------- helpers


def fields_xml(terms: tuple[str, ...], start: int = 1, ns: str = DWC) -> str:
    return "".join(f'<field index="{i}" term="{ns}{t}"/>' for i, t in enumerate(terms, start))


def table_xml(
    tag: str,
    row_type: str,
    location: str,
    fields: str,
    attrs: str = 'fieldsTerminatedBy="," fieldsEnclosedBy="&quot;" ignoreHeaderLines="1"',
) -> str:
    key = "id" if tag == "core" else "coreid"
    return (
        f'<{tag} rowType="{row_type}" {attrs}><files><location>{location}</location></files>'
        f'<{key} index="0"/>{fields}</{tag}>'
    )


def meta_xml(core: str, *extensions: str) -> str:
    return f'<?xml version="1.0"?><archive xmlns="http://rs.tdwg.org/dwc/text/">{core}{"".join(extensions)}</archive>'


def occurrence_core(attrs: str | None = None, fields: str | None = None) -> str:
    args = {"attrs": attrs} if attrs is not None else {}
    return table_xml("core", DWC + "Occurrence", "occurrences.csv", fields or fields_xml(CORE_TERMS), **args)


def ac_extension(location: str = "multimedia.csv") -> str:
    terms = "".join(
        f'<field index="{i}" term="{uri}"/>'
        for i, uri in enumerate(
            (
                "http://purl.org/dc/terms/identifier",
                "http://rs.tdwg.org/ac/terms/accessURI",
                "http://purl.org/dc/terms/type",
                "http://purl.org/dc/terms/format",
                "http://purl.org/dc/terms/rights",
            ),
            1,
        )
    )
    return table_xml("extension", AC_MULTIMEDIA, location, terms)


MEDIA_HEADER = "coreid,identifier,accessURI,type,format,rights\n"


def write_archive(root: Path, files: dict[str, str | bytes], zipped: bool, encoding: str = "utf-8") -> Path:
    """An archive with ``files`` (text encoded with ``encoding``) as a folder or a zip."""
    blobs = {name: data if isinstance(data, bytes) else data.encode(encoding) for name, data in files.items()}
    if zipped:
        path = root / "archive.zip"
        with zipfile.ZipFile(path, "w") as archive:
            for name, blob in blobs.items():
                archive.writestr(name, blob)
        return path
    folder = root / "archive"
    folder.mkdir()
    for name, blob in blobs.items():
        (folder / name).write_bytes(blob)
    return folder


def read(source_cls: type, location: Path) -> tuple[list[SourceRecord], ProblemLog]:
    problems = ProblemLog()
    return list(source_cls(location).records(problems)), problems


@pytest.fixture(params=[False, True], ids=["folder", "zip"])
def zipped(request: pytest.FixtureRequest) -> bool:
    return request.param


# --------------------------------------------------------------------------- DwC-A: formats


def test_iso_8859_1_archive_keeps_accents(tmp_path: Path, zipped: bool) -> None:
    core = occurrence_core(attrs='encoding="ISO-8859-1" fieldsTerminatedBy="," ignoreHeaderLines="1"')
    occurrences = CORE_HEADER + '1,occ-1,"Senecio niveo-aureus Cuatrec.",José Cuatrecasas Arumí,Perú\n'
    media = MEDIA_HEADER + "1,,https://img.example/1.jpg,StillImage,image/jpeg,CC BY\n"
    files = {
        "meta.xml": meta_xml(core, ac_extension()),
        "occurrences.csv": occurrences,
        "multimedia.csv": media,
    }
    location = write_archive(tmp_path, files, zipped, encoding="latin-1")

    records, problems = read(DwcaSource, location)

    assert len(problems) == 0
    assert [(r.scientificName, r.recordedBy, r.country) for r in records] == [
        ("Senecio niveo-aureus Cuatrec.", "José Cuatrecasas Arumí", "Perú")
    ]
    record = records[0]
    assert record.source == "dwca"
    assert record.source_path == "https://img.example/1.jpg"
    assert record.occurrenceID == "occ-1"
    assert record.origin == f"{location}/occurrences.csv:2"
    assert record.extra == {"id": "1", "license": "CC BY", "media_origin": f"{location}/multimedia.csv:2"}


@pytest.mark.parametrize(
    ("attrs", "text"),
    [
        pytest.param(
            'fieldsTerminatedBy="|" fieldsEnclosedBy="\'" ignoreHeaderLines="2"',
            "exported by Symbiota\nid|occurrenceID|scientificName|recordedBy|country\n"
            "1|o1|'Carex tonsa (Fernald) E.P.Bicknell'|'Smith | Jones'|USA\n",
            id="pipe-single-quote-two-header-lines",
        ),
        pytest.param(
            'fieldsTerminatedBy="\\t" fieldsEnclosedBy="" linesTerminatedBy="\\r\\n" ignoreHeaderLines="0"',
            '1\to1\tCarex tonsa (Fernald) E.P.Bicknell\t"Smith | Jones\tUSA\r\n',
            id="tab-no-enclosure-crlf-no-header",
        ),
        pytest.param(
            'fieldsTerminatedBy=";" linesTerminatedBy="~" ignoreHeaderLines="1"',
            'id;occurrenceID;scientificName;recordedBy;country~1;o1;"Carex tonsa (Fernald) E.P.Bicknell";'
            '"Smith | Jones";USA~',
            id="semicolon-custom-line-terminator",
        ),
        pytest.param(
            'fieldsTerminatedBy="," ignoreHeaderLines="1"',
            '\ufeffid,occurrenceID,scientificName,recordedBy,country\r1,o1,"Carex tonsa (Fernald) E.P.Bicknell",'
            '"Smith | Jones",USA\r',
            id="bom-old-mac-line-ends",
        ),
    ],
)
def test_archive_dialects(tmp_path: Path, attrs: str, text: str) -> None:
    core = table_xml(
        "core",
        DWC + "Occurrence",
        "occurrences.csv",
        fields_xml(CORE_TERMS) + f'<field term="{DWC}associatedMedia" default="https://img.example/a.jpg"/>',
        attrs=attrs,
    )
    location = write_archive(tmp_path, {"meta.xml": meta_xml(core), "occurrences.csv": text}, zipped=True)

    records, problems = read(DwcaSource, location)

    assert list(problems) == []
    assert [(r.occurrenceID, r.scientificName, r.recordedBy, r.country, r.source_path) for r in records] == [
        (
            "o1",
            "Carex tonsa (Fernald) E.P.Bicknell",
            '"Smith | Jones' if "\\t" in attrs else "Smith | Jones",
            "USA",
            "https://img.example/a.jpg",
        )
    ]


def test_default_values_fill_unmapped_and_blank_fields(tmp_path: Path) -> None:
    fields = (
        fields_xml(("occurrenceID", "scientificName", "associatedMedia", "country")).replace(
            f'term="{DWC}country"/>', f'term="{DWC}country" default="Puerto Rico"/>'
        )
        + f'<field term="{DWC}institutionCode" default="NY"/>'
    )
    core = occurrence_core(fields=fields)
    text = (
        "id,occurrenceID,scientificName,associatedMedia,country\n"
        "1,o1,Jasminum fluminense Vell.,https://img.example/1.jpg,\n"
        "2,o2,Jasminum fluminense Vell.,https://img.example/2.jpg,Cuba\n"
    )
    location = write_archive(tmp_path, {"meta.xml": meta_xml(core), "occurrences.csv": text}, zipped=False)

    records, _ = read(DwcaSource, location)

    assert [(r.occurrenceID, r.country, r.institutionCode) for r in records] == [
        ("o1", "Puerto Rico", "NY"),
        ("o2", "Cuba", "NY"),
    ]


def test_multimedia_extension_joins_images_and_filters_non_images(tmp_path: Path, zipped: bool) -> None:
    core = occurrence_core()
    occurrences = (
        CORE_HEADER + "1,o1,Viola mandshurica,Kim,KR\n2,o2,Viola alba,Lee,KR\n3,o3,Viola tricolor,Park,KR\n"
    )
    media = MEDIA_HEADER + (
        "1,urn:uuid:a,https://img.example/1a.jpg,StillImage,image/jpeg,\n"
        "1,https://img.example/1b.jpg,,http://purl.org/dc/dcmitype/StillImage,,\n"  # falls back to identifier
        "2,,https://img.example/2.mp3,Sound,audio/mpeg,\n"
    )
    files = {
        "meta.xml": meta_xml(core, ac_extension()),
        "occurrences.csv": occurrences,
        "multimedia.csv": media,
    }
    location = write_archive(tmp_path, files, zipped)

    records, problems = read(DwcaSource, location)

    assert [(r.scientificName, r.source_path) for r in records] == [
        ("Viola mandshurica", "https://img.example/1a.jpg"),
        ("Viola mandshurica", "https://img.example/1b.jpg"),
    ]
    assert list(problems) == [
        Problem("source", f"{location}/multimedia.csv:4", "not an image", detail="type Sound"),
        Problem("source", f"{location}/occurrences.csv:3", "no image"),
        Problem("source", f"{location}/occurrences.csv:4", "no image"),
    ]


def test_gbif_multimedia_extension_uses_identifier(tmp_path: Path) -> None:
    ext_fields = "".join(
        f'<field index="{i}" term="http://purl.org/dc/terms/{t}"/>'
        for i, t in enumerate(("type", "format", "identifier"), 1)
    )
    ext = table_xml(
        "extension",
        GBIF_MULTIMEDIA,
        "multimedia.txt",
        ext_fields,
        attrs='fieldsTerminatedBy="\\t" fieldsEnclosedBy="" ignoreHeaderLines="1"',
    )
    files = {
        "meta.xml": meta_xml(occurrence_core(), ext),
        "occurrences.csv": CORE_HEADER + "77,o77,Pectocarya recurvata I.M.Johnst.,Atwood,US\n",
        "multimedia.txt": "gbifID\ttype\tformat\tidentifier\n77\tStillImage\timage/jpeg\thttps://img.example/77.jpg\n",
    }
    records, problems = read(DwcaSource, write_archive(tmp_path, files, zipped=True))

    assert [(r.occurrenceID, r.source_path) for r in records] == [("o77", "https://img.example/77.jpg")]
    assert len(problems) == 0


def test_associated_media_is_split_and_local_paths_resolve_inside_the_archive(tmp_path: Path) -> None:
    core = occurrence_core(fields=fields_xml(("occurrenceID", "scientificName", "associatedMedia")))
    text = (
        "id,occurrenceID,scientificName,associatedMedia\n"
        '1,o1,Anemone canadensis,"https://img.example/a.jpg | https://img.example/b.jpg"\n'
        "2,o2,Anemone canadensis,images/sheet 2.jpg\n"  # missing on disk: still yielded
        "3,o3,Anemone canadensis,../../outside.jpg\n"
        "4,o4,Anemone canadensis,/etc/passwd\n"
        "5,o5,Anemone canadensis,ftp://img.example/5.jpg\n"
    )
    location = write_archive(tmp_path, {"meta.xml": meta_xml(core), "occurrences.csv": text}, zipped=False)

    records, problems = read(DwcaSource, location)

    assert [(r.occurrenceID, r.source_path) for r in records] == [
        ("o1", "https://img.example/a.jpg"),
        ("o1", "https://img.example/b.jpg"),
        ("o2", str((location / "images" / "sheet 2.jpg").resolve())),
    ]
    where = f"{location}/occurrences.csv"
    assert list(problems) == [
        Problem("source", f"{where}:4", "media path outside the archive", detail="../../outside.jpg"),
        Problem("source", f"{where}:5", "media path outside the archive", detail="/etc/passwd"),
        Problem("source", f"{where}:6", "unsupported URL scheme: 'ftp'", detail="ftp://img.example/5.jpg"),
    ]


def test_image_stored_inside_a_zip_is_reported(tmp_path: Path) -> None:
    core = occurrence_core(fields=fields_xml(("occurrenceID", "scientificName", "associatedMedia")))
    text = "id,occurrenceID,scientificName,associatedMedia\n1,o1,Anemone canadensis,images/1.jpg\n"
    files = {"meta.xml": meta_xml(core), "occurrences.csv": text, "images/1.jpg": b"\xff\xd8\xff"}
    location = write_archive(tmp_path, files, zipped=True)

    records, problems = read(DwcaSource, location)

    assert records == []
    assert list(problems) == [
        Problem(
            "source",
            f"{location}/occurrences.csv:2",
            "image inside the zip archive",
            detail="unzip it and read the folder: images/1.jpg",
        )
    ]


# --------------------------------------------------------------------------- DwC-A: bad input


def test_wrong_field_count_rows_are_reported_and_skipped(tmp_path: Path, zipped: bool) -> None:
    occurrences = CORE_HEADER + (
        "1,o1,Viola alba,Lee,KR\n"
        "2,o2,Viola alba,Lee\n"
        "3,o3,Viola alba,Lee,KR,extra\n"
        "\n"
        "4,o4,Viola alba,Lee,KR\n"
    )
    media = MEDIA_HEADER + "".join(f"{i},,https://img.example/{i}.jpg,,,\n" for i in (1, 2, 3, 4))
    files = {
        "meta.xml": meta_xml(occurrence_core(), ac_extension()),
        "occurrences.csv": occurrences,
        "multimedia.csv": media,
    }
    location = write_archive(tmp_path, files, zipped)

    records, problems = read(DwcaSource, location)

    assert [r.occurrenceID for r in records] == ["o1", "o4"]
    where = f"{location}/occurrences.csv"
    media_where = f"{location}/multimedia.csv"
    assert list(problems) == [
        Problem("source", f"{where}:3", "wrong number of fields", detail="row has 4 fields, expected 5"),
        Problem("source", f"{where}:4", "wrong number of fields", detail="row has 6 fields, expected 5"),
        # The images of the skipped rows no longer have an occurrence to join.
        Problem("source", f"{media_where}:3", "orphaned multimedia row", detail="coreid '2' not in core"),
        Problem("source", f"{media_where}:4", "orphaned multimedia row", detail="coreid '3' not in core"),
    ]


def test_orphaned_multimedia_rows_are_reported(tmp_path: Path) -> None:
    media = (
        MEDIA_HEADER
        + "1,,https://img.example/1.jpg,,,\n99,,https://img.example/99.jpg,,,\n,,https://img.example/x.jpg,,,\n"
    )
    files = {
        "meta.xml": meta_xml(occurrence_core(), ac_extension()),
        "occurrences.csv": CORE_HEADER + "1,o1,Viola alba,Lee,KR\n",
        "multimedia.csv": media,
    }
    location = write_archive(tmp_path, files, zipped=True)

    records, problems = read(DwcaSource, location)

    assert [r.source_path for r in records] == ["https://img.example/1.jpg"]
    assert list(problems) == [
        Problem(
            "source",
            f"{location}/multimedia.csv:3",
            "orphaned multimedia row",
            detail="coreid '99' not in core",
        ),
        Problem(
            "source",
            f"{location}/multimedia.csv:4",
            "orphaned multimedia row",
            detail="coreid '' not in core",
        ),
    ]


def test_rows_without_any_name_are_dropped_and_verbatim_only_rows_kept(tmp_path: Path) -> None:
    terms = ("occurrenceID", "scientificName", "associatedMedia")
    fields = (
        fields_xml(terms) + '<field index="4" term="http://rs.gbif.org/terms/1.0/verbatimScientificName"/>'
    )
    text = (
        "id,occurrenceID,scientificName,associatedMedia,verbatimScientificName\n"
        "1,o1,,https://img.example/1.jpg,Forestiera eggersiana Krug & Urb.\n"
        "2,o2,  ,https://img.example/2.jpg,\n"
        "3,o3,Lindernia diffusa,https://img.example/3.jpg,Vandellia diffusa\n"
    )
    location = write_archive(
        tmp_path,
        {"meta.xml": meta_xml(occurrence_core(fields=fields)), "occurrences.csv": text},
        zipped=False,
    )

    records, problems = read(DwcaSource, location)

    assert [(r.occurrenceID, r.scientificName, r.verbatimScientificName) for r in records] == [
        ("o1", None, "Forestiera eggersiana Krug & Urb."),
        ("o3", "Lindernia diffusa", "Vandellia diffusa"),
    ]
    assert list(problems) == [Problem("source", f"{location}/occurrences.csv:3", "no scientific name")]


def test_archive_without_any_image_column_gets_one_summary_problem(tmp_path: Path) -> None:
    files = {
        "meta.xml": meta_xml(occurrence_core()),
        "occurrences.csv": CORE_HEADER + "1,o1,A b,X,Y\n2,o2,A c,X,Y\n",
    }
    location = write_archive(tmp_path, files, zipped=True)

    records, problems = read(DwcaSource, location)

    assert records == []
    assert list(problems) == [
        Problem("source", str(location), "no multimedia extension or associatedMedia", detail="all 2 rows")
    ]


@pytest.mark.parametrize("member", ["../evil.jpg", "/tmp/evil.jpg", "images/../../evil.jpg", "C:\\evil.jpg"])
def test_zip_slip_archive_is_refused(tmp_path: Path, member: str) -> None:
    files = {"meta.xml": meta_xml(occurrence_core()), "occurrences.csv": CORE_HEADER, member: b"x"}
    location = write_archive(tmp_path, files, zipped=True)

    with pytest.raises(SourceError) as info:
        read(DwcaSource, location)

    assert str(info.value) == f"{location}: unsafe path in archive: {member!r}"
    assert not (tmp_path.parent / "evil.jpg").exists()


def test_zip_slip_csv_zip_is_refused(tmp_path: Path) -> None:
    location = tmp_path / "download.zip"
    with zipfile.ZipFile(location, "w") as archive:
        archive.writestr("occurrence.csv", "scientificName,associatedMedia\n")
        archive.writestr("../../evil.png", b"x")

    with pytest.raises(SourceError, match=r"unsafe path in archive: '../../evil.png'$"):
        read(DwcCsvSource, location)


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE archive [
  <!ENTITY lol "lol">
  <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<archive xmlns="http://rs.tdwg.org/dwc/text/"><core rowType="&lol9;"/></archive>
"""


def test_billion_laughs_meta_xml_is_refused_in_one_line(tmp_path: Path, zipped: bool) -> None:
    location = write_archive(tmp_path, {"meta.xml": BILLION_LAUGHS, "occurrences.csv": ""}, zipped)

    with pytest.raises(SourceError) as info:
        read(DwcaSource, location)

    assert str(info.value) == f"{location}/meta.xml: refused: XML entity declarations are not allowed"


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ("<archive><core", "malformed XML (unclosed token: line 1, column 9)"),
        ("<eml/>", "not a Darwin Core meta.xml (root element <eml>)"),
        ("<archive/>", "expected one <core> element, found 0"),
        ('<archive><core rowType="x"/></archive>', "<core rowType=x> lists no data file"),
        (
            meta_xml(occurrence_core(attrs='fieldsTerminatedBy="::"')),
            "fieldsTerminatedBy '::' is not one character",
        ),
        (meta_xml(occurrence_core(attrs='encoding="klingon"')), "unknown encoding 'klingon'"),
        (
            meta_xml(occurrence_core(fields='<field index="one" term="x"/>')),
            "<field> index 'one' is not a column number",
        ),
    ],
)
def test_malformed_meta_xml_is_a_one_line_source_error(meta: str, message: str) -> None:
    with pytest.raises(SourceError) as info:
        parse_meta(meta.encode(), "x/meta.xml")
    assert str(info.value) == f"x/meta.xml: {message}"


def test_meta_xml_location_outside_the_folder_is_refused(tmp_path: Path) -> None:
    core = table_xml("core", DWC + "Occurrence", "../../etc/passwd", fields_xml(CORE_TERMS))
    location = write_archive(tmp_path, {"meta.xml": meta_xml(core)}, zipped=False)

    with pytest.raises(SourceError, match=r"unsafe path in meta.xml: '../../etc/passwd'$"):
        read(DwcaSource, location)


def test_non_occurrence_core_is_refused(tmp_path: Path) -> None:
    core = table_xml("core", DWC + "Taxon", "taxon.txt", fields_xml(("genus",)))
    location = write_archive(
        tmp_path, {"meta.xml": meta_xml(core), "taxon.txt": "id,genus\n1,Viola\n"}, zipped=True
    )

    with pytest.raises(SourceError) as info:
        read(DwcaSource, location)
    assert str(info.value) == (
        f"{location}: core rowType is Taxon, not Occurrence; herbid reads specimen (occurrence) archives"
    )


def test_data_file_with_fewer_columns_than_meta_xml_maps_is_refused(tmp_path: Path) -> None:
    files = {"meta.xml": meta_xml(occurrence_core()), "occurrences.csv": "id,occurrenceID\n1,o1\n"}
    location = write_archive(tmp_path, files, zipped=False)

    with pytest.raises(SourceError) as info:
        read(DwcaSource, location)
    assert str(info.value) == f"{location}/occurrences.csv: meta.xml maps column 4 but the file has 2 columns"


def test_undeclared_bytes_in_a_utf8_archive_are_read_as_latin1_and_reported(tmp_path: Path) -> None:
    core = occurrence_core(fields=fields_xml(("scientificName", "recordedBy", "associatedMedia")))
    text = "id,scientificName,recordedBy,associatedMedia\n1,Viola alba,Müller,https://img.example/1.jpg\n".encode()
    text += "2,Viola alba,M\xfcller,https://img.example/2.jpg\n".encode("latin-1")
    location = write_archive(tmp_path, {"meta.xml": meta_xml(core), "occurrences.csv": text}, zipped=True)

    records, problems = read(DwcaSource, location)

    assert [r.recordedBy for r in records] == ["Müller", "Müller"]
    assert list(problems) == [
        Problem(
            "source",
            f"{location}/occurrences.csv",
            "wrong encoding",
            action="converted",
            detail="1 line not valid utf-8; read as Latin-1",
        )
    ]


def test_duplicate_core_ids_are_reported(tmp_path: Path) -> None:
    core = occurrence_core(fields=fields_xml(("scientificName", "associatedMedia")))
    text = "id,scientificName,associatedMedia\n7,Viola alba,https://img.example/a.jpg\n7,Viola alba,https://img.example/b.jpg\n"
    location = write_archive(tmp_path, {"meta.xml": meta_xml(core), "occurrences.csv": text}, zipped=False)

    records, problems = read(DwcaSource, location)

    assert [(r.occurrenceID, r.source_path) for r in records] == [("7", "https://img.example/a.jpg")]
    assert list(problems) == [
        Problem("source", f"{location}/occurrences.csv:3", "duplicate core id", detail="7")
    ]


def test_corrupt_zip_member_is_a_one_line_source_error(tmp_path: Path) -> None:
    core = occurrence_core(fields=fields_xml(("scientificName", "associatedMedia")))
    text = "id,scientificName,associatedMedia\n" + "1,Viola alba,https://img.example/a.jpg\n" * 50
    location = tmp_path / "damaged.zip"
    with zipfile.ZipFile(location, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("meta.xml", meta_xml(core))
        archive.writestr("occurrences.csv", text)
    blob = bytearray(location.read_bytes())
    offset = blob.index(b"Viola alba")
    blob[offset : offset + 5] = b"XXXXX"  # the stored CRC no longer matches
    location.write_bytes(bytes(blob))

    with pytest.raises(SourceError) as info:
        read(DwcaSource, location)

    assert (
        str(info.value) == f"{location}/occurrences.csv: cannot read (Bad CRC-32 for file 'occurrences.csv')"
    )


def test_dwca_detection(tmp_path: Path) -> None:
    files = {"meta.xml": meta_xml(occurrence_core()), "occurrences.csv": CORE_HEADER}
    folder = write_archive(tmp_path, files, zipped=False)
    archive = write_archive(tmp_path, files, zipped=True)
    plain_zip = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain_zip, "w") as handle:
        handle.writestr("data/meta.xml", "<archive/>")  # not at the root

    assert DwcaSource.detect(str(folder))
    assert DwcaSource.detect(str(folder / "meta.xml"))
    assert DwcaSource.detect(str(archive))
    assert not DwcaSource.detect(str(plain_zip))
    assert not DwcaSource.detect(str(tmp_path / "missing"))
    assert not DwcaSource.detect(str(folder / "occurrences.csv"))
    assert not DwcCsvSource.detect(str(archive))
    assert DwcaSource.priority < DwcCsvSource.priority


# --------------------------------------------------------------------------- CSV


def test_csv_with_prefixed_and_uri_headers(tmp_path: Path) -> None:
    (tmp_path / "export").mkdir()
    path = tmp_path / "export" / "specimens.csv"
    path.write_text(
        "dwc:catalogNumber,http://rs.tdwg.org/dwc/terms/scientificName,DWC:RECORDEDBY,Image_Path\n"
        "001,Carex tonsa,Fernald,sheets/001.jpg\n"
        "002,Carex tonsa,Fernald,https://img.example/002.jpg\n",
        encoding="utf-8",
    )

    records, problems = read(DwcCsvSource, path)

    assert [(r.catalogNumber, r.scientificName, r.recordedBy, r.source_path, r.origin) for r in records] == [
        ("001", "Carex tonsa", "Fernald", str(tmp_path / "export" / "sheets" / "001.jpg"), f"{path}:2"),
        ("002", "Carex tonsa", "Fernald", "https://img.example/002.jpg", f"{path}:3"),
    ]
    assert records[0].source == "csv"
    assert len(problems) == 0


def test_latin1_tsv_with_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "specimens.txt"
    text = (
        "scientificName\tverbatimScientificName\trecordedBy\tidentifier\n"
        "Espeletia grandiflora\t\tJosé Cuatrecasas\thttps://img.example/1.jpg\n"
        "\tEspeletia sp.\tJosé Cuatrecasas\thttps://img.example/2.jpg\n"
        "Espeletia grandiflora\t\tJosé Cuatrecasas\n"
        "\t\tJosé Cuatrecasas\thttps://img.example/4.jpg\n"
        "Espeletia grandiflora\t\tJosé Cuatrecasas\turn:catalog:COL:5\n"
    )
    path.write_bytes(text.encode("latin-1"))

    assert DwcCsvSource.detect(str(path))
    records, problems = read(DwcCsvSource, path)

    assert [(r.scientificName, r.verbatimScientificName, r.recordedBy) for r in records] == [
        ("Espeletia grandiflora", None, "José Cuatrecasas"),
        (None, "Espeletia sp.", "José Cuatrecasas"),
    ]
    assert list(problems) == [
        Problem("source", f"{path}:4", "wrong number of fields", detail="row has 3 fields, expected 4"),
        Problem("source", f"{path}:5", "no scientific name"),
        Problem("source", f"{path}:6", "no image"),
    ]


def test_csv_with_bom_semicolons_and_split_associated_media(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_text(
        "\ufeffscientificName;associatedMedia\n"
        '"Viola alba";"https://img.example/a.jpg https://img.example/b.jpg|img/c d.jpg"\n',
        encoding="utf-8",
    )

    records, problems = read(DwcCsvSource, path)

    assert [r.source_path for r in records] == [
        "https://img.example/a.jpg",
        "https://img.example/b.jpg",
        str(tmp_path / "img" / "c d.jpg"),
    ]
    assert len(problems) == 0


def test_csv_latin1_line_after_the_sniffed_sample_is_converted(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    filler = "".join(f"Viola alba,https://img.example/{i}.jpg,Kim\n" for i in range(2000))  # > 64 KiB
    path.write_bytes(
        ("scientificName,associatedMedia,recordedBy\n" + filler).encode()
        + "Viola alba,https://img.example/x.jpg,Gonz\xe1lez\n".encode("latin-1")
    )

    records, problems = read(DwcCsvSource, path)

    assert len(records) == 2001
    assert records[-1].recordedBy == "González"
    assert list(problems) == [
        Problem(
            "source",
            str(path),
            "wrong encoding",
            action="converted",
            detail="1 line not valid utf-8; read as Latin-1",
        )
    ]


def test_csv_without_name_column_gets_one_summary_problem(tmp_path: Path) -> None:
    path = tmp_path / "images.csv"
    path.write_text("catalogNumber,image\n1,a.jpg\n2,b.jpg\n3,c.jpg\n")

    records, problems = read(DwcCsvSource, path)

    assert records == []
    assert list(problems) == [
        Problem(
            "source", str(path), "no scientificName or verbatimScientificName column", detail="all 3 rows"
        )
    ]


def test_csv_without_image_column_gets_one_summary_problem(tmp_path: Path) -> None:
    location = tmp_path / "0001-simple.zip"
    rows = "".join(f"{i}\tPectocarya recurvata\n" for i in range(5))
    with zipfile.ZipFile(location, "w") as archive:
        archive.writestr("0001.csv", "gbifID\tscientificName\n" + rows)
        archive.writestr("__MACOSX/._0001.csv", b"\x00\x05")

    assert DwcCsvSource.detect(str(location))
    records, problems = read(DwcCsvSource, location)

    assert records == []
    assert list(problems) == [
        Problem("source", f"{location}/0001.csv", "no image column", detail="all 5 rows")
    ]


def test_folder_with_one_occurrence_table(tmp_path: Path) -> None:
    folder = tmp_path / "herbarium"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "NY_1.jpg").write_bytes(b"\xff\xd8\xff")
    (folder / "notes.csv").write_text("remark\nscanned 2019\n")  # not an occurrence table
    (folder / "occurrences.csv").write_text("scientificName,associatedMedia\nViola alba,images/NY_1.jpg\n")

    assert DwcCsvSource.detect(str(folder))
    records, problems = read(DwcCsvSource, folder)

    assert [(r.scientificName, r.source_path, r.origin) for r in records] == [
        ("Viola alba", str(folder / "images" / "NY_1.jpg"), f"{folder / 'occurrences.csv'}:2")
    ]
    assert len(problems) == 0
    (folder / "more.csv").write_text("scientificName,image\n")
    assert not DwcCsvSource.detect(str(folder))  # two tables: ambiguous
    with pytest.raises(SourceError, match=r"no single occurrence table \(.csv/.tsv/.txt\) in folder$"):
        read(DwcCsvSource, folder)


def test_csv_detection(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("just some notes\n")
    table = tmp_path / "table.txt"
    table.write_text("scientificName\timage\nViola alba\ta.jpg\n")
    two = tmp_path / "two.zip"
    with zipfile.ZipFile(two, "w") as archive:
        archive.writestr("a.csv", "x\n")
        archive.writestr("b.csv", "x\n")

    assert not DwcCsvSource.detect(str(notes))
    assert DwcCsvSource.detect(str(table))
    assert not DwcCsvSource.detect(str(two))
    assert DwcCsvSource.detect(str(tmp_path))  # table.txt is the folder's one occurrence table
    assert not DwcCsvSource.detect(str(tmp_path / "missing.csv"))
    with pytest.raises(SourceError, match=r"expected one .csv/.tsv/.txt file in the zip, found 2$"):
        read(DwcCsvSource, two)


def test_helpers() -> None:
    assert term_name("http://rs.tdwg.org/dwc/terms/genus") == "genus"
    assert term_name("dwc:genus") == "genus"
    assert term_name("http://purl.org/dc/terms/type") == "type"
    assert split_media("a.jpg; b.jpg | https://x/c.jpg https://x/d.jpg") == [
        "a.jpg",
        "b.jpg",
        "https://x/c.jpg",
        "https://x/d.jpg",
    ]
    assert split_media("images/Carex tonsa.jpg") == ["images/Carex tonsa.jpg"]
    assert split_media(None) == []


# --------------------------------------------------------------------------- real data

shared = needs_shared_data


@pytest.mark.shared_data
@shared
@pytest.mark.parametrize("name", ["seinet-pectocarya", "seinet-pectocarya-dwca.zip"])
def test_seinet_archive(name: str) -> None:
    location = SHARED / "dwca" / name
    assert DwcaSource.detect(str(location))

    records, problems = read(DwcaSource, location)

    # 131 occurrences; the multimedia extension has 35 image rows for 30 of them.
    assert len(records) == 35
    assert len({r.source_path for r in records}) == 35
    assert len({r.occurrenceID for r in records}) == 30
    # All remote; three are plain http (NYBG, Tropicos image servers), the rest https.
    assert all(r.source_path.startswith(("https://", "http://")) for r in records)
    assert sum(r.source_path.startswith("https://") for r in records) == 32
    assert all("Pectocarya" in (r.scientificName or "") for r in records)
    assert all(r.source == "dwca" and r.extra["license"].startswith("http") for r in records)
    assert problems.by_reason() == {"no image": 131 - 30}


@pytest.mark.shared_data
@shared
def test_ny_herbarium_csv() -> None:
    location = SHARED / "ny-herbarium" / "occurrences.csv"
    assert DwcCsvSource.detect(str(location))

    records, problems = read(DwcCsvSource, location)

    assert len(records) == 100
    assert len(problems) == 0
    assert all(r.recordedBy for r in records)
    assert records[0].recordedBy == "T. A. Zanoni, D. Atha & M. Vives"
    verbatim_only = [r for r in records if r.scientificName is None]
    assert len(verbatim_only) == 10
    assert all(r.verbatimScientificName for r in verbatim_only)
    folder = location.parent.resolve()
    assert all(Path(r.source_path).parent == folder / "images" for r in records)
    assert all(Path(r.source_path).is_file() for r in records)
    # The folder itself is read through its table, not as a species-per-folder tree.
    assert DwcCsvSource.detect(str(location.parent))
    assert [r.source_path for r in read(DwcCsvSource, location.parent)[0]] == [r.source_path for r in records]


@pytest.mark.shared_data
@shared
def test_gbif_simple_csv() -> None:
    location = SHARED / "dwca" / "gbif-simple-csv-pectocarya.zip"
    assert DwcCsvSource.detect(str(location))
    assert not DwcaSource.detect(str(location))

    records, problems = read(DwcCsvSource, location)

    assert records == []
    assert list(problems) == [
        Problem(
            "source", f"{location}/0001217-241107131044228.csv", "no image column", detail="all 2472 rows"
        )
    ]


#: What each python-dwca-reader sample does: ("records", n, problems by reason) or ("error", message tail).
DWCA_READER_SAMPLES = {
    "dwca-2extensions.zip": (
        "error",
        "core rowType is Taxon, not Occurrence; herbid reads specimen (occurrence) archives",
    ),
    "dwca-orphaned-rows.zip": (
        "error",
        "core rowType is Taxon, not Occurrence; herbid reads specimen (occurrence) archives",
    ),
    "dwca-star-test-archive.zip": (
        "error",
        "core rowType is Taxon, not Occurrence; herbid reads specimen (occurrence) archives",
    ),
    "dwca-utf8-eol-test.zip": ("records", 0, {"no multimedia extension or associatedMedia": 1}),
    "gbif-results.zip": ("records", 0, {"no multimedia extension or associatedMedia": 1}),
    # No meta.xml: read as GBIF simple CSV zips (one .csv; __MACOSX and an empty extensionless file ignored).
    "dwca-invalid-simple-two.zip": ("records", 0, {"no image column": 1}),
    "dwca-simple-csv-dos.zip": ("records", 0, {"no image column": 1}),
}


@pytest.mark.shared_data
@shared
@pytest.mark.parametrize("name", sorted(DWCA_READER_SAMPLES))
def test_dwca_reader_samples(name: str) -> None:
    location = SHARED / "dwca" / "dwca-reader-samples" / name
    source_cls = DwcaSource if DwcaSource.detect(str(location)) else DwcCsvSource
    assert source_cls.detect(str(location))
    expected = DWCA_READER_SAMPLES[name]

    if expected[0] == "error":
        with pytest.raises(SourceError) as info:
            read(source_cls, location)
        assert str(info.value) == f"{location}: {expected[1]}"
        assert "\n" not in str(info.value)
    else:
        records, problems = read(source_cls, location)
        assert (len(records), problems.by_reason()) == expected[1:]


@pytest.mark.shared_data
@shared
def test_dwca_reader_sample_row_counts() -> None:
    """The image-less samples are still parsed row by row (counts from the files)."""
    details = {}
    for name in ("dwca-utf8-eol-test.zip", "gbif-results.zip"):
        _, problems = read(DwcaSource, SHARED / "dwca" / "dwca-reader-samples" / name)
        details[name] = [p.detail for p in problems]
    assert details == {"dwca-utf8-eol-test.zip": ["its only row"], "gbif-results.zip": ["all 158 rows"]}
