"""The ``herbid`` command: the top-level parser, dispatch and error handling.

The commands live in one module per group (:mod:`~herbid.cli.dataset`,
:mod:`~herbid.cli.training`, :mod:`~herbid.cli.curation`), each with its parsers next
to its handlers; importing them registers the handlers in :data:`COMMANDS`. Heavy
libraries (torch, pandas) are imported inside the command that needs them, so
``herbid --help`` is fast and never imports torch. ``main(argv)`` returns an exit code,
so tests call it directly.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from herbid import __version__
from herbid.cli import curation, dataset, training
from herbid.cli.common import COMMANDS, CommandError, Handler, command, print_json
from herbid.errors import UserError

__all__ = ["COMMANDS", "CommandError", "Handler", "build_parser", "command", "main", "print_json", "run"]


def build_parser() -> argparse.ArgumentParser:
    """The whole ``herbid`` parser: each command group adds its own subcommands."""
    parser = argparse.ArgumentParser(
        prog="herbid",
        description="Identify plant species from herbarium sheet images (after Carranza-Rojas et al. 2017).",
    )
    parser.add_argument("--version", action="version", version=f"herbid {__version__}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in (dataset, training, curation):
        group.add_parsers(top)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``herbid ARGV`` and return its exit code (user errors: one line, exit 1; bugs: traceback, exit 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    name = f"{args.command} {args.subcommand}" if getattr(args, "subcommand", None) else args.command
    try:
        return COMMANDS[name](args)
    except KeyboardInterrupt:
        print("herbid: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except MemoryError:
        # Nothing is imported here: after a MemoryError even an import can fail again.
        print("herbid: error: out of memory; try a smaller --batch-size or fewer --workers", file=sys.stderr)
        return 1
    except Exception as exc:
        if not _is_user_error(exc, args):
            traceback.print_exc()
            print(f"herbid: internal error (a bug in herbid {__version__}, not in your input); please report it "
                  "to the herbid maintainers with the command you ran and the traceback above", file=sys.stderr)
            return 2
        print(f"herbid: error: {exc}", file=sys.stderr)
        return 1


def _is_user_error(exc: Exception, args: argparse.Namespace) -> bool:
    """A :class:`UserError`, or the OS saying a path the user named cannot be read.

    Deliberately not every ``ValueError``/``FileNotFoundError``: those raised inside
    herbid about its own files are bugs and keep their traceback.
    """
    if isinstance(exc, UserError):
        return True
    if isinstance(exc, OSError) and exc.filename is not None:
        failed = Path(os.fsdecode(exc.filename)).absolute()
        return any(failed == named or named in failed.parents for named in _named_paths(args))
    return False


def _named_paths(args: argparse.Namespace) -> list[Path]:
    values: list[Any] = []
    for value in vars(args).values():
        values.extend(value if isinstance(value, list) else [value])
    return [Path(value).absolute() for value in values if isinstance(value, (str, Path)) and value]


def run() -> None:
    """The console script: ``herbid`` with ``sys.argv``."""
    sys.exit(main())


if __name__ == "__main__":
    run()
