"""The `gradguard` command: a thin shell over the Python API.

Each subcommand lives in ``gradguard._cli.<name>`` and registers itself with ``register``; its
heavy imports (the lab, plotting) happen inside its handler, so ``gradguard --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gradguard._errors import MissingDependencyError

# Subcommand modules, in the order `gradguard --help` lists them.
COMMANDS = ("demo", "lab", "inspect", "report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradguard",
        description="Show, diagnose and fix vanishing and exploding gradients in PyTorch training.",
    )
    from gradguard import __version__

    parser.add_argument("--version", action="version", version=f"gradguard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"gradguard._cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except MissingDependencyError as exc:
        print(f"gradguard: {exc}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as exc:
        print(f"gradguard {args.command}: error: {exc}", file=sys.stderr)
        return 2
