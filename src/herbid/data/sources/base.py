"""The interface every source module implements, and the registry that picks one.

A source turns one location the user names (a folder, a Darwin Core Archive, a CSV
export, an API query) into :class:`~herbid.data.records.SourceRecord` objects, one per
image. It never raises on bad rows: it reports them to the :class:`ProblemLog` and goes
on. Modules register themselves with :func:`register_source`; :func:`open_source` picks
one by name or by asking each registered class whether it recognises the location.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from herbid.data.records import Problem, SourceRecord
from herbid.errors import UserError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp"})


class SourceError(UserError):
    """A location that cannot be read at all (as opposed to a bad row inside it)."""


class ProblemLog:
    """Collects every input that was dropped, quarantined, converted or reported."""

    def __init__(self) -> None:
        self.items: list[Problem] = []

    def add(self, stage: str, where: str, reason: str, action: str = "dropped", detail: str = "") -> None:
        self.items.append(Problem(stage=stage, where=str(where), reason=reason, action=action, detail=detail))

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Problem]:
        return iter(self.items)

    def by_reason(self) -> dict[str, int]:
        """Counts per reason category: the text before the first colon, if any."""
        counts: dict[str, int] = {}
        for item in self.items:
            category = item.reason.split(":", 1)[0]
            counts[category] = counts.get(category, 0) + 1
        return counts


class Source(ABC):
    """One kind of input. Subclasses set ``name`` and implement ``detect``/``records``."""

    #: Registry key, also written to the manifest's ``source`` column.
    name: ClassVar[str] = ""
    #: Detection order: lower runs first (specific formats before generic folders).
    priority: ClassVar[int] = 100

    def __init__(self, location: str | Path, **options: Any) -> None:
        self.location = str(location)
        self.options = options

    @classmethod
    @abstractmethod
    def detect(cls, location: str) -> bool:
        """Whether this module can read ``location`` (cheap: no full parse)."""

    @abstractmethod
    def records(self, problems: ProblemLog) -> Iterator[SourceRecord]:
        """Yield one record per image; report every row that cannot be one."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"


SOURCES: dict[str, type[Source]] = {}


def register_source(cls: type[Source]) -> type[Source]:
    """Class decorator: make a source module available by its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a name")
    SOURCES[cls.name] = cls
    return cls


def open_source(location: str | Path, kind: str | None = None, **options: Any) -> Source:
    """The source that reads ``location``: the one named by ``kind`` or the first that detects it."""
    _load_builtin_sources()
    location = str(location)
    if kind:
        try:
            return SOURCES[kind](location, **options)
        except KeyError:
            raise SourceError(f"unknown source kind {kind!r}; known: {', '.join(sorted(SOURCES))}") from None
    for cls in sorted(SOURCES.values(), key=lambda c: c.priority):
        if cls.detect(location):
            return cls(location, **options)
    if not Path(location).exists() and ":" not in location:
        raise SourceError(f"{location}: no such file or folder")
    raise SourceError(
        f"{location}: not a recognised source (known kinds: {', '.join(sorted(SOURCES))}); "
        "name one with --kind"
    )


BUILTIN_SOURCE_MODULES = ("image_folders", "dwca", "tabular", "portals")


def _load_builtin_sources() -> None:
    # Importing the modules runs their @register_source decorators.
    import importlib

    for module in BUILTIN_SOURCE_MODULES:
        importlib.import_module(f"herbid.data.sources.{module}")


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
