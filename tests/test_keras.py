"""gradguard.keras on the TensorFlow backend: norms, clipping, skipping, host reads, store and report.

Keras fixes its backend at import, so this module runs on TensorFlow in-process; the torch
backend and the two-device MirroredStrategy run in subprocesses (test_keras_backends.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow", reason="needs TensorFlow: python -m pip install 'gradguard[keras,tf]'")
keras = pytest.importorskip("keras", reason="needs Keras 3: python -m pip install 'gradguard[keras,tf]'")
if keras.backend.backend() != "tensorflow":  # pragma: no cover - keras was imported earlier with another backend
    pytest.skip(f"Keras runs on {keras.backend.backend()} in this process; these tests need tensorflow", allow_module_level=True)

import gradguard as gg
from gradguard import NonFiniteGradientError
from gradguard._rundata import RunData
from gradguard.keras import ActivationProbe, GuardOptimizer

ROOT = Path(__file__).resolve().parents[1]


def mlp(seed=0, act="tanh"):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation=act), keras.layers.Dense(8, activation=act), keras.layers.Dense(1)])


def data(n=32, seed=0, nan_rows=()):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = rng.normal(size=(n, 1)).astype("float32")
    for r in nan_rows:
        x[r] = np.nan
    return x, y


def tape_grads(model, x, y):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean((model(x) - y) ** 2)
    return tape.gradient(loss, model.trainable_variables)


def state(model, opt):
    """Model variables and the inner optimizer's variables (slots, iterations), as numpy copies."""
    return [np.array(v.numpy(), copy=True) for v in list(model.weights) + list(opt.inner_optimizer.variables)]


def same_bits(a, b):
    return len(a) == len(b) and all(x.dtype == y.dtype and x.tobytes() == y.tobytes() for x, y in zip(a, b))


# ---------------------------------------------------------------------- import and arguments
def test_import_gradguard_does_not_import_keras_or_tensorflow():
    code = "import sys, gradguard; bad = [m for m in ('keras', 'tensorflow') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_bad_arguments_get_clear_errors():
    with pytest.raises(TypeError, match="wraps a Keras optimizer"):
        GuardOptimizer("adam")
    with pytest.raises(ValueError, match="clips already.*clip=1.0"):
        GuardOptimizer(keras.optimizers.Adam(global_clipnorm=1.0))
    with pytest.raises(TypeError, match="other way round"):
        GuardOptimizer(keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam()))
    with pytest.raises(ValueError, match="Did you mean 'zclip'"):
        GuardOptimizer(keras.optimizers.Adam(), clip="zclp")
    with pytest.raises(ValueError, match="nonfinite"):
        GuardOptimizer(keras.optimizers.Adam(), nonfinite="skipp")


# ---------------------------------------------------------------------- measuring
def test_norms_match_tf_global_norm_and_per_layer_norms():
    model, (x, y) = mlp(), data()
    opt = GuardOptimizer(keras.optimizers.SGD(0.01))
    expected = []
    for i in range(3):
        grads = tape_grads(model, x * (1 + i), y)
        expected.append((float(tf.linalg.global_norm(grads)), [float(tf.linalg.global_norm(grads[j : j + 2])) for j in (0, 2, 4)]))
        opt.apply_gradients(zip(grads, model.trainable_variables))
    h = opt.history
    np.testing.assert_allclose(h.norm_before, [e[0] for e in expected], rtol=1e-6)
    np.testing.assert_allclose(h.module_norms, [e[1] for e in expected], rtol=1e-6)
    assert h.module_names == opt.layer_names and len(h.module_names) == 3
    np.testing.assert_array_equal(h.norm_after, h.norm_before)  # no clipper: nothing changes
    np.testing.assert_allclose(h.column("lr"), 0.01, rtol=1e-6)
    np.testing.assert_array_equal(h.column("coef"), 1.0)
    assert np.isnan(h.loss).all()  # an optimizer never sees the loss


