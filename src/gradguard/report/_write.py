"""``write_report``: the one entry point (the CLI and ``Guard.report`` call it)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gradguard import _io
from gradguard._errors import check_choice
from gradguard.report.data import load

FORMATS = ("html", "md")


def render(stores_or_paths: Any, format: str = "html", title: str | None = None) -> str:
    """The report as a string; see ``write_report`` for the arguments."""
    format = check_choice("format", format, FORMATS)
    items = load(stores_or_paths)
    if format == "html":
        from gradguard.report import html

        return html.render(items, title)
    from gradguard.report import markdown

    return markdown.render(items, title)


def write_report(stores_or_paths: Any, path: str | os.PathLike, format: str = "html", title: str | None = None) -> Path:
    """Write a report of one or more runs and lab results to ``path``; return the path.

    Args:
        stores_or_paths: a ``RunStore``, a run store file (``*.sqlite``), a lab results
            directory, or a list of these; several give one section per run.
        path: the file to write (parent directories are created). Written atomically
            (``gradguard._io``), so an interrupted write never leaves half a report.
        format: "html" (one self-contained page that opens offline) or "md" (Markdown, for
            terminals and CI logs).
        title: the page title; by default built from the run names.
    """
    text = render(stores_or_paths, format, title)
    return _io.write_atomic(path, text)
