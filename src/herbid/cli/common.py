"""What every command module shares: the handler registry, the user-error type and JSON output.

Handlers register themselves with :func:`command` when their module is imported;
:func:`herbid.cli.main.main` looks them up in :data:`COMMANDS` by command name
(``"dataset build"``, ``"train"``, ...). Nothing heavy is imported here.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from herbid.errors import UserError

Handler = Callable[[argparse.Namespace], int]
#: Command name (``"dataset build"``, ``"train"``) → handler; filled as the command modules are imported.
COMMANDS: dict[str, Handler] = {}
MiB = 2**20


class CommandError(UserError):
    """A user-facing failure: printed as one line, exit code 1."""


def command(name: str) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of ``herbid NAME``."""
    def register(handler: Handler) -> Handler:
        COMMANDS[name] = handler
        return handler

    return register


def json_text(data: Any) -> str:
    """``data`` as indented JSON (non-ASCII kept, anything else via ``str``), newline-terminated."""
    return json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"


def print_json(data: Any) -> None:
    sys.stdout.write(json_text(data))


def add_bundle_argument(parser: argparse.ArgumentParser) -> None:
    """The positional ``bundle`` of the commands that use a trained model."""
    parser.add_argument("bundle", type=Path, help="model bundle or training run folder")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """``--engine``/``--address``: where a command's per-sheet work runs (:mod:`herbid.engine`)."""
    group = parser.add_argument_group("engine (where the work runs)")
    group.add_argument("--engine", choices=["local", "ray"], default="local",
                       help="local: this machine's processes (default); ray: a streaming Ray Data pipeline, on a "
                            "local Ray or a cluster (needs pip install 'herbid[scale]'; on a cluster, inputs and "
                            "outputs must be on storage every node sees)")
    group.add_argument("--address", default=None, metavar="ADDR",
                       help="Ray cluster to join with --engine ray (default: $RAY_ADDRESS, else start a local Ray)")


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """``engine``/``address`` keyword arguments from :func:`add_engine_arguments`'s options,
    checked before the command starts any work."""
    from herbid.engine import check_engine

    check_engine(args.engine, args.address)
    return {"engine": args.engine, "address": args.address}
