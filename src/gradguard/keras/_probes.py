"""Per-layer activation statistics on Keras models, on a schedule, from a fixed sample batch.

Keras has no forward hooks. What it does offer on every backend is the symbolic graph of a
Functional or Sequential model: a second model that returns each activation's output (and, for
a standalone ``Activation`` layer, its input) is one ``keras.Model(model.inputs, [...])`` away.
``ActivationProbe`` is a callback that runs it on a sample batch every ``every`` batches and
records, per layer, what ``gg.Guard``'s activation probe records:

* ``saturation``: share of tanh/sigmoid outputs where the derivative is below 10% of its
  maximum (|y| > 0.949 for tanh; y < 0.026 or y > 0.974 for sigmoid);
* ``dead_fraction``: share of units of the ReLU family that are <= 0 for every example
  (read off the output, which is <= 0 exactly where the input is);
* ``preact_mean``/``preact_std``: only where the pre-activation is a tensor of the graph
  (a separate ``Activation`` layer); a ``Dense(activation=...)`` fuses it away.

Subclassed models (``call`` written in Python) have no such graph: the probe says so and
records nothing.
"""

from __future__ import annotations

import math

import keras
import numpy as np

SATURATION_DERIVATIVE_FRACTION = 0.1
_BOUNDED = {"tanh": (0.0, math.sqrt(1.0 - SATURATION_DERIVATIVE_FRACTION)), "sigmoid": (0.5, math.sqrt(1.0 - SATURATION_DERIVATIVE_FRACTION) / 2.0)}
_RELU_FAMILY = {"relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "silu", "swish", "mish", "celu"}
_CLASS = {"tanh": "Tanh", "sigmoid": "Sigmoid", "relu": "ReLU", "relu6": "ReLU6", "leaky_relu": "LeakyReLU", "elu": "ELU",
          "selu": "SELU", "gelu": "GELU", "silu": "SiLU", "swish": "SiLU", "mish": "Mish", "celu": "CELU"}


def activation_name(layer) -> str | None:
    fn = getattr(layer, "activation", None)
    name = getattr(fn, "__name__", None)
    if name in _BOUNDED or name in _RELU_FAMILY:
        return name
    return None


def layer_stats(kind: str, y: np.ndarray, x: np.ndarray | None) -> dict[str, float]:
    """One layer's statistics from its output ``y`` (and input ``x`` when it is a graph tensor)."""
    y = np.asarray(y, dtype=np.float64)
    out = {}
    if kind in _BOUNDED:
        center, half = _BOUNDED[kind]
        out["saturation"] = float(np.mean(np.abs(y - center) > half))
    else:
        units = y.reshape(-1, y.shape[-1]) if y.ndim >= 2 else y.reshape(1, -1)
        out["dead_fraction"] = float(np.mean(units.max(axis=0) <= 0))
    if x is not None:
        x = np.asarray(x, dtype=np.float64)
        out["preact_mean"], out["preact_std"] = float(x.mean()), float(x.std())
    return out


class ActivationProbe(keras.callbacks.Callback):
    """Records activation statistics of ``model``'s layers every ``every`` batches into ``optimizer``'s run.

    Args:
        optimizer: the GuardOptimizer training the model (its run store gets the records).
        sample: a batch of inputs, kept fixed so the statistics are comparable over time.
        every: batches between probes (also probed: the first batch).
    """

    def __init__(self, optimizer, sample, every: int = 50):
        super().__init__()
        self.guard, self.sample, self.every = optimizer, sample, int(every)
        self._probe = None
        self._layers: list[tuple[str, str, bool]] = []
        self._seen = 0
        self.unsupported: str | None = None
        self._announced = False

    def _build(self) -> None:
        model = self.model
        try:
            inputs = model.inputs
        except (AttributeError, ValueError):
            inputs = None
        if not inputs:
            self.unsupported = f"{type(model).__name__} is a subclassed model: Keras has no graph of its layers to probe."
            return
        outputs, layers = [], []
        for layer in model.layers:
            kind = activation_name(layer)
            if kind is None:
                continue
            standalone = isinstance(layer, keras.layers.Activation)
            outputs.append(layer.output)
            if standalone:
                outputs.append(layer.input)
            path = getattr(layer, "path", layer.name)
            layers.append((path, kind, standalone))
        self._layers = layers
        if outputs:
            self._probe = keras.Model(inputs, outputs)

    def probe(self, step: int) -> dict[str, dict[str, float]]:
        """Run the probe now; returns {metric: {layer: value}} and records it at ``step``."""
        if self._probe is None and self.unsupported is None:
            self._build()
        if self._probe is None:
            return {}
        sample = self.sample if isinstance(self.sample, (list, tuple, dict)) else [self.sample]
        values = self._probe(sample, training=False)
        values = values if isinstance(values, (list, tuple)) else [values]
        values = [keras.ops.convert_to_numpy(v) for v in values]
        records: dict[str, dict[str, float]] = {}
        i = 0
        for path, kind, standalone in self._layers:
            y = values[i]
            x = values[i + 1] if standalone else None
            i += 2 if standalone else 1
            for metric, value in layer_stats(kind, y, x).items():
                records.setdefault(metric, {})[path] = value
        feed = self.guard.feed
        if not self._announced:
            feed.set_meta(activation_types={p: _CLASS[k] for p, k, _ in self._layers})
            self._announced = True
        for metric, entry in records.items():
            feed.add_records(step, metric, entry)
        return records

    def on_train_batch_end(self, batch, logs=None):
        self._seen += 1
        if self._seen == 1 or self._seen % self.every == 0:
            self.probe(int(keras.ops.convert_to_numpy(self.guard.iterations)))
