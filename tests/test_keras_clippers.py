"""The Keras clippers agree with gradguard's PyTorch clippers on the same gradients, step by step.

Keras kernels are (in, out) where torch weights are (out, in): the torch side gets the
transposes, so AGC's output units are the same units on both sides.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow", reason="needs TensorFlow: python -m pip install 'gradguard[keras,tf]'")
keras = pytest.importorskip("keras", reason="needs Keras 3: python -m pip install 'gradguard[keras,tf]'")
if keras.backend.backend() != "tensorflow":  # pragma: no cover
    pytest.skip("these tests need Keras on tensorflow", allow_module_level=True)

import gradguard as gg
from gradguard.keras._clippers import resolve
from gradguard.keras._measure import measure

SHAPES = [(4, 3), (3,), (3, 2), (2,)]  # d0 kernel, d0 bias, d1 kernel, d1 bias (Keras layout)
TORCH_NAMES = ["d0.weight", "d0.bias", "d1.weight", "d1.bias"]


def keras_variables(rng):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d0"), keras.layers.Dense(2, name="d1")])
    for v, shape in zip(model.trainable_variables, SHAPES):
        v.assign(rng.normal(size=shape).astype("float32"))
    return model.trainable_variables


def to_torch(x):
    x = np.asarray(x)
    return torch.tensor(x.T.copy() if x.ndim == 2 else x.copy())


def from_torch(t):
    x = t.detach().numpy()
    return x.T if x.ndim == 2 else x


def run_both(clip_torch, steps, seed=0, keras_clip=None):
    """Clip the same gradient sets with the torch clipper and its Keras translation; yield both sides."""
    rng = np.random.default_rng(seed)
    variables = keras_variables(rng)
    kc = resolve(keras_clip if keras_clip is not None else clip_torch)
    host = keras.optimizers.SGD()
    host.build(variables)
    kc.build(host, variables)
    params = [torch.nn.Parameter(to_torch(v.numpy())) for v in variables]
    named = list(zip(TORCH_NAMES, params))
    for scale in steps:
        grads = [(rng.normal(size=s) * scale).astype("float32") for s in SHAPES]
        if not np.isfinite(scale):
            grads[1][0] = np.nan
        for p, g in zip(params, grads):
            p.grad = to_torch(g)
        stats = clip_torch(named).as_floats()
        m = measure([tf.constant(g) for g in grads])
        out, after, threshold, clipped = kc.apply([tf.constant(g) for g in grads], variables, m)
        mine = {"norm_before": float(m.total), "norm_after": float(after), "threshold": float(threshold), "clipped": bool(clipped)}
        yield stats, mine, [o.numpy() for o in out], [from_torch(p.grad) for p in params], kc


def assert_agree(clip_torch, steps, keras_clip=None):
    n = 0
    for stats, mine, out, theirs, _ in run_both(clip_torch, steps, keras_clip=keras_clip):
        n += 1
        if not np.isfinite(stats["norm_before"]):
            assert not np.isfinite(mine["norm_before"])
            continue
        for key in ("norm_before", "norm_after", "threshold"):
            np.testing.assert_allclose(mine[key], stats[key], rtol=2e-5, err_msg=f"{clip_torch!r} {key} at step {n}")
        assert mine["clipped"] == stats["clipped"], f"{clip_torch!r} clipped at step {n}"
        for a, b in zip(out, theirs):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)
    return n


SCHEDULE = [1.0, 2.0, 0.5, 1.0, 1.5, 30.0, float("nan"), 1.0, 0.8, 60.0, 1.0, 2.0]


@pytest.mark.parametrize(
    "clipper",
    [
        gg.ClipNorm(2.0),
        gg.ClipTensorNorm(1.0),
        gg.ClipValue(0.5),
        gg.AGC(clipping=0.05),
        gg.AGC(clipping=0.05, exclude=()),
        gg.AutoClip(percentile=25.0),
        gg.AutoClip(percentile=25.0, exact_samples=5),  # the exact buffer, then the histogram
        gg.AutoClip(percentile=25.0, exact_samples=0),
        gg.AutoClip(percentile=50.0, decay=0.9),
        gg.ZClip(warmup_steps=3),  # the default cap, 1.0, binds on every step here
        gg.ZClip(warmup_steps=3, max_grad_norm=None),  # purely adaptive: the EMA thresholds show
        gg.ZClip(warmup_steps=3, mode="percentile", max_grad_norm=5.0),
        gg.ZClip(warmup_steps=3, clip_option="mean", skip_update_on_spike=True, max_grad_norm=None),
    ],
    ids=repr,
)
def test_keras_clipper_matches_torch_clipper(clipper):
    assert assert_agree(clipper, SCHEDULE) == len(SCHEDULE)


@pytest.mark.parametrize(
    "torch_side, keras_side",
    [
        (gg.ClipNorm(2.0), gg.ClipNorm(2.001)),
        # No cap: with max_grad_norm=1.0 every norm of SCHEDULE (about 5) is clipped to the cap,
        # so alpha would never reach a threshold and no comparison could see it.
        (gg.ZClip(warmup_steps=3, max_grad_norm=None), gg.ZClip(warmup_steps=3, alpha=0.96, max_grad_norm=None)),
        (gg.ZClip(warmup_steps=3), gg.ZClip(warmup_steps=3, max_grad_norm=1.01)),
        (gg.AutoClip(percentile=25.0), gg.AutoClip(percentile=26.0)),
        (gg.AutoClip(percentile=25.0), gg.AutoClip(percentile=25.0, exact_samples=0)),
        (gg.AGC(0.05), gg.AGC(0.05, exclude=())),
    ],
    ids=["norm", "zclip", "zclip_cap", "autoclip", "autoclip_exact", "agc"],
)
def test_agreement_check_can_fail(torch_side, keras_side):
    """A slightly different Keras clipper is caught by the comparison."""
    with pytest.raises(AssertionError):
        assert_agree(torch_side, SCHEDULE, keras_clip=keras_side)


def test_nonfinite_step_leaves_adaptive_state_unchanged():
    for clipper in (gg.ZClip(warmup_steps=2), gg.AutoClip()):
        it = run_both(clipper, [1.0, 2.0, 3.0, float("nan")])
        for _ in range(3):
            *_, kc = next(it)
        before = [np.array(v.numpy(), copy=True) for v in _state_vars(kc)]
        next(it)
        assert all(a.tobytes() == np.asarray(v.numpy()).tobytes() for a, v in zip(before, _state_vars(kc)))


def _state_vars(kc):
    return [kc.counts, kc.exact] if hasattr(kc, "counts") else [kc.count, kc.buffer, kc.mean, kc.var]


@pytest.mark.parametrize("name", ["ClipNorm", "ClipTensorNorm", "ClipValue", "AGC", "AutoClip", "ZClip"])
def test_keras_clipper_constructors_mirror_torch(name):
    """Same arguments, kinds and defaults as the PyTorch clipper of the same name."""
    import inspect

    from gradguard.keras import _clippers

    def params(cls):
        return [(p.name, p.kind, p.default) for p in inspect.signature(cls.__init__).parameters.values()]

    assert params(getattr(_clippers, name)) == params(getattr(gg, name))


def test_autoclip_exact_phase_is_np_percentile_then_histogram():
    """Keras AutoClip's threshold is np.percentile over the norms so far for the first exact_samples."""
    steps = [1.0, 3.0, 0.2, float("nan"), 5.0, 0.7, 2.0, 0.1, 9.0]
    seen = []
    for stats, mine, *_ in run_both(gg.AutoClip(percentile=30.0, exact_samples=6), steps):
        if not np.isfinite(mine["norm_before"]):
            continue
        seen.append(mine["norm_before"])
        if len(seen) <= 6:
            np.testing.assert_allclose(mine["threshold"], np.percentile(seen, 30.0), rtol=1e-6)
        else:  # the histogram: within one bin (a factor 10 ** (1 / 200)) of the bracketing norms
            lo, hi = np.percentile(seen, 30.0, method="lower"), np.percentile(seen, 30.0, method="higher")
            assert lo / 1.0117 <= mine["threshold"] <= hi * 1.0117


@given(scale=st.floats(1e-3, 1e3), max_norm=st.floats(1e-2, 1e2))
def test_tensor_norm_has_tf_clip_by_norm_semantics(scale, max_norm):
    rng = np.random.default_rng(1)
    grads = [tf.constant((rng.normal(size=s) * scale).astype("float32")) for s in SHAPES]
    kc = resolve(gg.ClipTensorNorm(max_norm))
    out, *_ = kc.apply(grads, [None] * 4, measure(grads))
    for o, g in zip(out, grads):
        np.testing.assert_allclose(o.numpy(), tf.clip_by_norm(g, max_norm).numpy(), rtol=1e-6, atol=0)
