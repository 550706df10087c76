"""Subcommands of the `gradguard` CLI, one module each, each with ``register(subparsers)``.

A user's mistake ends as one line on stderr and exit code 2: handlers raise ``UsageError`` (or
the ``ValueError`` / ``FileNotFoundError`` the API raises for bad arguments) and ``gradguard.cli``
prints it. Nothing here imports torch.
"""

from __future__ import annotations

import os
import sysconfig
import traceback


class UsageError(Exception):
    """A mistake in what the user asked for: printed as one line, exit code 2, no traceback."""


def one_line(message: object) -> str:
    """A message on one line (newlines of a wrapped error become spaces)."""
    return " ".join(str(message).split())


def raised(what: str, exc: BaseException) -> UsageError:
    """``what`` raised ``exc`` in the user's own code: name the exception and the line it came from.

    The deepest frame outside the standard library, torch and gradguard is the user's line.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f" at {exc.filename}:{exc.lineno}"
    else:
        own = [f for f in frames if not _library_frame(f.filename)] or [f for f in frames if not _gradguard_frame(f.filename)]
        where = f" at {own[-1].filename}:{own[-1].lineno}" if own else ""
    detail = exc.msg if isinstance(exc, SyntaxError) else str(exc)
    return UsageError(f"{what} raised {type(exc).__name__}: {one_line(detail)}{where}")


def _gradguard_frame(filename: str) -> bool:
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return filename.startswith("<") or os.path.abspath(filename).startswith(package + os.sep)


def _library_frame(filename: str) -> bool:
    roots = {sysconfig.get_paths()[k] for k in ("stdlib", "purelib", "platlib")}
    return _gradguard_frame(filename) or any(os.path.abspath(filename).startswith(r + os.sep) for r in roots)
