"""`gradguard report RUN [RUN...] -o report.html`: the report of runs and lab results.

A thin shell over ``gradguard.report.write_report``. Several runs give one page that compares
them: their series overlaid, named by run (``--name`` relabels them), and findings per run. The format follows ``--format``, else the
output (``.md`` gives Markdown, and so does ``-o -``, which prints to stdout), else HTML.
"""

from __future__ import annotations

import argparse
import sys


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


def run(args: argparse.Namespace) -> int:
    fmt = args.format
    if fmt is None:
        # stdout is a terminal or a CI log: Markdown reads there, HTML does not
        fmt = "md" if args.output and (args.output == "-" or args.output.lower().endswith((".md", ".markdown"))) else "html"
    output = args.output or ("report.md" if fmt == "md" else "report.html")
    if output == "-":
        from gradguard.report._write import render

        sys.stdout.write(render(args.runs, fmt, args.title, names=args.name))
        return 0
    from gradguard.report import write_report

    path = write_report(args.runs, output, format=fmt, title=args.title, interactive=False if args.static else None, names=args.name)
    print(f"wrote {path}")
    return 0
