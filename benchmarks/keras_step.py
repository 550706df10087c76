"""Table: a Keras training step with GuardOptimizer against the same step with native clipping.

The native step is what ``model.fit`` runs with ``Adam(global_clipnorm=1.0)``: forward, tape,
``apply_gradients``. The guarded step wraps a plain ``Adam`` in ``GuardOptimizer(clip=1.0)``,
which also checks for NaN/Inf, skips such steps, records per-layer norms on the device and
reads them on the host every ``log_every`` = 10 steps. A timed block is 10 steps, so every block
holds one host read. ``tf.debugging.enable_check_numerics()``, TensorFlow's own NaN/Inf guard
(it raises, it cannot skip), is timed as a peer on the native step.

Each contender trains its own copy of the model (same initial weights, same batches) in its own
``tf.function`` (``jit_compile=False``, Keras's default on a CPU). TensorFlow runs ops on its own
thread pools, so blocks are timed in wall time (with one intra-op and one inter-op thread, set
before TensorFlow starts where this process has not started it yet).
"""

from __future__ import annotations

import importlib.util
import os

from benchmarks._config import Config
from benchmarks._report import Table, ms, ratio, spread
from benchmarks._timing import Task, interleave, summarize

NATIVE = "native: Adam(global_clipnorm=1.0)"
GUARD = "GuardOptimizer(Adam(), clip=1.0)"
CHECK_NUMERICS = "native + tf.debugging.enable_check_numerics()"
TARGET = 1.05
PERIOD = 10


def _tf():
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already started in this process: its thread pools stay
        pass
    import keras

    return tf, keras


def mlp(keras, width: int, depth: int):
    layers = [keras.Input((width,))]
    layers += [keras.layers.Dense(width, activation="relu") for _ in range(depth)]
    layers.append(keras.layers.Dense(10))
    return keras.Sequential(layers)


def transformer(keras, vocab: int, seq: int, dim: int, heads: int, blocks: int):
    """A small causal transformer language model (pre-norm blocks)."""
    tokens = keras.Input((seq,), dtype="int32")
    positions = keras.ops.arange(seq)
    x = keras.layers.Embedding(vocab, dim)(tokens) + keras.layers.Embedding(seq, dim)(positions)
    for _ in range(blocks):
        h = keras.layers.LayerNormalization()(x)
        x = x + keras.layers.MultiHeadAttention(heads, dim // heads)(h, h, use_causal_mask=True)
        h = keras.layers.LayerNormalization()(x)
        x = x + keras.layers.Dense(dim)(keras.layers.Dense(4 * dim, activation="gelu")(h))
    logits = keras.layers.Dense(vocab)(keras.layers.LayerNormalization()(x))
    return keras.Model(tokens, logits)


def _contenders(tf, keras, build, batch, loss_fn):
    from gradguard.keras import GuardOptimizer

    keras.utils.set_random_seed(0)
    reference = build()
    weights = reference.get_weights()

    def make(optimizer, check_numerics=False):
        model = build()
        model.set_weights(weights)

        def step(x, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        step = tf.function(step, jit_compile=False)
        x, y = batch
        if check_numerics:
            tf.debugging.enable_check_numerics()  # instruments the graph traced now
        try:
            step(x, y)
        finally:
            if check_numerics:
                tf.debugging.disable_check_numerics()

        def block():
            for _ in range(PERIOD):
                loss = step(x, y)
            loss.numpy()  # wait for the last step's work

        return Task(block, units=PERIOD)

    return {
        NATIVE: make(keras.optimizers.Adam(1e-4, global_clipnorm=1.0)),
        GUARD: make(GuardOptimizer(keras.optimizers.Adam(1e-4), clip=1.0, log_every=PERIOD)),
        CHECK_NUMERICS: make(keras.optimizers.Adam(1e-4, global_clipnorm=1.0), check_numerics=True),
    }


def run(cfg: Config) -> list[Table]:
    try:
        missing = importlib.util.find_spec("keras") is None or importlib.util.find_spec("tensorflow") is None
    except (ImportError, ValueError):
        missing = True
    if missing:
        print("(keras_step: skipped, needs the keras and tf extras: python -m pip install 'gradguard[keras,tf]')\n", flush=True)
        return []
    tf, keras = _tf()
    if keras.backend.backend() != "tensorflow":
        print(f"(keras_step: skipped, Keras runs on {keras.backend.backend()} in this process)\n", flush=True)
        return []
    import numpy as np

    rng = np.random.default_rng(0)
    width, depth, mlp_batch = cfg.pick(smoke=(32, 2, 8), cpu=(512, 4, 128), cuda=(512, 4, 128))
    vocab, seq, dim, heads, blocks, lm_batch = cfg.pick(smoke=(32, 8, 16, 2, 1, 2), cpu=(256, 64, 128, 4, 2, 16), cuda=(256, 64, 128, 4, 2, 16))
    rounds = cfg.pick(smoke=3, cpu=30, cuda=30)
    mse = keras.losses.MeanSquaredError()
    xent = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    cases = [
        (f"MLP {depth}x{width}, batch {mlp_batch}", lambda: mlp(keras, width, depth),
         (tf.constant(rng.normal(size=(mlp_batch, width)).astype("float32")), tf.constant(rng.normal(size=(mlp_batch, 10)).astype("float32"))), mse),
        (f"transformer {blocks} blocks, d={dim}, seq {seq}, batch {lm_batch}", lambda: transformer(keras, vocab, seq, dim, heads, blocks),
         (tf.constant(rng.integers(0, vocab, size=(lm_batch, seq)).astype("int32")), tf.constant(rng.integers(0, vocab, size=(lm_batch, seq)).astype("int32"))), xent),
    ]
    table = Table(
        "keras_step",
        "Keras training step (TensorFlow backend, CPU): GuardOptimizer vs native global_clipnorm",
        ["model", "step", "ms/step", "IQR ms", "ratio", "paired ratio (IQR)", "target"],
    )
    for label, build, batch, loss_fn in cases:
        tasks = _contenders(tf, keras, build, batch, loss_fn)
        samples = interleave(tasks, rounds=rounds, warmup=2)
        for s in summarize(samples, NATIVE):
            table.rows.append({
                "model": label,
                "step": s.name,
                "ms/step": ms(s.median),
                "IQR ms": f"{ms(s.q1)}-{ms(s.q3)}",
                "ratio": ratio(s.ratio),
                "paired ratio (IQR)": f"{ratio(s.paired)} ({spread(s.ratio_q1, s.ratio_q3)})",
                "target": f"<= {TARGET:.2f}x" if s.name == GUARD else "",
            })
            table.data.setdefault("summaries", []).append({"model": label, **s.as_dict()})
    table.notes.append(
        f"{rounds} interleaved rounds after two warm-up blocks; a block is {PERIOD} steps (one host read of "
        "GuardOptimizer's statistics). Wall time per step; TensorFlow with 1 intra-op and 1 inter-op thread."
    )
    table.notes.append("Both steps clip to a global norm of 1.0; GuardOptimizer also skips NaN/Inf steps, which native clipping cannot.")
    table.data["tensorflow"] = tf.__version__
    table.data["keras"] = keras.__version__
    return [table]