# ---------------------------------------------------------------------- skipping
def _fit_state_unchanged_on_nan(jit, steps_per_execution, clip):
    model = mlp()
    opt = GuardOptimizer(keras.optimizers.AdamW(1e-2, weight_decay=0.1), clip=clip, log_every=2)
    model.compile(optimizer=opt, loss="mse", jit_compile=jit, steps_per_execution=steps_per_execution)
    x, y = data(24)
    model.fit(x, y, batch_size=8, verbose=0, shuffle=False)  # 3 finite steps: slots exist and are non-zero
    before = state(model, opt)
    xn, _ = data(24, nan_rows=range(24))
    model.fit(xn, y, batch_size=8, verbose=0, shuffle=False)  # 3 steps, every one non-finite
    after = state(model, opt)
    return opt, before, after, model, x, y


@pytest.mark.parametrize(
    "jit, steps_per_execution, clip",
    [(False, 1, "zclip"), (False, 3, "zclip"), (True, 1, "zclip"), (True, 3, "zclip"), (True, 3, "autoclip")],
)
def test_fit_skip_leaves_variables_slots_and_iterations_bitwise_unchanged(jit, steps_per_execution, clip):
    opt, before, after, model, x, y = _fit_state_unchanged_on_nan(jit, steps_per_execution, clip)
    assert same_bits(before, after)
    assert opt.skipped_steps == 3
    assert int(opt.iterations.numpy()) == 3
    h = opt.history
    assert h.skipped.tolist() == [False] * 3 + [True] * 3
    model.fit(x, y, batch_size=8, verbose=0, shuffle=False)  # training resumes
    assert not same_bits(after, state(model, opt))
    assert int(opt.iterations.numpy()) == 6


def test_skip_check_is_able_to_fail_without_the_guard():
    """The bitwise check means something: the same NaN batch through a plain Adam changes the state."""
    model = mlp()
    plain = keras.optimizers.AdamW(1e-2, weight_decay=0.1, global_clipnorm=1.0)
    model.compile(optimizer=plain, loss="mse")
    x, y = data(24)
    model.fit(x, y, batch_size=8, verbose=0)
    before = [np.array(v.numpy(), copy=True) for v in list(model.weights) + list(plain.variables)]
    model.fit(data(24, nan_rows=range(24))[0], y, batch_size=8, verbose=0)
    assert not same_bits(before, [v.numpy() for v in list(model.weights) + list(plain.variables)])


@pytest.mark.parametrize("compiled", [False, True])
def test_custom_loop_skip_and_consecutive_limit_names_the_variables(compiled):
    model, (x, y) = mlp(), data()
    opt = GuardOptimizer(keras.optimizers.Adam(1e-2), clip=1.0, max_consecutive_skips=2, log_every=50)

    def step(x, y):
        opt.apply_gradients(zip(tape_grads(model, x, y), model.trainable_variables))

    step = tf.function(step) if compiled else step
    step(x, y)
    xn = x.copy()
    xn[0, 0] = np.nan
    before = state(model, opt)
    step(xn, y)
    step(xn, y)
    assert same_bits(before, state(model, opt)) and opt.skipped_steps == 2
    error = NonFiniteGradientError if not compiled else tf.errors.OpError
    with pytest.raises(error) as info:  # in a graph the error crosses tf.py_function: TF wraps it, the message stays
        step(xn, y)
    text = str(info.value)
    assert "3 optimizer steps in a row" in text
    assert all(v.path in text for v in model.trainable_variables)


def test_raise_policy_stops_at_the_first_nonfinite_step():
    model, (x, y) = mlp(), data(nan_rows=[0])
    opt = GuardOptimizer(keras.optimizers.Adam(), nonfinite="raise")
    with pytest.raises(NonFiniteGradientError, match="non-finite gradients .* in 6 parameter"):
        opt.apply_gradients(zip(tape_grads(model, x, y), model.trainable_variables))


