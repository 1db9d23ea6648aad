"""Parsing a Darwin Core Archive's ``meta.xml`` into table specs, safely.

The XML goes through defusedxml (no entity expansion, DTDs or external references), and
anything malformed or hostile becomes a one-line :class:`SourceError` naming the file. The
result says where each table's files are, their dialect (``encoding``,
``fieldsTerminatedBy``, ``fieldsEnclosedBy``, ``linesTerminatedBy``,
``ignoreHeaderLines``), which column holds which term (with per-field ``default``
values), and how extensions join the core; reading the tables is
:mod:`herbid.data.sources.dwca`'s job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException, DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden
from defusedxml.ElementTree import fromstring as safe_fromstring

from herbid.data.sources.base import SourceError
from herbid.data.sources.messages import one_line
from herbid.data.sources.rows import canonical_column, put_value, term_name
from herbid.data.sources.tables import Dialect, check_encoding

META = "meta.xml"
#: A meta.xml describes a handful of tables; anything bigger is not one.
META_MAX_BYTES = 4 * 1024 * 1024
#: rowTypes of extensions whose rows are images of the core's occurrences.
MULTIMEDIA_ROW_TYPES = frozenset(
    {
        "http://rs.tdwg.org/ac/terms/multimedia",  # Audubon Core
        "http://rs.gbif.org/terms/1.0/multimedia",  # GBIF Simple Multimedia
        "http://rs.gbif.org/terms/1.0/image",  # GBIF Image (older)
    }
)
_ESCAPE = re.compile(r"\\([tnr\\])")
_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}


@dataclass(frozen=True)
class FieldSpec:
    """One ``<field>``: a term, the column holding it (if any) and its default value."""

    name: str
    index: int | None
    default: str | None


@dataclass(frozen=True)
class TableSpec:
    """The ``<core>`` or one ``<extension>`` of meta.xml."""

    row_type: str
    locations: tuple[str, ...]
    dialect: Dialect
    #: Column of ``<id>`` (core) or ``<coreid>`` (extension).
    key_index: int | None
    fields: tuple[FieldSpec, ...]

    @property
    def max_index(self) -> int:
        indexes = [f.index for f in self.fields if f.index is not None]
        if self.key_index is not None:
            indexes.append(self.key_index)
        return max(indexes, default=-1)

    @property
    def is_multimedia(self) -> bool:
        return self.row_type.strip().rstrip("/").lower() in MULTIMEDIA_ROW_TYPES

    def has_term(self, name: str) -> bool:
        return any(f.name == name for f in self.fields)

    def values(self, row: list[str]) -> dict[str, str | None]:
        """Term name → value; a blank or unmapped column takes the field's default."""
        values: dict[str, str | None] = {}
        for spec in self.fields:
            value = row[spec.index] if spec.index is not None else None
            if not (value or "").strip() and spec.default is not None:
                value = spec.default
            put_value(values, spec.name, value)
        return values

    def key(self, row: list[str]) -> str | None:
        return row[self.key_index].strip() if self.key_index is not None else None


@dataclass(frozen=True)
class ArchiveMeta:
    core: TableSpec
    extensions: tuple[TableSpec, ...]

    @property
    def multimedia(self) -> list[TableSpec]:
        return [ext for ext in self.extensions if ext.is_multimedia]


def parse_meta(data: bytes, where: str) -> ArchiveMeta:
    """Parse meta.xml safely; anything malformed or hostile is a one-line :class:`SourceError`."""
    root = _parse_xml(data, where)
    if _local(root.tag) != "archive":
        raise SourceError(f"{where}: not a Darwin Core meta.xml (root element <{_local(root.tag)}>)")
    cores = [child for child in root if _local(child.tag) == "core"]
    if len(cores) != 1:
        raise SourceError(f"{where}: expected one <core> element, found {len(cores)}")
    extensions = tuple(_table(child, "coreid", where) for child in root if _local(child.tag) == "extension")
    return ArchiveMeta(core=_table(cores[0], "id", where), extensions=extensions)


def _parse_xml(data: bytes, where: str) -> Element:
    try:
        root: Element = safe_fromstring(data)
        return root
    except EntitiesForbidden:
        raise SourceError(f"{where}: refused: XML entity declarations are not allowed") from None
    except DTDForbidden:
        raise SourceError(f"{where}: refused: XML document type declarations are not allowed") from None
    except ExternalReferenceForbidden:
        raise SourceError(f"{where}: refused: XML external references are not allowed") from None
    except DefusedXmlException as exc:
        raise SourceError(f"{where}: refused: unsafe XML ({one_line(exc)})") from None
    except (ParseError, ValueError) as exc:
        raise SourceError(f"{where}: malformed XML ({one_line(exc)})") from None


def _local(tag: Any) -> str:
    """An element's name without its namespace (meta.xml files use it or not)."""
    return str(tag).rsplit("}", 1)[-1]


def _table(element: Element, key_tag: str, where: str) -> TableSpec:
    kind = _local(element.tag)
    row_type = (element.get("rowType") or "").strip()
    if not row_type:
        raise SourceError(f"{where}: <{kind}> has no rowType")
    locations = tuple(
        (loc.text or "").strip()
        for files in element
        if _local(files.tag) == "files"
        for loc in files
        if _local(loc.tag) == "location"
    )
    if not locations or not all(locations):
        raise SourceError(f"{where}: <{kind} rowType={term_name(row_type)}> lists no data file")
    keys = [child for child in element if _local(child.tag) == key_tag]
    key_index = _index(keys[0], where) if keys else None
    fields = tuple(_field(child, where) for child in element if _local(child.tag) == "field")
    return TableSpec(row_type, locations, _dialect(element, where), key_index, fields)


def _dialect(element: Element, where: str) -> Dialect:
    delimiter = _unescape(element.get("fieldsTerminatedBy", ","))
    if len(delimiter) != 1:
        raise SourceError(f"{where}: fieldsTerminatedBy {delimiter!r} is not one character")
    quote = _unescape(element.get("fieldsEnclosedBy", '"'))
    if len(quote) > 1:
        raise SourceError(f"{where}: fieldsEnclosedBy {quote!r} is not one character")
    header = element.get("ignoreHeaderLines", "0").strip() or "0"
    if not header.isdigit():
        raise SourceError(f"{where}: ignoreHeaderLines {header!r} is not a number")
    return Dialect(
        encoding=check_encoding(element.get("encoding", "").strip() or "UTF-8", where),
        delimiter=delimiter,
        quotechar=quote or None,
        terminator=_unescape(element.get("linesTerminatedBy", "\n")) or "\n",
        header_lines=int(header),
    )


def _field(element: Element, where: str) -> FieldSpec:
    term = (element.get("term") or "").strip()
    if not term:
        raise SourceError(f"{where}: <field> without a term")
    index = _index(element, where) if element.get("index") is not None else None
    return FieldSpec(name=canonical_column(term), index=index, default=element.get("default"))


def _index(element: Element, where: str) -> int:
    value = (element.get("index") or "").strip()
    if not value.isdigit():
        raise SourceError(f"{where}: <{_local(element.tag)}> index {value!r} is not a column number")
    return int(value)


def _unescape(value: str) -> str:
    """meta.xml writes tab and line ends as ``\\t``, ``\\n``, ``\\r``."""
    return _ESCAPE.sub(lambda m: _ESCAPES[m.group(1)], value)
