"""Every user error of the CLI: one line on stderr that says what and where, exit code 2, no traceback.

Run in process through ``gradguard.cli.main`` (fast), except what needs a real process: a closed
stdout, and the imports that `--help` and `--version` make.
"""

from __future__ import annotations

import itertools
import json
import re
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import gradguard
from gradguard.cli import main
from tests.test_report_data import make_store

SRC = str(Path(gradguard.__file__).resolve().parents[1])  # the sources under test, for subprocesses
_names = itertools.count()

MODELS = """
import torch
from torch import nn

def net():
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))

def needs(width):
    return nn.Linear(width, 2)

def boom():
    raise RuntimeError("factory exploded")

def not_a_module():
    return 3

value = 5

class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 2)

    def forward(self, x):
        raise ValueError("forward exploded")

def broken():
    return Broken()

def deep_sigmoid():
    return nn.Sequential(*[m for _ in range(20) for m in (nn.Linear(16, 16), nn.Sigmoid())])

def first_weight():
    return nn.Linear(4, 1)
"""


def run_cli(argv, capsys):
    """(exit code, stdout, stderr) of one in-process call; argparse's exit counts too."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_usage_error(code, err, *needles):
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


@pytest.fixture
def models(tmp_path, monkeypatch):
    """A fresh module name (import caches by name) holding MODELS, importable from the cwd."""
    name = f"user_models_{next(_names)}"
    (tmp_path / f"{name}.py").write_text(MODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


# ------------------------------------------------------------------ inspect
INSPECT_CASES = [
    ("boom", ["--input-shape", "2", "4"], ["raised RuntimeError: factory exploded", ".py:12"]),
    ("needs", ["--input-shape", "2", "4"], ["needs arguments (width)", "calls it with none"]),
    ("value", ["--input-shape", "2", "4"], ["is an object of type int", "not a function or class"]),
    ("not_a_module", ["--input-shape", "2", "4"], ["returned int, not an nn.Module"]),
    ("broken", ["--input-shape", "2", "4"], ["forward pass", "raised ValueError: forward exploded", ".py:25"]),
    ("net", ["--input-shape", "2", "5"], ["forward pass", "shape [2, 5]", "check --input-shape"]),
    ("net", ["--input-shape", "2", "-4"], ["--input-shape", "at least 1, got -4"]),
    ("net", ["--input-shape", "2", "4", "--classes", "7"], ["--classes 7 exceeds the 3 outputs", "--classes 3 or fewer"]),
    ("net", ["--input-shape", "2", "4", "--classes", "0"], ["--classes", "at least 1, got 0"]),
    ("missing_attr", ["--input-shape", "2", "4"], ["has no attribute 'missing_attr'"]),
]


@pytest.mark.parametrize("attr, extra, needles", INSPECT_CASES, ids=[f"{c[0]}-{'-'.join(c[1][2:]) or 'plain'}" for c in INSPECT_CASES])
def test_inspect_user_errors(models, capsys, attr, extra, needles):
    code, _, err = run_cli(["inspect", f"{models}:{attr}", *extra], capsys)
    assert_usage_error(code, err, *needles)


@pytest.mark.parametrize(
    "source, needles",
    [
        ("def f(:\n", ["raised SyntaxError", ".py:1"]),
        ("raise RuntimeError('import exploded')\n", ["raised RuntimeError: import exploded", ".py:1"]),
        ("import a_package_that_is_not_installed\n", ["raised ModuleNotFoundError", "a_package_that_is_not_installed"]),
    ],
    ids=["syntax-error", "raises-on-import", "imports-a-missing-package"],
)
def test_inspect_on_a_module_that_cannot_be_imported(tmp_path, monkeypatch, capsys, source, needles):
    name = f"bad_module_{next(_names)}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    code, _, err = run_cli(["inspect", f"{name}:make", "--input-shape", "2", "4"], capsys)
    assert_usage_error(code, err, f"importing '{name}'", *needles)


def test_inspect_unknown_module_and_missing_colon(models, capsys):
    code, _, err = run_cli(["inspect", "no_such_module_anywhere:make", "--input-shape", "2"], capsys)
    assert_usage_error(code, err, "cannot import 'no_such_module_anywhere'", "PYTHONPATH")
    code, _, err = run_cli(["inspect", models, "--input-shape", "2"], capsys)
    assert_usage_error(code, err, "expected MODULE:FACTORY")


def test_inspect_fail_on_sets_the_exit_code(models, capsys):
    target = [f"{models}:deep_sigmoid", "--input-shape", "8", "16"]
    code, out, err = run_cli(["inspect", *target], capsys)
    assert "ERROR VANISHING_GRADIENT" in out
    assert code == 1 and "--fail-on error" in err  # the default: an ERROR finding fails
    assert run_cli(["inspect", *target, "--fail-on", "never"], capsys)[0] == 0
    assert run_cli(["inspect", *target, "--fail-on", "warning"], capsys)[0] == 1
    healthy = [f"{models}:net", "--input-shape", "4", "4"]
    assert run_cli(["inspect", *healthy, "--fail-on", "error"], capsys)[0] == 0


def test_inspect_seed_seeds_before_the_factory(models, capsys):
    def weight(seed):
        code, out, _ = run_cli(["inspect", f"{models}:first_weight", "--input-shape", "2", "4", "--seed", str(seed), "--json", "--fail-on", "never"], capsys)
        assert code == 0
        return json.loads(out)["layers"][0]["weight_std"]

    assert weight(1) == weight(1)
    assert weight(1) != weight(2)


# ------------------------------------------------------------------ report
@pytest.fixture
def stores(tmp_path):
    good = tmp_path / "good.sqlite"
    make_store(good, steps=20, recurrent=False).close()
    db = sqlite3.connect(good)
    page = db.execute("PRAGMA page_size").fetchone()[0]
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'steps'").fetchone()[0]
    db.close()
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(good.read_bytes())
    with open(corrupt, "r+b") as fh:  # the meta table stays readable, the steps table does not
        fh.seek((root - 1) * page)
        fh.write(b"\xff" * page)
    dangling = tmp_path / "dangling.sqlite"
    dangling.write_bytes(good.read_bytes())
    db = sqlite3.connect(dangling)
    db.execute("DELETE FROM modules WHERE id = (SELECT MAX(id) FROM modules)")
    db.commit()
    db.close()
    bad_meta = tmp_path / "bad_meta.sqlite"
    bad_meta.write_bytes(good.read_bytes())
    db = sqlite3.connect(bad_meta)
    db.execute("UPDATE meta SET value = '{not json' WHERE key = 'name'")
    db.commit()
    db.close()
    lab = tmp_path / "lab" / "clipping" / "quick"
    lab.mkdir(parents=True)
    (lab / "result.json").write_text(json.dumps({"experiment": "clipping", "preset": "quick", "verdict": "passed", "jobs": []}))
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_dir").mkdir()
    return tmp_path


REPORT_CASES = [
    (["corrupt.sqlite", "-o", "r.md"], ["cannot read", "corrupt.sqlite", "malformed"]),
    (["bad_meta.sqlite", "-o", "-"], ["cannot read", "bad_meta.sqlite", "JSONDecodeError"]),
    (["lab", "-o", "r.md"], ["cannot read", "result.json", "damaged"]),
    (["good.sqlite", "-o", "a_dir"], ["-o 'a_dir' is a directory", "a_dir/report.html"]),
    (["good.sqlite", "-o", "a_file/r.md"], ["'a_file' is a file, not a directory"]),
    (["nope.sqlite"], ["'nope.sqlite' does not exist"]),
    (["good.sqlite", "--format", "pdf"], ["invalid choice: 'pdf'"]),
]


@pytest.mark.parametrize("argv, needles", REPORT_CASES, ids=[c[0][0] + "-" + "-".join(c[0][1:]) for c in REPORT_CASES])
def test_report_user_errors(stores, monkeypatch, capsys, argv, needles):
    monkeypatch.chdir(stores)
    code, _, err = run_cli(["report", *argv], capsys)
    assert_usage_error(code, err, *needles)


def test_report_debug_shows_the_traceback(stores, monkeypatch):
    monkeypatch.chdir(stores)
    monkeypatch.setenv("GRADGUARD_DEBUG", "1")
    with pytest.raises(sqlite3.DatabaseError):
        main(["report", "corrupt.sqlite", "-o", "r.md"])


def test_a_store_with_a_dangling_module_id_reports_with_a_visible_placeholder(stores, monkeypatch, capsys):
    """The store reads a module id it does not list as '?<id>' (RunStore): the report is written
    and shows the placeholder, so the gap is visible rather than fatal or silent."""
    monkeypatch.chdir(stores)
    code, _, err = run_cli(["report", "dangling.sqlite", "-o", "r.md"], capsys)
    assert code == 0 and "Traceback" not in err
    assert re.search(r"\?\d+", (stores / "r.md").read_text())


def test_a_bug_in_the_report_still_shows_a_traceback(stores, monkeypatch):
    """Only what reading the inputs raises becomes a one-line error; a rendering bug does not."""
    from gradguard.report import markdown

    monkeypatch.chdir(stores)

    def broken(*args, **kwargs):
        raise IndexError("a bug in the renderer")

    monkeypatch.setattr(markdown, "render", broken)
    with pytest.raises(IndexError, match="a bug in the renderer"):
        main(["report", "good.sqlite", "-o", "r.md"])


# ------------------------------------------------------------------ lab
LAB_CASES = [
    (["--out", "a_file"], ["--out 'a_file' is a file"]),
    (["--out", "a_file/sub"], ["'a_file' is a file, not a directory"]),
    (["--set", "steps=-5"], ["--set steps=-5", "steps must be at least 1"]),
    (["--set", "steps=0"], ["steps must be at least 1"]),
    (["--set", "lr=0"], ["lr must be > 0"]),
    (["--set", "lr=nan"], ["lr must be a finite number"]),
    (["--workers", "0"], ["--workers must be at least 1"]),
    (["--seeds", "0"], ["--seeds must be at least 1"]),
    (["--set", "steps"], ["KEY=VALUE"]),
    (["--preset", "huge"], ["invalid choice: 'huge'"]),
]


@pytest.mark.parametrize("extra, needles", LAB_CASES, ids=["-".join(c[0]) for c in LAB_CASES])
def test_lab_run_user_errors(tmp_path, monkeypatch, capsys, extra, needles):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("x")
    argv = ["lab", "run", "clipping", "--device", "cpu", *extra]
    if "--out" not in extra:
        argv += ["--out", str(tmp_path / "results")]
    code, _, err = run_cli(argv, capsys)
    assert_usage_error(code, err, *needles)
    assert not (tmp_path / "results").exists()  # refused before any job ran


def test_ctrl_c_during_lab_run_exits_130_and_says_how_to_resume(tmp_path, monkeypatch, capsys):
    from gradguard._cli import lab

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lab, "run_plans", interrupted)
    code, _, err = run_cli(["lab", "run", "clipping", "--out", str(tmp_path)], capsys)
    assert code == 130
    assert err.strip() == "interrupted: rerun the same command to resume"


def _run_module(args, **kwargs):
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, *args], check=False, env=env, capture_output=kwargs.pop("capture_output", True), text=True, timeout=300, **kwargs)


def test_a_closed_stdout_is_silent():
    """`gradguard lab list --json | head`: the reader is gone before the first write."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = _run_module(["-m", "gradguard", "lab", "list", "--json"], stdout=write_end, stderr=subprocess.PIPE, capture_output=False)
    finally:
        os.close(write_end)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
    assert proc.stderr.strip() == ""
    assert proc.returncode == 141


