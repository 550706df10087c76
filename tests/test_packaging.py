"""The distribution: sdist and wheel build, pass `twine check`, and the wheel works on its own.

The wheel goes into a fresh virtual environment. Its dependencies (torch and the extras) are
borrowed from the running environment through a ``.pth`` line added after the install, so torch
is not downloaded again; the editable install of this checkout stays invisible there (its ``.pth``
hook lives in a directory that is merely appended to ``sys.path``, not processed as a site dir).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What the sdist is built from (the rest of the checkout may hold caches, runs and venvs).
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "MANIFEST.in", "src", "examples")

pytestmark = pytest.mark.slow


def run(cmd, cwd, env=None, timeout=300):
    proc = subprocess.run([str(c) for c in cmd], check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def clean_env() -> dict[str, str]:
    """No PYTHONPATH (it would put this checkout's src/ first) and one thread per process."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    if importlib.util.find_spec("build") is None:
        pytest.skip("needs the 'build' package: python -m pip install build")
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", ".ipynb_checkpoints"))
        elif path.exists():
            shutil.copy2(path, src / name)
    out = tmp_path_factory.mktemp("dist")
    # No isolation: the build backend (setuptools) is taken from this environment, not downloaded.
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, src], cwd=src, env=clean_env())
    return out


def test_build_gives_one_sdist_and_one_wheel_that_pass_twine_check(dist):
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in dist.iterdir())
    if importlib.util.find_spec("twine") is None:
        pytest.skip("needs twine: python -m pip install twine")
    proc = run([sys.executable, "-m", "twine", "check", "--strict", *wheels, *sdists], cwd=dist)
    assert proc.stdout.count("PASSED") == 2, proc.stdout
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = wheel.namelist()
        metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "gradguard/py.typed" in names
    assert not any(n.startswith(("tests/", "examples/")) for n in names)  # the wheel holds the package only
    assert "Provides-Extra: loggers" in metadata and "Provides-Extra: keras" in metadata


def test_the_installed_wheel_runs_the_smoke_demo(dist, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    wheel = next(dist.glob("*.whl"))
    env = clean_env()
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--disable-pip-version-check", "-q", wheel], cwd=tmp_path, env=env)
    # Borrow torch, numpy and the extras from this environment, behind the new one's own packages.
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path, env=env).stdout.strip())
    (site / "zz_borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    probe = run(
        [python, "-c", "import gradguard, importlib.metadata as m; print(gradguard.__file__); print(m.version('gradguard')); print(gradguard.__version__)"],
        cwd=tmp_path,
        env=env,
    )
    location, dist_version, module_version = probe.stdout.split()
    assert Path(location).resolve().is_relative_to(site.resolve()), f"imported {location}, not the wheel's copy in {site}"
    assert dist_version == module_version == wheel.name.split("-")[1]  # the version, in one place

    gradguard = env_dir / ("Scripts/gradguard.exe" if os.name == "nt" else "bin/gradguard")
    assert run([gradguard, "--version"], cwd=tmp_path, env=env).stdout.strip() == f"gradguard {dist_version}"
    demo = run([gradguard, "demo", "--preset", "smoke", "--workers", "1", "--out", tmp_path / "demo"], cwd=tmp_path, env=env, timeout=600)
    assert (tmp_path / "demo" / "summary.json").is_file(), demo.stderr[-2000:]
