"""The TensorFlow tutorial loop: a GradientTape step that clips each gradient with tf.clip_by_norm.

Task: the adding problem (Hochreiter & Schmidhuber 1997), a classic for exploding gradients in
recurrent networks. One batch in the run holds a NaN, as a corrupt record or an overflow would:
clipping does not stop it, and the weights become NaN. The same loop with gradguard is
``tf_gradienttape_guard.py``.

    python examples/tf_gradienttape_clip.py [--steps 200]
"""

import argparse
import os
from dataclasses import dataclass

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras
import numpy as np
import tensorflow as tf


@dataclass
class Config:
    steps: int = 200  # optimizer steps
    seq_len: int = 50  # time steps per sequence
    hidden: int = 32  # SimpleRNN units
    batch: int = 32
    lr: float = 1e-2
    clip_norm: float = 1.0  # each gradient tensor is clipped to this norm (tf.clip_by_norm)
    nan_step: int = 20  # the step whose batch holds a NaN
    seed: int = 0


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
    optimizer = keras.optimizers.Adam(cfg.lr)

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
        grads = tape.gradient(loss, model.trainable_variables)
        grads = [tf.clip_by_norm(g, cfg.clip_norm) for g in grads]
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
    print(f"weights finite after the NaN batch: {finite}")
    return {"loss": loss, "weights_finite": finite}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=Config.steps)
    main(Config(steps=parser.parse_args().steps))
