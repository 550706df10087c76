"""GuardOptimizer: measure, clip and skip inside any Keras optimizer's ``apply``.

Keras hands gradients to exactly one place in both ``fit`` and custom ``GradientTape`` loops:
the optimizer's ``apply`` (``apply_gradients`` calls it). GuardOptimizer wraps the user's
optimizer there, as ``LossScaleOptimizer`` does::

    unscale (loss_scale_factor) -> [all-reduce across replicas] -> one norm pass -> clip
    -> record a row on the device -> step the inner optimizer unless a gradient is NaN/Inf

A skipped step is a ``cond`` around the inner optimizer's update: variables, optimizer slots and
``iterations`` stay bitwise as they were. Everything is written in ``keras.ops``; the
TensorFlow-only parts (distribution, host callbacks in graphs) are in ``_tf``.

Host reads. Each step writes one row (norms before and after clipping, threshold, clipped,
skipped, per-layer norms) into a ring of ``buffer_steps`` rows in an optimizer variable. The
host reads the ring every ``log_every`` steps, and when the consecutive-skip limit is passed;
no other step waits on the host.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops
from keras.src import backend as _backend

from gradguard._errors import check_choice, check_int
from gradguard._policy import POLICIES
from gradguard.keras import _clippers
from gradguard.keras._host import DEVICE_COLUMNS, RunFeed
from gradguard.keras._measure import group_norms, measure

_OWN = "only_first_replica"  # replicas hold identical values (reduced gradients): first replica's wins


def layer_of(path: str) -> str:
    """A variable's layer: its path without the last component ('dense_1/kernel' -> 'dense_1')."""
    return path.rsplit("/", 1)[0] if "/" in path else path


