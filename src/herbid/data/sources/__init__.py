"""Source modules: folders, Darwin Core Archives, CSV exports, iDigBio and GBIF."""

from herbid.data.sources.base import SOURCES, ProblemLog, Source, SourceError, open_source, register_source

__all__ = ["SOURCES", "ProblemLog", "Source", "SourceError", "open_source", "register_source"]
