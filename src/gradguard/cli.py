"""The `gradguard` command: a thin shell over the Python API.

Each subcommand lives in ``gradguard._cli.<name>`` and registers itself with ``register``; its
heavy imports (torch, the lab, plotting) happen inside its handler, so ``gradguard --help`` and
``gradguard --version`` never import torch.

Exit codes: 0 success; 1 the command ran and found a failure (a lab job failed, ``inspect``
found a finding at or above ``--fail-on``) or an optional dependency is missing; 2 a usage
error, reported as one line on stderr that says what was wrong and how to fix it; 130
interrupted (Ctrl-C); 141 the reader of stdout went away (``| head``), silently. A bug in
gradguard itself still shows its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from gradguard._cli import UsageError, one_line
from gradguard._errors import MissingDependencyError
from gradguard._version import __version__

# Subcommand modules, in the order `gradguard --help` lists them.
COMMANDS = ("demo", "lab", "inspect", "report")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage itself is one `--help` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gradguard",
        description="Show, diagnose and fix vanishing and exploding gradients in PyTorch training.",
    )
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
    where = " ".join(["gradguard", args.command] + ([args.lab_command] if getattr(args, "lab_command", None) else []))
    try:
        code = int(args.handler(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        # `gradguard lab list --json | head`: the reader has what it wanted. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        resume = ": rerun the same command to resume" if getattr(args, "resumable", False) else ""
        # a progress bar may have left the cursor mid-line on a terminal
        print(("\n" if sys.stderr.isatty() else "") + f"interrupted{resume}", file=sys.stderr)
        return 130
    except MissingDependencyError as exc:
        print(f"gradguard: {one_line(exc)}", file=sys.stderr)
        return 1
    except (UsageError, ValueError, FileNotFoundError) as exc:
        print(f"{where}: error: {one_line(exc)}", file=sys.stderr)
        return 2

