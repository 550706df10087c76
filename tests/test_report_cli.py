"""`gradguard report`: files, formats, stdout, and errors with the usual exit codes."""

from __future__ import annotations

import pytest

from gradguard.cli import main
from tests.test_report_data import make_store


@pytest.fixture
def store_file(tmp_path):
    make_store(tmp_path / "run.sqlite", steps=20, recurrent=False).close()
    return tmp_path / "run.sqlite"


def test_writes_html_by_default(store_file, tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(store_file)]) == 0
    assert (tmp_path / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert "wrote report.html" in capsys.readouterr().out


def test_markdown_from_the_suffix_the_flag_or_stdout(store_file, tmp_path, capsys):
    assert main(["report", str(store_file), "-o", str(tmp_path / "r.md")]) == 0
    assert (tmp_path / "r.md").read_text().startswith("# gradguard report")
    assert main(["report", str(store_file), "--format", "md", "-o", str(tmp_path / "r.txt"), "--title", "CI run"]) == 0
    assert (tmp_path / "r.txt").read_text().startswith("# CI run")
    capsys.readouterr()
    assert main(["report", str(store_file), "-o", "-"]) == 0
    assert "## Findings" in capsys.readouterr().out


def test_a_missing_or_foreign_file_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope.sqlite")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["report", str(tmp_path / "notes.txt"), "-o", "-"]) == 2
    assert "not a gradguard run store" in capsys.readouterr().err


def test_help_lists_the_command(capsys):
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    assert "RUN" in capsys.readouterr().out


def test_compares_runs_with_names_and_static_figures(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    make_store(tmp_path / "a.sqlite", steps=20, recurrent=False).close()
    make_store(tmp_path / "b.sqlite", steps=20, recurrent=False, seed=1).close()
    runs = [str(tmp_path / "a.sqlite"), str(tmp_path / "b.sqlite")]
    assert main(["report", *runs, "-o", str(tmp_path / "cmp.html"), "--name", "baseline", "--name", "clipped", "--static"]) == 0
    page = (tmp_path / "cmp.html").read_text()
    assert "<script" not in page and 'data:image/svg+xml' in page  # --static: SVG figures only
    assert "Run: baseline" in page and "Run: clipped" in page and '<h3>baseline</h3>' in page
    capsys.readouterr()
    assert main(["report", *runs, "-o", str(tmp_path / "x.html"), "--name", "only one"]) == 2
    err = capsys.readouterr().err
    assert "got 1 run name(s) for 2 run(s)" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_interactive_by_default_where_bokeh_is_installed(store_file, tmp_path):
    pytest.importorskip("bokeh")
    assert main(["report", str(store_file), "-o", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert '<figure class="interactive" data-figure="timeline' in page
