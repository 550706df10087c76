"""``keras_fit_clipnorm.py`` with gradguard: ``fit`` unchanged, the optimizer wrapped in GuardOptimizer.

``GuardOptimizer(Adam(lr), clip="tensor_norm")`` clips like ``clipnorm`` (each tensor to its own
norm), skips the NaN batch's step, records per-layer gradient norms and activation statistics
(``ActivationProbe``), and writes a run store; ``findings()`` and ``report()`` diagnose the run.

    python examples/keras_fit_guard.py [--steps 200] [--out runs/]
"""

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras
import numpy as np

import gradguard as gg
from gradguard.keras import ActivationProbe, GuardOptimizer


@dataclass
class Config:
    steps: int = 200  # optimizer steps (batches)
    seq_len: int = 50  # time steps per sequence
    hidden: int = 32  # SimpleRNN units
    batch: int = 32
    lr: float = 1e-2
    clip_norm: float = 1.0  # each gradient tensor clipped to this norm, as Keras clipnorm does
    nan_step: int = 20  # the batch that holds a NaN
    probe_every: int = 50  # batches between activation probes
    seed: int = 0
    out: Path = Path("runs")  # run store and report


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
    cfg.out.mkdir(parents=True, exist_ok=True)
    optimizer = GuardOptimizer(keras.optimizers.Adam(cfg.lr), clip=gg.ClipTensorNorm(cfg.clip_norm), store=cfg.out / "keras_fit.sqlite")
    model.compile(optimizer=optimizer, loss="mse")
    probe = ActivationProbe(optimizer, x[:64][np.isfinite(x[:64]).all(axis=(1, 2))], every=cfg.probe_every)
    history = model.fit(x, y, batch_size=cfg.batch, epochs=1, shuffle=False, verbose=0, callbacks=[probe])
    del history  # its loss is the epoch mean, NaN once one batch was; evaluate on the last batches instead
    loss = float(model.evaluate(x[-8 * cfg.batch :], y[-8 * cfg.batch :], batch_size=cfg.batch, verbose=0))
    finite = all(bool(np.isfinite(v.numpy()).all()) for v in model.trainable_variables)
    print(f"loss on the last 8 batches {loss:.4f}; weights finite after the NaN batch: {finite}; skipped steps: {optimizer.skipped_steps}")
    for finding in optimizer.findings():
        print(f"{finding.severity}: {finding.code}: {finding.message}")
    report = optimizer.report(cfg.out / "keras_fit.html")
    optimizer.close()
    print(f"report: {report}  (or: gradguard report {cfg.out / 'keras_fit.sqlite'} -o report.html)")
    return {"loss": loss, "weights_finite": finite, "skipped": optimizer.skipped_steps, "report": report}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=Config.steps)
    parser.add_argument("--out", type=Path, default=Config.out)
    args = parser.parse_args()
    main(Config(steps=args.steps, out=args.out))