def test_help_and_version_do_not_import_torch():
    probe = (
        "import sys\n"
        "from gradguard.cli import main\n"
        "for argv in (['--help'], ['--version'], ['lab', '--help'], ['inspect', '--help'], ['report', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO TORCH', file=sys.stderr)\n"
    )
    proc = _run_module(["-c", probe])
    assert proc.stderr.strip().splitlines()[-1] == "NO TORCH", proc.stderr
    assert "gradguard 0." in proc.stdout


def test_the_version_has_one_source():
    import gradguard
    from gradguard._version import __version__

    assert gradguard.__version__ == __version__
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'attr = "gradguard._version.__version__"' in pyproject
    assert f'version = "{__version__}"' not in pyproject


@pytest.mark.slow
def test_a_real_ctrl_c_during_a_parallel_lab_run(tmp_path):
    """SIGINT to the whole process group (what Ctrl-C sends) once a first job is written: exit
    130, the resume hint as the only line, no traceback from the runner or its workers, and the
    finished jobs kept for the rerun."""
    import signal
    import time

    out = tmp_path / "res"
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gradguard", "lab", "run", "clipping", "--out", str(out), "--device", "cpu", "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a shell may start us with SIGINT ignored
    )
    deadline = time.monotonic() + 240
    jobs = out / "clipping" / "quick" / "jobs"
    while not (jobs.is_dir() and any(jobs.glob("*.json"))) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if proc.poll() is not None:
        pytest.skip("the run finished before it could be interrupted")
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines()[-1] == "interrupted: rerun the same command to resume"
    assert any(jobs.glob("*.json"))
