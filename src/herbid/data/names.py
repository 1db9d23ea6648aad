"""Scientific names and collector names, normalised so that labels and groups compare.

Herbarium labels write the same taxon many ways (``Carex tonsa (Fernald) E.P.Bicknell``,
``Carex_tonsa``, ``CAREX TONSA``); the classifier needs one label per taxon, and the
bias-free split needs one key per collector. Both normalisers are deliberately simple,
rule-based and documented here rather than clever.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

#: Infraspecific rank markers kept in the canonical name (as GBIF's canonicalName does).
RANK_MARKERS: dict[str, str] = {
    "var.": "var.",
    "var": "var.",
    "subsp.": "subsp.",
    "subsp": "subsp.",
    "ssp.": "subsp.",
    "ssp": "subsp.",
    "f.": "f.",
    "forma": "f.",
    "subvar.": "subvar.",
}
#: Qualifiers that make an identification uncertain (``Carex cf. tonsa``).
UNCERTAIN_QUALIFIERS = frozenset({"cf.", "cf", "aff.", "aff", "?"})
_HYBRID = {"×", "x"}
_EPITHET = re.compile(r"^[a-zà-ÿ][a-zà-ÿ\-]*$")
_GENUS = re.compile(r"^[A-Za-zÀ-ÿ][a-zà-ÿ\-]+$")
# File-name suffixes such as the ``24`` in ``Carex tonsa (Fernald) E.P.Bicknell24``.
_TRAILING_DIGITS = re.compile(r"\d+$")


@dataclass(frozen=True)
class ParsedName:
    """A scientific name split into the parts herbid uses."""

    canonical: str | None
    genus: str | None
    uncertain: bool = False

    @property
    def is_species(self) -> bool:
        """True when the name goes down to species (a genus alone does not)."""
        return self.canonical is not None and " " in self.canonical


def parse_scientific_name(raw: str | None) -> ParsedName:
    """Strip authorship and formatting from a scientific name.

    >>> parse_scientific_name("Carex tonsa (Fernald) E.P.Bicknell").canonical
    'Carex tonsa'
    >>> parse_scientific_name("Viola mandshurica W.Becker var. ciliata Nakai").canonical
    'Viola mandshurica var. ciliata'
    """
    if raw is None:
        return ParsedName(None, None)
    text = unicodedata.normalize("NFC", str(raw)).replace("_", " ").strip()
    text = _TRAILING_DIGITS.sub("", text).strip()
    tokens = text.split()
    if not tokens:
        return ParsedName(None, None)
    if text.isupper():  # ALL-CAPS labels: only genus and epithet can be recovered safely
        tokens = [tokens[0].capitalize(), *(t.lower() for t in tokens[1:2])]
    genus_token = tokens[0]
    if not _GENUS.match(genus_token):
        return ParsedName(None, None)
    genus = genus_token.capitalize()
    parts = [genus]
    uncertain = False
    rest = tokens[1:]
    # species epithet, optionally preceded by a hybrid sign or an uncertainty qualifier
    while rest and (rest[0].lower() in UNCERTAIN_QUALIFIERS or rest[0] in _HYBRID):
        if rest[0].lower() in UNCERTAIN_QUALIFIERS:
            uncertain = True
        else:
            parts.append("×")
        rest = rest[1:]
    if rest and _EPITHET.match(rest[0]) and rest[0] not in {"sp.", "spp.", "sp", "spp"}:
        parts.append(rest[0])
        rest = rest[1:]
        # infraspecific epithets may follow the species authorship
        for i, token in enumerate(rest[:-1]):
            marker = RANK_MARKERS.get(token.lower())
            if marker and _EPITHET.match(rest[i + 1]):
                parts.extend([marker, rest[i + 1]])
                break
    elif parts[-1] == "×":
        parts.pop()
    canonical = " ".join(parts)
    return ParsedName(canonical, genus, uncertain)


def normalize_scientific_name(raw: str | None) -> str | None:
    """The canonical name (no authorship), or ``None`` when nothing usable is left."""
    return parse_scientific_name(raw).canonical


_NO_COLLECTOR = {"", "unknown", "anonymous", "anon", "s.n.", "sn", "none", "unk", "collector unknown"}
_PERSON_SPLIT = re.compile(r"\s*(?:;|&|\||\band\b|\bet\b|\bwith\b|\bcon\b|\by\b)\s*", re.IGNORECASE)


def normalize_collector(raw: str | None) -> str | None:
    """A grouping key for the *primary* collector of a sheet.

    Takes the first person of a team (``T. A. Zanoni, D. Atha & M. Vives`` → ``zanoni``),
    drops initials, accents and case, and returns the surname. Both ``Zanoni, T.A.`` and
    ``T. A. Zanoni`` give ``zanoni``. ``None`` means unknown.
    """
    if raw is None:
        return None
    text = unicodedata.normalize("NFKD", str(raw))
    text = "".join(c for c in text if not unicodedata.combining(c)).strip().lower()
    if text in _NO_COLLECTOR:
        return None
    # "Surname, I." and "I. Surname, J. Other" both keep the surname before the comma.
    first = _PERSON_SPLIT.split(text)[0].split(",")[0]
    words = _name_words(first)
    if not words:
        return None
    return words[-1]


def _name_words(text: str) -> list[str]:
    cleaned = re.sub(r"[^a-z\s\-']", " ", text.replace(".", ". "))
    return [w for w in cleaned.split() if len(w) > 1]


def load_synonyms(path: str | Path) -> dict[str, str]:
    """Read a ``name,accepted_name`` CSV into a map of canonical names.

    A header row is optional; both columns are normalised like any other name.
    """
    mapping: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8-sig") as handle:
        for row in csv.reader(handle):
            if len(row) < 2 or not row[0].strip():
                continue
            if row[0].strip().lower() in {"name", "synonym"}:
                continue
            name, accepted = normalize_scientific_name(row[0]), normalize_scientific_name(row[1])
            if name and accepted:
                mapping[name] = accepted
    return mapping
