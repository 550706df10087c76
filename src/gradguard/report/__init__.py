"""Reports of a training run or of lab results: one self-contained HTML file, or Markdown.

    import gradguard.report
    gradguard.report.write_report("runs/x.sqlite", "report.html")
    gradguard.report.write_report(["runs/a.sqlite", "runs/b.sqlite"], "report.md", format="md")

On the command line: ``gradguard report RUN [RUN...] -o report.html [--format html|md]``;
several runs give one page that compares them (``--name`` labels each, ``--static`` draws SVG
figures instead of interactive ones).
"""

from gradguard.report._write import write_report

__all__ = ["write_report"]
