"""The Keras and TensorFlow examples run at tiny size, and each gradguard version keeps what its
native twin loses: the native loops end with NaN weights after the NaN batch, the guarded ones
skip that step and train on."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
pytest.importorskip("tensorflow", reason="needs TensorFlow: python -m pip install 'gradguard[keras,tf]'")
keras = pytest.importorskip("keras", reason="needs Keras 3: python -m pip install 'gradguard[keras,tf]'")
if keras.backend.backend() != "tensorflow":  # pragma: no cover
    pytest.skip("the examples run on the tensorflow backend", allow_module_level=True)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PAIRS = [("tf_gradienttape_clip", "tf_gradienttape_guard"), ("keras_fit_clipnorm", "keras_fit_guard")]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("native, guarded", PAIRS, ids=[p[1] for p in PAIRS])
def test_example_pair(native, guarded, tmp_path):
    plain = load(native)
    result = plain.main(plain.Config(steps=24))
    assert not result["weights_finite"]  # the NaN batch reached the weights
    guard = load(guarded)
    result = guard.main(guard.Config(steps=24, out=tmp_path))
    assert result["weights_finite"] and result["skipped"] == 1
    assert result["report"].exists() and "NONFINITE" in result["report"].read_text()
    assert list(tmp_path.glob("*.sqlite"))
