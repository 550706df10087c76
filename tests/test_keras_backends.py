"""gradguard.keras on other Keras backends and under tf.distribute, each in its own process.

Keras fixes its backend when it is imported, and TensorFlow its logical devices when it starts,
so these run as scripts (tests/_keras_*_job.py) with their own environment.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a module blocked or half-installed counts as missing
        return False


HAS_KERAS = installed("keras")
HAS_TF = installed("tensorflow")
needs_keras = pytest.mark.skipif(not HAS_KERAS, reason="needs Keras 3: python -m pip install 'gradguard[keras]'")
needs_tf = pytest.mark.skipif(not (HAS_KERAS and HAS_TF), reason="needs TensorFlow: python -m pip install 'gradguard[keras,tf]'")


def run_job(name: str, backend: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT / "src"), "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / name), *args], check=False, capture_output=True, text=True, env=env, timeout=280)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@needs_tf
@pytest.mark.slow
def test_mirrored_strategy_measures_the_all_reduced_gradients_and_skips_on_every_replica():
    run_job("_keras_mirrored_job.py", "tensorflow")


@needs_keras
@pytest.mark.slow
def test_torch_backend_custom_loop_and_fit():
    run_job("_keras_torch_job.py", "torch")


@needs_keras
def test_jax_backend_is_refused_with_a_clear_error():
    if not installed("jax"):
        pytest.skip("JAX is not installed; on JAX GuardOptimizer raises NotImplementedError (no stateless_apply yet)")
    code = "import keras; from gradguard.keras import GuardOptimizer; GuardOptimizer(keras.optimizers.Adam())"
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0 and "KERAS_BACKEND=tensorflow or torch" in proc.stderr
