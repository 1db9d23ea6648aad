"""Scientific-name and collector normalisation."""

from __future__ import annotations

import pytest

from herbid.data.names import load_synonyms, normalize_collector, parse_scientific_name


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("Carex tonsa (Fernald) E.P.Bicknell", "Carex tonsa"),
        ("Forestiera eggersiana Krug & Urb.", "Forestiera eggersiana"),
        ("Viola mandshurica W.Becker var. ciliata Nakai", "Viola mandshurica var. ciliata"),
        ("Robinia hispida var. nana (Elliott) DC", "Robinia hispida var. nana"),
        ("Anemone_canadensis", "Anemone canadensis"),
        ("CAREX TONSA", "Carex tonsa"),
        ("Alnus viridis (Chaix) DC.25", "Alnus viridis"),
        ("Carex × stipata", "Carex × stipata"),
        ("  Quercus   alba  L. ", "Quercus alba"),
        ("Impatiens capensis Meerb.", "Impatiens capensis"),
    ],
)
def test_authorship_is_stripped(raw: str, canonical: str) -> None:
    parsed = parse_scientific_name(raw)
    assert parsed.canonical == canonical
    assert parsed.genus == canonical.split()[0]
    assert parsed.is_species and not parsed.uncertain


@pytest.mark.parametrize("raw", ["Carex sp.", "Tamarix L", "Carex"])
def test_genus_only_is_not_a_species(raw: str) -> None:
    parsed = parse_scientific_name(raw)
    assert parsed.genus == raw.split()[0] and not parsed.is_species


@pytest.mark.parametrize("raw", [None, "", "   ", "12345", "V01", "(unknown)"])
def test_no_name(raw) -> None:
    assert parse_scientific_name(raw).canonical is None


def test_uncertain_identifications_are_flagged() -> None:
    assert parse_scientific_name("Carex cf. tonsa").uncertain
    assert parse_scientific_name("Carex aff. tonsa Fernald").canonical == "Carex tonsa"


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("T. A. Zanoni, D. Atha & M. Vives", "zanoni"),
        ("Zanoni, T.A.", "zanoni"),
        ("T.A. Zanoni", "zanoni"),
        ("Daniel Atha", "atha"),
        ("J. Müller and K. Smith", "muller"),
        ("M. Vives; T. Zanoni", "vives"),
        ("s.n.", None),
        ("Unknown", None),
        ("", None),
        (None, None),
    ],
)
def test_collector_key_is_the_primary_surname(raw, key) -> None:
    assert normalize_collector(raw) == key


def test_synonym_file_is_normalised(tmp_path) -> None:
    path = tmp_path / "syn.csv"
    path.write_text("name,accepted_name\nVandellia diffusa L.,Lindernia diffusa (L.) Wettst.\n"
                    "Cynoctonum mitreola (L.) Britton,Mitreola petiolata (J.F.Gmel.) Torr. & A.Gray\n,\n")
    assert load_synonyms(path) == {"Vandellia diffusa": "Lindernia diffusa",
                                   "Cynoctonum mitreola": "Mitreola petiolata"}
