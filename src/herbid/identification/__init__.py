"""Identification of new sheets with a trained bundle: one image, a batch, or thousands.

The API a caller (CLI, web app, notebook) needs::

    from herbid.identification import Identifier, identify_paths

    identifier = Identifier("runs/a")             # bundle or run folder, loaded once
    result = identifier.identify_bytes(data)      # one upload → Identification
    result.to_dict(); result.to_dwc_identification(source="sheet.jpg")
    identify_paths(identifier, ["sheets/"], "results.csv", fmt="csv")  # resumable batch
"""

from herbid.identification.batch import (
                                         FORMATS,
                                         BatchSummary,
                                         JournalError,
                                         find_images,
                                         identify_paths,
                                         write_output,
                                         write_records,
)
from herbid.identification.predict import Identification, Identifier, Thresholds, suggest

__all__ = ["BatchSummary", "FORMATS", "Identification", "Identifier", "JournalError", "Thresholds", "find_images",
           "identify_paths", "suggest", "write_output", "write_records"]
