"""`gradguard report RUN [RUN...] -o report.html`: the report of runs and lab results.

A thin shell over ``gradguard.report.write_report``. Several runs give one page that compares
them: their series overlaid, named by run (``--name`` relabels them), and findings per run. The format follows ``--format``, else the
output (``.md`` gives Markdown, and so does ``-o -``, which prints to stdout), else HTML.

An input that cannot be read (a damaged store, a store that refers to a module it does not list,
a ``result.json`` of another shape) is a usage error naming the file. Set GRADGUARD_DEBUG=1 to
see the traceback instead, e.g. to report a bug when gradguard wrote the file itself.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from gradguard._cli import UsageError, one_line


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="write an HTML (or Markdown) report of training runs or lab results",
        description="Write one self-contained HTML file (opens offline) or Markdown, with one section per run.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="a run store file (*.sqlite) or a lab results directory")
    p.add_argument("-o", "--output", default=None, help="file to write (default report.html, or report.md with --format md); '-' prints Markdown to stdout")
    p.add_argument("--format", choices=("html", "md"), default=None, help="html (default) or md (Markdown, for terminals and CI logs)")
    p.add_argument("--title", default=None, help="page title (default: built from the run names)")
    p.add_argument("--name", action="append", default=None, metavar="NAME", help="label of a run in legends and headings; repeat once per run, in order (default: the recorded run name)")
    p.add_argument("--static", action="store_true", help="static SVG figures instead of interactive ones (a much smaller file; no zoom or hover)")
    p.set_defaults(handler=run)


def check_output(output: str) -> None:
    """Refuse an output that cannot be a file before any work is done."""
    path = Path(output)
    if path.is_dir():
        raise UsageError(f"-o {output!r} is a directory; name a file in it, e.g. -o {str(path / 'report.html')!r}.")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"-o {output!r}: {str(parent)!r} is a file, not a directory; choose another output path.")
            break


def run(args: argparse.Namespace) -> int:
    fmt = args.format
    if fmt is None:
        # stdout is a terminal or a CI log: Markdown reads there, HTML does not
        fmt = "md" if args.output and (args.output == "-" or args.output.lower().endswith((".md", ".markdown"))) else "html"
    output = args.output or ("report.md" if fmt == "md" else "report.html")
    if output != "-":
        check_output(output)
    try:
        if output == "-":
            from gradguard.report._write import render

            sys.stdout.write(render(args.runs, fmt, args.title, names=args.name))
            return 0
        from gradguard.report import write_report

        path = write_report(args.runs, output, format=fmt, title=args.title, interactive=False if args.static else None, names=args.name)
    except Exception as exc:
        error = _unreadable_input(exc, output)
        if error is None or os.environ.get("GRADGUARD_DEBUG"):
            raise
        raise error from None
    print(f"wrote {path}")
    return 0


# What reading a damaged or foreign file raises, from SQLite, JSON and the readers' indexing.
def _reading_errors() -> tuple[type[BaseException], ...]:
    import sqlite3

    return (sqlite3.Error, IndexError, KeyError, AttributeError, TypeError, ValueError, OSError)


def _unreadable_input(exc: Exception, output: str) -> UsageError | None:
    """A one-line error for ``exc`` when it was raised while reading an input (while inside
    ``gradguard.report.data.load``) or writing the output; None for anything else (a bug)."""
    if isinstance(exc, UsageError):
        return exc
    if not isinstance(exc, _reading_errors()):
        return None
    source, innermost = None, None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        code = frame.f_code
        if code.co_name == "load" and code.co_filename.endswith(os.path.join("report", "data.py")):
            source = frame.f_locals.get("item")
        if source is not None:
            for name in ("path", "file", "result_file", "job_file"):
                value = frame.f_locals.get(name)
                if isinstance(value, (str, os.PathLike)):
                    innermost = value
    if source is None:
        if isinstance(exc, OSError) and exc.filename is not None:  # writing the report
            return UsageError(f"cannot write {output!r}: {exc.strerror or exc}.")
        return None
    where = str(innermost or source)
    if isinstance(exc, (ValueError, FileNotFoundError)) and where in str(exc):
        return UsageError(one_line(exc))  # the reader's own clear message, which names the file
    from gradguard._version import __version__

    return UsageError(
        f"cannot read {where!r}: {type(exc).__name__}: {one_line(exc)}. The file is damaged or was not written by "
        f"gradguard {__version__}; if gradguard wrote it and it was not edited, rerun with GRADGUARD_DEBUG=1 and report the traceback."
    )
