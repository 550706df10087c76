"""Collection rules for the whole repository.

Doctests (``--doctest-modules`` over ``src/gradguard``): the modules whose import needs an extra
that is not installed are left out, and so are the entry points.

The fast lane (``make test-fast``: ``-m "not slow and not distributed"``): test files that train
models end to end through a framework or the lab are marked ``slow`` as a whole here, so a
newcomer's quick check stays under a minute on 2 cores; ``make test`` runs everything.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

# module (relative to this directory) -> the packages its import needs
_NEEDS = {
    "src/gradguard/integrations/lightning.py": ("lightning",),
    "src/gradguard/integrations/huggingface.py": ("transformers", "accelerate"),
    "src/gradguard/integrations/wandb.py": ("wandb",),
    "src/gradguard/integrations/mlflow.py": ("mlflow",),
    "src/gradguard/keras/*": ("keras", "tensorflow"),
    "src/gradguard/lab/*": ("sklearn", "statsmodels"),
}


def _missing(packages: tuple[str, ...]) -> bool:
    return any(importlib.util.find_spec(p) is None for p in packages)


collect_ignore = ["src/gradguard/__main__.py"]
collect_ignore_glob = [path for path, packages in _NEEDS.items() if _missing(packages)]

# Files whose every test trains through Lightning, the HF Trainer, the lab, a browser or a benchmark.
SLOW_FILES = {
    "test_integrations_lightning.py",
    "test_integrations_hf.py",
    "test_lab_experiments.py",
    "test_lab_runner.py",
    "test_lab_cli.py",
    "test_report_browser.py",
    "test_benchmarks_smoke.py",
}


# Single tests of other files that take seconds (node id prefixes, parameters included).
SLOW_TESTS = (
    "tests/test_rnn_jacobian.py::test_iterative_methods_agree_with_dense[gru-power-2000]",
    "tests/test_rnn_jacobian.py::test_iterative_methods_agree_with_dense[rnn_relu-power-2000]",
    "tests/test_rnn_jacobian.py::test_iterative_methods_agree_with_dense[simple_tanh-power-2000]",
    "tests/test_rnn_jacobian.py::test_iterative_methods_agree_with_dense[lstm-power-2000]",
    "tests/test_rnn_jacobian.py::test_lanczos_needs_fewer_sweeps_than_power_iteration",
    "tests/test_inspect_locate.py::test_inspect_cli_prints_the_table_and_findings",
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        slow = Path(str(item.fspath)).name in SLOW_FILES or item.nodeid.startswith(SLOW_TESTS)
        if slow and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)

