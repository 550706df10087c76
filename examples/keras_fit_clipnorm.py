"""Keras ``fit`` with the optimizer's own clipping (``clipnorm``), as the Keras guides show it.

Same task as the GradientTape examples (the adding problem, one NaN batch). ``clipnorm`` clips
each gradient tensor but lets the NaN through, and the weights become NaN. The gradguard
version is ``keras_fit_guard.py``.

    python examples/keras_fit_clipnorm.py [--steps 200]
"""

import argparse
import os
from dataclasses import dataclass

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras
import numpy as np


@dataclass
class Config:
    steps: int = 200  # optimizer steps (batches)
    seq_len: int = 50  # time steps per sequence
    hidden: int = 32  # SimpleRNN units
    batch: int = 32
    lr: float = 1e-2
    clip_norm: float = 1.0  # Keras clipnorm: each gradient tensor clipped to this norm
    nan_step: int = 20  # the batch that holds a NaN
    seed: int = 0


def adding_data(rng, cfg):
    """x[..., 0] random values, x[..., 1] marks two positions; y is the sum of the marked values."""
    n = cfg.steps * cfg.batch
    values = rng.uniform(size=(n, cfg.seq_len)).astype("float32")
    marks = np.zeros_like(values)
    for row in marks:
        row[rng.choice(cfg.seq_len, 2, replace=False)] = 1.0
    x, y = np.stack([values, marks], axis=-1), (values * marks).sum(axis=1, keepdims=True)
    x[(cfg.nan_step - 1) * cfg.batch, 0, 0] = np.nan
    return x, y


def main(cfg: Config) -> dict:
    keras.utils.set_random_seed(cfg.seed)
    x, y = adding_data(np.random.default_rng(cfg.seed), cfg)
    model = keras.Sequential([keras.Input((cfg.seq_len, 2)), keras.layers.SimpleRNN(cfg.hidden), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(cfg.lr, clipnorm=cfg.clip_norm), loss="mse")
    history = model.fit(x, y, batch_size=cfg.batch, epochs=1, shuffle=False, verbose=0)
    del history  # its loss is the epoch mean, NaN once one batch was; evaluate on the last batches instead
    loss = float(model.evaluate(x[-8 * cfg.batch :], y[-8 * cfg.batch :], batch_size=cfg.batch, verbose=0))
    finite = all(bool(np.isfinite(v.numpy()).all()) for v in model.trainable_variables)
    print(f"loss on the last 8 batches {loss:.4f}; weights finite after the NaN batch: {finite}")
    return {"loss": loss, "weights_finite": finite}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=Config.steps)
    main(Config(steps=parser.parse_args().steps))
