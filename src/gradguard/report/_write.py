"""``write_report``: the one entry point (the CLI and ``Guard.report`` call it)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gradguard import _io
from gradguard._errors import check_choice
from gradguard.report.data import RunData, load

FORMATS = ("html", "md")


def render(stores_or_paths: Any, format: str = "html", title: str | None = None, interactive: bool | None = None, names: Sequence[str] | None = None) -> str:
    """The report as a string; see ``write_report`` for the arguments."""
    format = check_choice("format", format, FORMATS)
    items = load(stores_or_paths)
    if names:
        _rename(items, names)
    if format == "html":
        from gradguard.report import html

        return html.render(items, title, interactive=interactive)
    from gradguard.report import markdown

    return markdown.render(items, title)


def _rename(items: list, names: Sequence[str]) -> None:
    runs = [x for x in items if isinstance(x, RunData)]
    if len(names) != len(runs):
        raise ValueError(f"got {len(names)} run name(s) for {len(runs)} run(s); give one name per run, in the order of the runs.")
    for run, name in zip(runs, names):
        run.meta["name"] = str(name)


def write_report(stores_or_paths: Any, path: str | os.PathLike, format: str = "html", title: str | None = None, interactive: bool | None = None, names: Sequence[str] | None = None) -> Path:
    """Write a report of one or more runs and lab results to ``path``; return the path.

    Args:
        stores_or_paths: a ``RunStore``, a run store file (``*.sqlite``), a lab results
            directory, or a list of these; several give one section per run.
        path: the file to write (parent directories are created). Written atomically
            (``gradguard._io``), so an interrupted write never leaves half a report.
        format: "html" (one self-contained page that opens offline) or "md" (Markdown, for
            terminals and CI logs).
        title: the page title; by default built from the run names.
        interactive: HTML only. True: figures with zoom, hover and legend toggles (needs Bokeh,
            the ``report`` extra; its script is inlined, about 1.3 MB); False: static SVG
            figures (a small file); None (default): interactive where Bokeh is installed.
        names: one label per run, in order, for the legends and headings (default: each
            run's recorded name, else its file name).
    """
    text = render(stores_or_paths, format, title, interactive=interactive, names=names)
    return _io.write_atomic(path, text)
