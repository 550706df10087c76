"""The layering ARCHITECTURE.md describes: the core and the run record import nothing above them.

Checked on the source (every import statement, function-level ones included), so a lazy import
that runs back up fails here too. The one seam, ``Guard.findings()``/``report()`` handing their
RunData to ``gradguard._diagnose``, is listed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "gradguard"
CORE = ["_guard.py", "_grads.py", "_norms.py", "_grouping.py", "_policy.py", "_slots.py", "_stepinfo.py", "_monitor.py",
        "_recorder.py", "_rundata.py", "_events.py", "_history.py", "_store.py", "_metrics.py", "_runmeta.py", "_probes"]
ABOVE = ("gradguard.report", "gradguard._rules", "gradguard.integrations", "gradguard.lab", "gradguard.cli", "gradguard._cli", "gradguard.keras")
SEAMS = {("_guard.py", "gradguard._diagnose")}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "gradguard":  # `from gradguard import x` runs the package __init__
                found.update(f"gradguard.{alias.name}" if alias.name.startswith("_") else "gradguard" for alias in node.names)
    return found


def above(module: str) -> bool:
    return any(module == a or module.startswith(a + ".") for a in ABOVE)


def core_files() -> list[Path]:
    files = []
    for name in CORE:
        path = SRC / name
        files.extend(sorted(path.glob("*.py")) if path.is_dir() else [path])
    return files


@pytest.mark.parametrize("path", core_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_the_core_imports_nothing_above_it(path):
    bad = sorted(m for m in imports(path) if (m == "gradguard" or m == "gradguard._diagnose" or above(m)) and (path.name, m) not in SEAMS)
    assert not bad, f"{path.relative_to(SRC)} imports {bad}: the core must not import the package __init__ or a layer above it"


def test_the_record_is_framework_free():
    for name in ("_rundata.py", "_events.py", "_history.py", "_metrics.py"):
        mods = imports(SRC / name)
        assert not [m for m in mods if m.split(".")[0] in ("torch", "keras", "tensorflow")], name


def test_the_check_sees_a_lazy_import(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text("def f():\n    from gradguard.report import write_report\n    from gradguard import __version__\n")
    assert {"gradguard.report", "gradguard"} <= imports(path)
    assert above("gradguard.report.data") and not above("gradguard._clipping")