@keras.saving.register_keras_serializable(package="gradguard")
class GuardOptimizer(keras.optimizers.Optimizer):
    """A Keras optimizer that measures, clips and skips non-finite steps, then steps ``optimizer``.

    Args:
        optimizer: the Keras optimizer doing the update (Adam, SGD, ...). Leave its own
            ``clipnorm``/``clipvalue``/``global_clipnorm`` unset: GuardOptimizer clips.
        clip: as ``gg.Guard``'s: None (measure only), a number (global norm bound), a registry
            name ("norm", "tensor_norm", "value", "agc", "autoclip", "zclip") or a gradguard
            clipper object (``gg.ZClip(alpha=0.9)``), which is translated to its Keras version.
        nonfinite: "skip" (no update; counted), "raise" (stop at the first NaN/Inf gradient) or
            "ignore".
        max_consecutive_skips: more skipped steps in a row raise ``NonFiniteGradientError``
            naming the variables.
        store: a run store path (SQLite) or ``RunStore``; ``gradguard report`` reads it.
        log_every: steps between host reads of the statistics.
        buffer_steps: rows the device keeps (default ``max(256, 2 * log_every)``). Only matters
            under ``jit_compile=True``, where rows wait on the device until the host asks.
        max_history: steps kept in ``history`` in memory (the store keeps all).
        run_name: the run's name in the store and report.

    Example:
        >>> opt = GuardOptimizer(keras.optimizers.Adam(1e-3), clip=1.0)  # doctest: +SKIP
        >>> model.compile(optimizer=opt, loss="mse"); model.fit(x, y)     # doctest: +SKIP
        >>> opt.skipped_steps, opt.history.norm_before                    # doctest: +SKIP
    """

    def __init__(
        self,
        optimizer: keras.optimizers.Optimizer,
        clip: Any = None,
        nonfinite: str = "skip",
        max_consecutive_skips: int = 10,
        store: str | Path | Any = None,
        log_every: int = 10,
        *,
        buffer_steps: int | None = None,
        max_history: int | None = 100_000,
        run_name: str | None = None,
        name: str | None = None,
    ):
        _check_inner(optimizer)
        if keras.backend.backend() == "jax":
            raise NotImplementedError(
                "GuardOptimizer supports the TensorFlow and torch Keras backends. On JAX, Keras trains "
                "through stateless_apply, which this version does not implement; set KERAS_BACKEND=tensorflow or torch."
            )
        super().__init__(learning_rate=0.0, name=name or "guard_optimizer")
        self.inner_optimizer = optimizer
        self.clipper = _clippers.resolve(clip)
        self._clip_spec = clip if clip is None or isinstance(clip, (str, numbers.Real)) else repr(clip)
        self.nonfinite = check_choice("nonfinite", nonfinite, POLICIES)
        self.max_consecutive_skips = check_int("max_consecutive_skips", max_consecutive_skips, minimum=0)
        self.log_every = check_int("log_every", log_every, minimum=1)
        self.buffer_steps = max(256, 2 * self.log_every) if buffer_steps is None else check_int("buffer_steps", buffer_steps, minimum=self.log_every)
        self._store_spec = store
        self._max_history = max_history
        self.run_name = run_name or "keras"
        # The wrapper owns loss scaling: gradients are unscaled before they are measured.
        self.loss_scale_factor = optimizer.loss_scale_factor
        optimizer.loss_scale_factor = None
        self._feed = None

    # ------------------------------------------------------------------ building
    def build(self, var_list):
        var_list = list(var_list)
        self.inner_optimizer.build(var_list)
        self.variable_names = [v.path for v in var_list]
        self.layer_names = list(dict.fromkeys(layer_of(p) for p in self.variable_names))
        position = {name: i for i, name in enumerate(self.layer_names)}
        self._segments = np.array([position[layer_of(p)] for p in self.variable_names], dtype="int32")
        self._index = {self._var_key(v): i for i, v in enumerate(var_list)}
        width = len(DEVICE_COLUMNS) + len(self.layer_names)
        add = self.add_variable
        self._step = add((), initializer="zeros", dtype="int32", aggregation=_OWN, name="guard_step")
        self._consecutive = add((), initializer="zeros", dtype="int32", aggregation=_OWN, name="consecutive_skips")
        self._skips = add((), initializer="zeros", dtype="int32", aggregation=_OWN, name="skipped_steps")
        self._bad = add((len(var_list),), initializer="zeros", dtype="float32", aggregation=_OWN, name="nonfinite_mask")
        self._ring = add((self.buffer_steps, width), initializer="zeros", dtype="float32", aggregation=_OWN, name="step_rows")
        if self.clipper is not None:
            self.clipper.build(self, var_list)
        self._feed = RunFeed(self.layer_names, self._store_spec, self._meta(var_list), self._max_history)
        super().build(var_list)

    def _meta(self, var_list) -> dict[str, Any]:
        from gradguard._version import __version__

        clipper = None
        if self.clipper is not None:
            clipper = {"name": self.clipper.name, "repr": repr(self._clip_spec)}
            for key in ("max_norm", "clip_value"):
                if hasattr(self.clipper, key):
                    clipper[key] = getattr(self.clipper, key)
        return {
            "name": self.run_name,
            "kind": "training",
            "framework": "keras",
            "keras_backend": keras.backend.backend(),
            "norm_type": 2.0,
            "clipper": clipper,
            "nonfinite": self.nonfinite,
            "module_names": self.layer_names,
            "layer_types": {},
            "activation_types": {},
            "forward_order": self.layer_names,
            "gradguard_version": __version__,
            "keras_version": keras.__version__,
        }

    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

    # ------------------------------------------------------------------ the step
    def apply(self, grads, trainable_variables=None):
        grads = list(grads)
        if not grads:
            return
        if trainable_variables is None:
            if not self.built:
                raise ValueError("GuardOptimizer.apply(grads) without variables needs a built optimizer; call optimizer.build(model.trainable_variables) first.")
            variables = list(self._trainable_variables)
        else:
            variables = list(trainable_variables)
            if not self.built:
                with _backend.name_scope(self.name, caller=self):
                    self.build(variables)
                self.built = True
        if len(grads) != len(variables):
            raise ValueError(f"GuardOptimizer.apply got {len(grads)} gradients for {len(variables)} variables; pass one gradient (or None) per variable.")
        with _backend.name_scope(self.name, caller=self):
            self._guarded_apply(grads, variables)

    def _guarded_apply(self, grads, variables):
        try:
            slots = [self._index[self._var_key(v)] for v in variables]
        except KeyError:
            unknown = [v.path for v in variables if self._var_key(v) not in self._index]
            raise ValueError(f"GuardOptimizer was built on other variables; unknown: {unknown[:5]}. Build a new GuardOptimizer for this model.") from None
        if self.loss_scale_factor is not None:
            grads = [None if g is None else g / self.loss_scale_factor for g in grads]
        tf = _tf_module()
        distributed = tf is not None and tf.replicas() > 1
        if distributed:
            grads = tf.all_reduce_sum(grads)
        full = [None] * len(self.variable_names)
        for i, g in zip(slots, grads):
            full[i] = g
        built = self._trainable_variables
        m = measure(full)
        if self.clipper is not None:
            full, after, threshold, clipped = self.clipper.apply(full, built, m)
        else:
            after, threshold, clipped = m.total, ops.cast(math.inf, m.total.dtype), ops.zeros((), dtype="bool")
        bad = ops.logical_not(m.finite)
        skip = bad if self.nonfinite != "ignore" else ops.zeros((), dtype="bool")
        self._record(m, after, threshold, clipped, skip, bad, present=[g is not None for g in full])
        grads = [full[i] for i in slots]
        if distributed:
            tf.distributed_update(self, grads, variables, skip)
            return
        inner = self.inner_optimizer
        if self.nonfinite == "ignore":
            inner.apply(grads, variables)
        else:
            ops.cond(skip, lambda: None, lambda: inner.apply(grads, variables))
        self._host_hook()

    def _record(self, m, after, threshold, clipped, skip, bad, present):
        f32 = "float32"
        layers = group_norms(ops.cast(m.squares, f32), self._segments, len(self.layer_names))
        has_grad = np.zeros(len(self.layer_names), dtype=bool)
        for seg, p in zip(self._segments.tolist(), present):
            has_grad[seg] |= p
        layers = ops.where(ops.convert_to_tensor(has_grad), layers, math.nan)
        positive = m.total > 0
        coef = ops.where(positive, after / ops.where(positive, m.total, 1.0), 1.0)
        lr = self.inner_optimizer.learning_rate
        columns = {"norm_before": m.total, "norm_after": after, "threshold": threshold, "coef": coef, "clipped": clipped, "skipped": skip, "lr": lr}
        row = ops.concatenate([ops.stack([ops.cast(columns[name], f32) for name in DEVICE_COLUMNS]), layers])
        step = self._step + 1
        self._step.assign(step)
        position = ops.mod(step - 1, self.buffer_steps)
        self._ring.assign(ops.slice_update(self._ring, (position, 0), ops.expand_dims(row, 0)))
        self._consecutive.assign(ops.where(skip, self._consecutive + 1, 0))
        self._skips.assign(self._skips + ops.cast(skip, "int32"))
        self._bad.assign(ops.where(bad, ops.cast(ops.logical_not(ops.isfinite(m.squares)), f32), self._bad))

    # ------------------------------------------------------------------ host side
    def _limit(self) -> int | None:
        return {"skip": self.max_consecutive_skips, "raise": 0, "ignore": None}[self.nonfinite]

    def _due(self):
        due = ops.equal(ops.mod(self._step, self.log_every), 0)
        limit = self._limit()
        if limit is not None:
            due = ops.logical_or(due, self._consecutive > limit)
        return due

    def _host_hook(self) -> None:
        """Hand rows to the host when due: directly when eager, by a py_function in a TF graph.

        Under a tf.distribute strategy ``_tf.distributed_update`` calls it once, in its
        cross-replica ``merge_call``, so the host reads once and not once per replica.
        """
        tf = _tf_module()
        if tf is None or tf.executing_eagerly():
            if bool(ops.convert_to_numpy(self._due())):  # eager: the cond above read the skip flag already
                self.flush()
            return
        if tf.in_xla():
            return  # XLA compiles no host callback: rows wait on the device (see buffer_steps)
        tf.host_call(self._due(), self._on_host, [ops.convert_to_tensor(v) for v in (self._step, self._ring, self._bad)])

    def _on_host(self, step, ring, bad) -> None:
        names = [n for n, b in zip(self.variable_names, np.asarray(bad).tolist()) if b]
        self._feed.ingest(int(step), np.asarray(ring), names, self._limit())

    def flush(self) -> None:
        """Read the rows the device holds into history and store (one transfer)."""
        if self._feed is None:
            return
        self._on_host(ops.convert_to_numpy(self._step), ops.convert_to_numpy(self._ring), ops.convert_to_numpy(self._bad))

    def callback(self) -> keras.callbacks.Callback:
        """A Keras callback that reads statistics every ``log_every`` batches and at the end of ``fit``.

        Only needed under ``jit_compile=True`` (XLA cannot call the host from a step), to keep the
        store current while training; elsewhere the optimizer reads them itself.
        """
        from gradguard.keras._callbacks import FlushCallback

        return FlushCallback(self)

    # ------------------------------------------------------------------ results
    @property
    def skipped_steps(self) -> int:
        return int(ops.convert_to_numpy(self._skips)) if self.built else 0

    @property
    def history(self):
        """What was measured, per step (a ``gg.History``); reads the device rows first."""
        self.flush()
        if self._feed is None:
            from gradguard._history import History

            return History([])
        return self._feed.recorder.history

    @property
    def feed(self) -> RunFeed:
        """The host side of this run (built with the optimizer, on the first training step)."""
        self.flush()
        if self._feed is None:
            raise RuntimeError("GuardOptimizer has measured nothing yet: it is built on the first training step.")
        return self._feed

    def run_data(self):
        """Everything measured so far, as a ``RunData`` (what the rules and the report read)."""
        return self.feed.run_data()

    def findings(self):
        """The diagnosis rules on what was measured so far; root causes first."""
        from gradguard._diagnose import findings_of

        found = findings_of(self.run_data())
        self._feed.replace_findings(found)
        return found

    def report(self, path: str | Path, format: str = "html") -> Path:
        """Write the HTML (or Markdown, ``format="md"``) report of this run to ``path``."""
        from gradguard._diagnose import write_run_report

        return write_run_report(self.run_data(), path, format=format, title=self.run_name)

    def close(self) -> None:
        """Read the last rows, write the findings to the store and close it."""
        if self._feed is not None:
            self.findings()
            self._feed.close()  # later findings() and report() work from memory

    # ------------------------------------------------------------------ Keras plumbing
    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        raise NotImplementedError("GuardOptimizer does not implement stateless_apply (used by the JAX backend).")

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def get_config(self):
        from keras.src.saving import serialization_lib

        if self._clip_spec is not None and not isinstance(self._clip_spec, (str, numbers.Real)):
            raise ValueError("GuardOptimizer can serialise clip=None, a number or a name; build it in code for clipper objects.")
        return {
            "name": self.name,
            "inner_optimizer": serialization_lib.serialize_keras_object(self.inner_optimizer),
            "clip": self._clip_spec,
            "nonfinite": self.nonfinite,
            "max_consecutive_skips": self.max_consecutive_skips,
            "log_every": self.log_every,
            "buffer_steps": self.buffer_steps,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        from keras.src.saving import serialization_lib

        config = dict(config)
        inner = serialization_lib.deserialize_keras_object(config.pop("inner_optimizer"), custom_objects=custom_objects)
        return cls(inner, **config)

    def __repr__(self) -> str:
        return f"GuardOptimizer({type(self.inner_optimizer).__name__}, clip={self._clip_spec!r}, nonfinite={self.nonfinite!r})"


def _check_inner(optimizer: Any) -> None:
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(f"GuardOptimizer wraps a Keras optimizer such as keras.optimizers.Adam(1e-3); got {type(optimizer).__name__}.")
    if isinstance(optimizer, GuardOptimizer):
        raise TypeError("this optimizer is a GuardOptimizer already; wrap the inner optimizer once.")
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        raise TypeError(
            "wrap the other way round: keras.optimizers.LossScaleOptimizer(GuardOptimizer(opt)), so gradguard sees "
            "unscaled gradients (model.compile does this itself under the mixed_float16 policy)."
        )
    native = {k: getattr(optimizer, k, None) for k in ("clipnorm", "clipvalue", "global_clipnorm")}
    native = {k: v for k, v in native.items() if v}
    if native:
        setting = ", ".join(f"{k}={v}" for k, v in native.items())
        raise ValueError(
            f"the inner optimizer clips already ({setting}); gradguard would measure before that clipping and "
            f"report wrong norms. Remove it and pass clip= to GuardOptimizer instead, e.g. clip={next(iter(native.values()))}."
        )


def _tf_module():
    """The TensorFlow helpers on the TensorFlow backend, else None."""
    if keras.backend.backend() != "tensorflow":
        return None
    from gradguard.keras import _tf

    return _tf


__all__ = ["GuardOptimizer"]
