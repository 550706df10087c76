"""One argument check for the PyTorch clippers and their Keras twins: the same bad argument gets
the same error, word for word, from both (``_clipping/_args.py``, framework-free)."""

from __future__ import annotations

import ast
import math
import os
from pathlib import Path

import pytest

import gradguard as gg
from gradguard._clipping import _args

BAD = [
    ("ClipNorm", {"max_norm": 0.0}),
    ("ClipNorm", {"max_norm": "1"}),
    ("ClipNorm", {"max_norm": 1.0, "norm_type": "l3"}),
    ("ClipTensorNorm", {"max_norm": -1.0}),
    ("ClipValue", {"clip_value": math.nan}),
    ("AGC", {"clipping": 0.0}),
    ("AGC", {"eps": -1.0}),
    ("AGC", {"exclude": None}),
    ("AGC", {"exclude": [3]}),
    ("AutoClip", {"percentile": 101.0}),
    ("AutoClip", {"decay": 1.5}),
    ("AutoClip", {"exact_samples": -1}),
    ("AutoClip", {"low": 1.0, "high": 0.5}),
    ("AutoClip", {"low": 0.0}),
    ("AutoClip", {"bins_per_decade": 0}),
    ("ZClip", {"alpha": 1.0}),
    ("ZClip", {"z_thresh": 0.0}),
    ("ZClip", {"warmup_steps": 0}),
    ("ZClip", {"max_grad_norm": -1.0}),
    ("ZClip", {"mode": "zscores"}),
    ("ZClip", {"clip_option": "adaptive"}),
    ("ZClip", {"clip_factor": 0.0}),
]


def _error(make):
    try:
        make()
    except (TypeError, ValueError) as exc:
        return type(exc), str(exc)
    return None


@pytest.mark.parametrize("name, kwargs", BAD, ids=[f"{n}-{next(iter(k))}" for n, k in BAD])
def test_torch_and_keras_clippers_refuse_alike(name, kwargs):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    pytest.importorskip("keras", reason="needs Keras 3: python -m pip install 'gradguard[keras,tf]'")
    from gradguard.keras import _clippers as keras_clippers

    torch_error = _error(lambda: getattr(gg, name)(**kwargs))
    assert torch_error is not None, f"gg.{name}(**{kwargs}) accepted a bad argument"
    assert _error(lambda: getattr(keras_clippers, name)(**kwargs)) == torch_error


def test_good_arguments_are_stored_alike():
    pytest.importorskip("keras", reason="needs Keras 3")
    from gradguard.keras import _clippers as keras_clippers

    t, k = gg.ZClip(0.9, 3.0, 10, max_grad_norm=None, mode="percentile"), keras_clippers.ZClip(0.9, 3.0, 10, max_grad_norm=None, mode="percentile")
    for attr in ("alpha", "z_thresh", "warmup_steps", "max_grad_norm", "eps", "mode", "clip_option", "clip_factor", "skip_update_on_spike"):
        assert getattr(t, attr) == getattr(k, attr), attr
    t, k = gg.AutoClip(5.0, decay=0.99), keras_clippers.AutoClip(5.0, decay=0.99)
    assert (t.percentile, t.decay, t.exact_samples) == (k.percentile, k.decay, k.exact_samples) == (5.0, 0.99, 0)
    assert gg.AGC(exclude="head").exclude == keras_clippers.AGC(exclude="head").exclude == ("head",)


def test_the_checker_is_framework_free():
    tree = ast.parse(Path(_args.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "collections.abc", "typing", "gradguard._errors"}, imported
