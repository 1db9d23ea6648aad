"""Small synthetic herbarium sheets, so every stage can be tested without real data.

Real herbarium images are large, licensed and slow to fetch; the pipeline's tests need
something that *behaves* like them instead: a cream paper sheet, one pressed plant whose
leaf shape depends on the species (so a classifier can learn it), and the non-plant
clutter that real sheets carry (label, barcode, colour bar, ruler, stamp, tape), with the
ground truth of where each of them is (:class:`SheetLayout`) so that sheet-cleaning code
can be checked against it.

Nothing here is real: the binomials in :data:`SPECIES_NAMES` are invented, institution
codes start with ``SYN-`` and every occurrenceID says ``synthetic``.

Determinism matters more than beauty: a sheet is a pure function of its species and the
random generator it is given, and a collection is a pure function of its arguments, down
to the bytes of its JPEG files.

The package has one module per job, each importing only from those before it in this list:
:mod:`.geometry` and :mod:`.colour` (pixel and colour helpers), :mod:`.catalogue` (species,
collectors, sheet records), :mod:`.layout` (style, placement, ground truth), :mod:`.plant`
and :mod:`.clutter` (what is drawn), :mod:`.sheet` (one whole sheet) and :mod:`.writer` (a
collection on disk); :mod:`.archive` (a Darwin Core Archive of any size, no images) stands
apart. Every public name is re-exported here.
"""

from __future__ import annotations

from herbid.data.synthetic.archive import ArchiveSummary, write_dwca
from herbid.data.synthetic.catalogue import (
    COUNTRIES,
    INSTITUTIONS,
    SPECIES,
    SPECIES_NAMES,
    SYNTHETIC_LABEL,
    Arrangement,
    LeafShape,
    SyntheticSpecies,
    collector_name,
    species_index,
)
from herbid.data.synthetic.colour import RGB
from herbid.data.synthetic.geometry import Box
from herbid.data.synthetic.layout import BarcodePlace, ColourBarPlace, LabelCorner, SheetLayout, SheetStyle
from herbid.data.synthetic.sheet import render_sheet
from herbid.data.synthetic.writer import CSV_COLUMNS, LAYOUTS, make_synthetic_collection, sheet_rng

__all__ = [
    "COUNTRIES",
    "CSV_COLUMNS",
    "INSTITUTIONS",
    "LAYOUTS",
    "RGB",
    "SPECIES",
    "SPECIES_NAMES",
    "SYNTHETIC_LABEL",
    "ArchiveSummary",
    "Arrangement",
    "BarcodePlace",
    "Box",
    "ColourBarPlace",
    "LabelCorner",
    "LeafShape",
    "SheetLayout",
    "SheetStyle",
    "SyntheticSpecies",
    "collector_name",
    "make_synthetic_collection",
    "render_sheet",
    "sheet_rng",
    "species_index",
    "write_dwca",
]