def test_ignore_policy_steps_anyway():
    model, (x, y) = mlp(), data(nan_rows=[0])
    opt = GuardOptimizer(keras.optimizers.SGD(0.1), nonfinite="ignore")
    opt.apply_gradients(zip(tape_grads(model, x, y), model.trainable_variables))
    assert opt.skipped_steps == 0 and np.isnan(model.weights[0].numpy()).any()


def test_inside_loss_scale_optimizer_sees_unscaled_gradients_and_never_skips_twice():
    model, (x, y) = mlp(), data()
    guard = GuardOptimizer(keras.optimizers.Adam(1e-3), clip=100.0)
    opt = keras.optimizers.LossScaleOptimizer(guard, initial_scale=2.0**10)

    def grads_of(x):
        with tf.GradientTape() as tape:
            loss = opt.scale_loss(tf.reduce_mean((model(x) - y) ** 2))
        return tape.gradient(loss, model.trainable_variables)

    grads = grads_of(x)
    opt.apply(grads, model.trainable_variables)
    unscaled = float(tf.linalg.global_norm(grads)) / 2.0**10
    np.testing.assert_allclose(guard.history.norm_before, [unscaled], rtol=1e-5)
    xn = x.copy()
    xn[0, 0] = np.nan
    opt.apply(grads_of(xn), model.trainable_variables)  # LossScaleOptimizer skips and halves its scale
    assert float(opt.dynamic_scale.numpy()) == 2.0**9
    assert guard.skipped_steps == 0 and len(guard.history) == 1  # Guard never saw the step
    assert int(opt.iterations.numpy()) == 1


# ---------------------------------------------------------------------- host reads
def test_host_reads_happen_every_log_every_steps_only():
    model = mlp()
    opt = GuardOptimizer(keras.optimizers.Adam(1e-3), clip=1.0, log_every=5)
    calls = []
    on_host = opt._on_host
    opt._on_host = lambda *a: (calls.append(int(a[0])), on_host(*a))[1]
    model.compile(optimizer=opt, loss="mse")
    x, y = data(80)
    model.fit(x, y, batch_size=4, verbose=0)  # 20 steps
    assert calls == [5, 10, 15, 20]
    assert len(opt.history) == 20


def test_jit_compile_rows_wait_on_the_device_and_the_callback_reads_them():
    model = mlp()
    opt = GuardOptimizer(keras.optimizers.Adam(1e-3), log_every=5, buffer_steps=8)
    model.compile(optimizer=opt, loss="mse", jit_compile=True)
    x, y = data(80)
    model.fit(x, y, batch_size=4, verbose=0, callbacks=[opt.callback()])
    assert len(opt.history) == 20 and opt._feed.lost == 0
    model.fit(x, y, batch_size=4, verbose=0)  # no callback: 20 steps overflow the 8-row ring
    with pytest.warns(gg.GradGuardWarning, match="overwritten"):
        opt.flush()
    assert opt.history.step[-1] == 40 and opt._feed.lost == 12


# ---------------------------------------------------------------------- adaptive state
def test_autoclip_state_never_retraces_and_is_checkpointed(tmp_path):
    """The exact buffer fills, then the histogram takes over, in one trace; both are checkpointed."""
    model, (x, y) = mlp(), data()
    opt = GuardOptimizer(keras.optimizers.Adam(1e-3), clip=gg.AutoClip(exact_samples=4))
    opt.build(model.trainable_variables)

    @tf.function
    def step(x):
        opt.apply_gradients(zip(tape_grads(model, x, y), model.trainable_variables))

    for i in range(6):
        step(tf.constant(x * (1 + 0.5 * i)))
    assert step.experimental_get_tracing_count() == 1
    exact = np.array(opt.clipper.exact.numpy(), copy=True)
    assert np.isfinite(exact).all() and (np.diff(exact) >= 0).all()  # 4 norms kept, in order
    assert float(np.sum(opt.clipper.counts.numpy())) == 6
    path = tf.train.Checkpoint(optimizer=opt, model=model).save(str(tmp_path / "ckpt"))
    opt.clipper.exact.assign(np.full(4, np.inf))
    tf.train.Checkpoint(optimizer=opt, model=model).restore(path)
    np.testing.assert_array_equal(opt.clipper.exact.numpy(), exact)


