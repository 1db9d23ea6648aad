"""The invented catalogue behind the synthetic collection: species, collectors,
institutions, countries, and the record (who, where, when) of every planned sheet."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from herbid.data.synthetic.colour import RGB

#: Marker used in identifiers and labels of everything this package makes.
SYNTHETIC_LABEL = "synthetic"

LeafShape = Literal[
    "ovate", "lanceolate", "serrate", "obovate", "linear", "orbicular", "deltoid",
    "cordate", "sagittate", "lobed", "palmate", "trifoliate", "pinnate", "pinnatifid",
]
Arrangement = Literal["alternate", "opposite", "whorled", "rosette", "tuft"]

INSTITUTIONS: tuple[str, ...] = ("SYN-A", "SYN-B", "SYN-C")
COUNTRIES: tuple[str, ...] = ("Costa Rica", "France", "Canada", "Brazil", "Japan", "Kenya")


# --------------------------------------------------------------------------- species


@dataclass(frozen=True)
class SyntheticSpecies:
    """How one invented species looks when pressed.

    Species differ in leaf *shape* first, then arrangement, leaf count and colour, so a
    classifier has a real (if easy) visual signal to learn.
    """

    genus: str
    epithet: str
    family: str
    authorship: str
    leaf: LeafShape
    arrangement: Arrangement
    #: Nodes on the stem (alternate/opposite/whorled) or leaves (rosette/tuft).
    count: int
    #: Leaf length as a fraction of the plant's height.
    leaf_length: float
    #: Petiole length as a fraction of the leaf length.
    petiole: float
    colour: RGB
    flowers: RGB | None = None

    @property
    def name(self) -> str:
        """The canonical binomial (``Genus epithet``)."""
        return f"{self.genus} {self.epithet}"

    @property
    def name_with_authorship(self) -> str:
        """The name as a label would write it, so that name normalisation has work to do."""
        return f"{self.name} {self.authorship}"

    @property
    def file_stem(self) -> str:
        """``Genus_epithet``, the folder/file-name form of the name."""
        return f"{self.genus}_{self.epithet}"


_OLIVE, _DARK, _YELLOW, _BLUE, _BROWN, _GREY = (
    (96, 112, 56), (58, 84, 46), (128, 134, 62), (66, 98, 84), (112, 96, 56), (104, 116, 92),
)
_YELLOW_FLOWER, _PURPLE_FLOWER, _WHITE_FLOWER = (200, 168, 78), (118, 72, 108), (214, 204, 170)

#: The invented species. The first entries span several genera and families, so that
#: even a small collection (``n_species=4``) has genus and family structure.
SPECIES: tuple[SyntheticSpecies, ...] = (
    SyntheticSpecies("Synthetica", "ovata", "Synthaceae", "Smith", "ovate", "alternate", 6, 0.30, 0.15, _OLIVE),
    SyntheticSpecies("Synthetica", "lanceolata", "Synthaceae", "(Doe) Roe", "lanceolate", "opposite", 5, 0.32, 0.05, _DARK),
    SyntheticSpecies("Fictaria", "lobata", "Synthaceae", "Poe & Loe", "lobed", "alternate", 4, 0.34, 0.45, _YELLOW),
    SyntheticSpecies("Placeholderia", "graminea", "Imaginaceae", "Fict.", "linear", "tuft", 9, 0.75, 0.0, _YELLOW),
    SyntheticSpecies("Mockia", "orbicularis", "Imaginaceae", "A.B.Author", "orbicular", "opposite", 7, 0.13, 0.12, _GREY, _YELLOW_FLOWER),
    SyntheticSpecies("Pseudoflora", "pinnata", "Artefactaceae", "Synth. ex Mock", "pinnate", "alternate", 4, 0.42, 0.12, _BLUE),
    SyntheticSpecies("Synthetica", "cordata", "Synthaceae", "Smith", "cordate", "alternate", 4, 0.30, 0.50, _DARK),
    SyntheticSpecies("Fictaria", "trifoliata", "Synthaceae", "(Roe) Doe", "trifoliate", "alternate", 5, 0.28, 0.35, _BROWN, _PURPLE_FLOWER),
    SyntheticSpecies("Placeholderia", "linearis", "Imaginaceae", "Fict.", "linear", "alternate", 14, 0.20, 0.0, _OLIVE),
    SyntheticSpecies("Mockia", "obovata", "Imaginaceae", "Poe", "obovate", "rosette", 8, 0.42, 0.10, _BLUE, _WHITE_FLOWER),
    SyntheticSpecies("Pseudoflora", "sagittata", "Artefactaceae", "Loe", "sagittate", "alternate", 4, 0.30, 0.40, _GREY),
    SyntheticSpecies("Simulanthus", "pinnatifidus", "Artefactaceae", "Smith & Doe", "pinnatifid", "rosette", 7, 0.48, 0.05, _OLIVE, _YELLOW_FLOWER),
    SyntheticSpecies("Synthetica", "serrata", "Synthaceae", "Roe", "serrate", "opposite", 4, 0.27, 0.10, _BLUE),
    SyntheticSpecies("Mockia", "deltoidea", "Imaginaceae", "(Smith) Poe", "deltoid", "alternate", 6, 0.22, 0.30, _DARK),
    SyntheticSpecies("Simulanthus", "verticillatus", "Artefactaceae", "Doe", "lanceolate", "whorled", 3, 0.24, 0.0, _BROWN),
    SyntheticSpecies("Fictaria", "palmata", "Synthaceae", "Mock", "palmate", "alternate", 3, 0.36, 0.55, _GREY),
)

#: Canonical binomials of :data:`SPECIES`, in species-index order.
SPECIES_NAMES: tuple[str, ...] = tuple(s.name for s in SPECIES)


def species_index(species: int) -> int:
    """Validate a species index (numpy integers welcome) against :data:`SPECIES`."""
    index = operator.index(species)
    if not 0 <= index < len(SPECIES):
        raise ValueError(f"species index {index} out of range 0..{len(SPECIES) - 1}")
    return index


# --------------------------------------------------------------------------- collectors & sheets


@dataclass(frozen=True)
class _Sheet:
    """One planned sheet of a collection: who, where, when, and which species."""

    species: int
    index: int
    number: int
    institution: str
    collector: str
    record_number: int
    event_date: str
    country: str

    @property
    def catalog_number(self) -> str:
        return f"{self.institution}-{self.number:06d}"


_SURNAME_HEADS = ("Ash", "Bram", "Cope", "Dell", "Elm", "Fern", "Glen", "Haw", "Ivy", "Jun", "Kest", "Larch", "Mead", "Nett", "Oak", "Pin")
_SURNAME_TAILS = ("grove", "ley", "wood", "ford", "by", "ton", "mere", "field", "well", "hurst", "combe", "stead")
_INITIALS = "ABCDEFGHJKLMNPRSTW"


def collector_name(k: int) -> str:
    """The ``k``-th invented collector, ``"A. Ashgrove"`` style.

    Surnames are letters only and unique per ``k``, because collector normalisation keys
    on the surname (digits would be stripped and merge everyone).
    """
    heads, tails = len(_SURNAME_HEADS), len(_SURNAME_TAILS)
    surname = _SURNAME_HEADS[k % heads] + _SURNAME_TAILS[(k // heads) % tails]
    rest = k // (heads * tails)
    while rest:
        surname += _SURNAME_TAILS[rest % tails]
        rest //= tails
    return f"{_INITIALS[(k * 7) % len(_INITIALS)]}. {surname}"


def _plan(n_species: int, per_species: int, collectors_per_species: int, seed: int, shared_collectors: bool) -> list[_Sheet]:
    """Metadata of every sheet. Collectors collect several sheets each (record numbers
    run on per collector); with ``shared_collectors`` neighbouring species share one
    collector, as real collectors rarely collect a single species."""
    rng = np.random.default_rng([seed, 7919])
    step = collectors_per_species - 1 if shared_collectors and collectors_per_species > 1 else collectors_per_species
    collector_ids = sorted({i * step + j for i in range(n_species) for j in range(collectors_per_species)})
    first_year = {c: int(rng.integers(1950, 2016)) for c in collector_ids}
    country = {c: COUNTRIES[int(rng.integers(len(COUNTRIES)))] for c in collector_ids}
    next_number = {c: int(rng.integers(100, 5000)) for c in collector_ids}
    sheets = []
    for species in range(n_species):
        for index in range(per_species):
            cid = species * step + index % collectors_per_species
            next_number[cid] += int(rng.integers(1, 6))
            year = first_year[cid] + int(rng.integers(0, 6))
            sheets.append(_Sheet(
                species=species,
                index=index,
                number=len(sheets) + 1,
                institution=INSTITUTIONS[int(rng.integers(len(INSTITUTIONS)))],
                collector=collector_name(cid),
                record_number=next_number[cid],
                event_date=f"{year:04d}-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}",
                country=country[cid],
            ))
    return sheets
