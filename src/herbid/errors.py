"""The exception types that mean "the user's input is wrong", not "herbid has a bug".

The CLI prints a :class:`UserError` as one line and exits 1; anything else is a bug and
keeps its traceback. This module imports nothing, so the CLI's error handler still works
after a ``MemoryError`` or a broken optional dependency.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with what the user gave herbid (a path, an option, a file's content).

    The message is one line that says what is wrong and, where it helps, what to do.
    Subclasses may also derive from a builtin (``ValueError``) for callers of the Python API.
    """


class InvalidOption(UserError, ValueError):
    """An option or argument value herbid cannot use (unknown name, out of range, wrong file)."""


class MissingInput(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class MissingExtra(UserError, ImportError):
    """An optional dependency a chosen feature needs is not installed (the message says how to add it)."""