def test_adaptive_state_never_retraces_and_is_checkpointed(tmp_path):
    model, (x, y) = mlp(), data()
    opt = GuardOptimizer(keras.optimizers.Adam(1e-3), clip=gg.ZClip(warmup_steps=3))
    opt.build(model.trainable_variables)  # variables are made once, outside the traced step

    @tf.function
    def step(x):
        opt.apply_gradients(zip(tape_grads(model, x, y), model.trainable_variables))

    for i in range(6):
        step(tf.constant(x * (1 + 0.5 * i)))
    assert step.experimental_get_tracing_count() == 1
    mean = float(opt.clipper.mean.numpy())
    assert mean > 0 and int(opt.clipper.count.numpy()) == 3
    path = tf.train.Checkpoint(optimizer=opt, model=model).save(str(tmp_path / "ckpt"))
    opt.clipper.mean.assign(0.0)
    tf.train.Checkpoint(optimizer=opt, model=model).restore(path)
    assert float(opt.clipper.mean.numpy()) == mean


# ---------------------------------------------------------------------- store, findings, report
def test_store_findings_and_cli_report_on_a_keras_run(tmp_path):
    store = tmp_path / "run.sqlite"
    model = mlp()
    opt = GuardOptimizer(keras.optimizers.Adam(1e-3), clip=1.0, store=store, log_every=4)
    model.compile(optimizer=opt, loss="mse")
    x, y = data(64, nan_rows=[9])
    model.fit(x, y, batch_size=8, verbose=0, shuffle=False)
    codes = [f.code for f in opt.findings()]
    assert "NONFINITE" in codes
    html = opt.report(tmp_path / "run.html")
    assert "NONFINITE" in html.read_text()
    in_memory = opt.run_data()
    opt.close()
    with gg.RunStore(store) as s:
        stored = RunData.from_store(s)
        for name in ("norm_before", "norm_after", "threshold", "coef", "clipped", "skipped", "lr"):
            np.testing.assert_array_equal(stored.scalars[name], in_memory.scalars[name], err_msg=name)
        np.testing.assert_array_equal(stored.grad_norms, in_memory.grad_norms)
        steps = s.steps()
        assert len(steps["step"]) == 8 and steps["skipped"].tolist() == [False, True] + [False] * 6
        assert [f.code for f in s.findings()] == codes
    out = tmp_path / "report.md"
    proc = subprocess.run([sys.executable, "-m", "gradguard", "report", str(store), "-o", str(out), "--format", "md"],
                          check=False, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "NONFINITE" in out.read_text()


def test_activation_probe_records_saturation_and_dead_units():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(16), keras.layers.Activation("relu"), keras.layers.Dense(1)])
    model.layers[0].kernel.assign(model.layers[0].kernel * 50.0)  # saturate the tanh layer
    opt = GuardOptimizer(keras.optimizers.SGD(1e-3))
    model.compile(optimizer=opt, loss="mse")
    x, y = data(32)
    probe = ActivationProbe(opt, x[:16], every=2)
    model.fit(x, y, batch_size=8, verbose=0, callbacks=[probe])
    records = opt.run_data().records
    tanh = model.layers[0].path
    assert records["saturation"][0][1][tanh] > 0.5
    assert 0.0 <= records["dead_fraction"][0][1][model.layers[2].path] <= 1.0
    assert model.layers[2].path in records["preact_std"][0][1]
    assert [s for s, _ in records["saturation"]] == [1, 2, 4]
