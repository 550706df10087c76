"""``tf_gradienttape_clip.py`` with gradguard: the same loop, the optimizer wrapped in GuardOptimizer.

Two lines change: the ``tf.clip_by_norm`` line goes, and the optimizer becomes
``GuardOptimizer(Adam(lr), clip="tensor_norm")``, which clips each gradient exactly as
``tf.clip_by_norm`` does, and also skips the step whose gradients hold a NaN (weights, Adam's
moments and ``iterations`` untouched), records per-layer gradient norms, and writes a run store
that ``gradguard report`` reads.

    python examples/tf_gradienttape_guard.py [--steps 200] [--out runs/]
"""

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras
import numpy as np
import tensorflow as tf

import gradguard as gg
from gradguard.keras import GuardOptimizer


@dataclass
class Config:
    steps: int = 200  # optimizer steps
    seq_len: int = 50  # time steps per sequence
    hidden: int = 32  # SimpleRNN units
    batch: int = 32
    lr: float = 1e-2
    clip_norm: float = 1.0  # each gradient tensor is clipped to this norm (tf.clip_by_norm semantics)
    nan_step: int = 20  # the step whose batch holds a NaN
    seed: int = 0
    out: Path = Path("runs")  # run store and report


def adding_batch(rng, cfg):
    """x[..., 0] random values, x[..., 1] marks two positions; y is the sum of the marked values."""
    values = rng.uniform(size=(cfg.batch, cfg.seq_len)).astype("float32")
    marks = np.zeros_like(values)
    for row in marks:
        row[rng.choice(cfg.seq_len, 2, replace=False)] = 1.0
    return np.stack([values, marks], axis=-1), (values * marks).sum(axis=1, keepdims=True)


def main(cfg: Config) -> dict:
    keras.utils.set_random_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = keras.Sequential([keras.Input((cfg.seq_len, 2)), keras.layers.SimpleRNN(cfg.hidden), keras.layers.Dense(1)])
    cfg.out.mkdir(parents=True, exist_ok=True)
    optimizer = GuardOptimizer(keras.optimizers.Adam(cfg.lr), clip=gg.ClipTensorNorm(cfg.clip_norm), store=cfg.out / "tf_loop.sqlite")

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    for step in range(1, cfg.steps + 1):
        x, y = adding_batch(rng, cfg)
        if step == cfg.nan_step:
            x[0, 0, 0] = np.nan
        loss = float(train_step(x, y))
        if step % 50 == 0 or step == cfg.steps:
            print(f"step {step:4d}  loss {loss:.4f}")
    finite = all(bool(np.isfinite(v.numpy()).all()) for v in model.trainable_variables)
    print(f"weights finite after the NaN batch: {finite}; skipped steps: {optimizer.skipped_steps}")
    for finding in optimizer.findings():
        print(f"{finding.severity}: {finding.code}: {finding.message}")
    report = optimizer.report(cfg.out / "tf_loop.html")
    optimizer.close()
    print(f"report: {report}  (or: gradguard report {cfg.out / 'tf_loop.sqlite'} -o report.html)")
    return {"loss": loss, "weights_finite": finite, "skipped": optimizer.skipped_steps, "report": report}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=Config.steps)
    parser.add_argument("--out", type=Path, default=Config.out)
    args = parser.parse_args()
    main(Config(steps=args.steps, out=args.out))
