"""Reports of a training run or of lab results: one self-contained HTML file, or Markdown.

    import gradguard.report
    gradguard.report.write_report("runs/x.sqlite", "report.html")
    gradguard.report.write_report(["runs/a.sqlite", "runs/b.sqlite"], "report.md", format="md")

On the command line: ``gradguard report RUN [RUN...] -o report.html [--format html|md]``.
"""

from gradguard.report._write import write_report

__all__ = ["write_report"]
