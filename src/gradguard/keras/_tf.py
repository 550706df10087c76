"""TensorFlow-specific parts of GuardOptimizer: distribution, host callbacks, XLA detection.

Distribution (``tf.distribute.MirroredStrategy``). The gradients that reach ``apply`` in a
replica are that replica's own; Keras all-reduces them later, inside the inner optimizer's
``_backend_update_step``, and then steps every variable in a ``merge_call``. A ``cond`` around
``apply`` therefore cannot work: its branch would call ``merge_call`` from a graph other than the
replica's ("merge_call called while defining a new graph"), and the replicas would decide on
different, unreduced gradients. GuardOptimizer instead

1. all-reduces the gradients itself, in the replica context, so the norms, the clipping and the
   skip decision are computed from the summed gradients, identically on every replica;
2. steps the variables in its own ``merge_call``: one ``extended.update`` per variable, whose
   per-device function holds the ``cond`` (weight decay, the inner optimizer's ``update_step``,
   the constraint). There a ``cond`` is legal: no ``merge_call`` happens inside it.
3. advances the inner optimizer's ``iterations`` by 1 - skipped.

Host callbacks. In a TF graph (``fit``, ``tf.function``) statistics reach the host through one
``tf.py_function`` inside a ``cond`` that is true every ``log_every`` steps (and when the
consecutive-skip limit is passed). XLA cannot compile a ``py_function``: under ``jit_compile``
rows wait on the device until the host asks (``history``, ``findings()``, ``flush()``, or the
optimizer's callback).
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow.python.ops import control_flow_util


def in_xla() -> bool:
    """True while tracing a function that XLA will compile (``jit_compile=True``)."""
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def executing_eagerly() -> bool:
    return tf.executing_eagerly()


def replicas() -> int:
    """Replicas that each hold their own gradients now (1 outside a multi-device strategy)."""
    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return 1
    return tf.distribute.get_strategy().num_replicas_in_sync


def all_reduce_sum(grads: list) -> list:
    """Sum each gradient over replicas (None stays None): what the inner optimizer would do later."""
    present = [i for i, g in enumerate(grads) if g is not None]
    reduced = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, [grads[i] for i in present])
    out = list(grads)
    for i, g in zip(present, reduced):
        out[i] = g
    return out


def host_call(due, fn, inputs) -> None:
    """Run ``fn(*numpy inputs)`` on the host on the steps where ``due`` holds (graph mode)."""

    def call():
        tf.py_function(lambda *xs: fn(*[x.numpy() for x in xs]) or 0, inputs, Tout=tf.int32)
        return tf.constant(0)

    tf.cond(due, call, lambda: tf.constant(0))


def distributed_update(guard, grads: list, variables: list, skip) -> None:
    """Step the already reduced gradients in a ``merge_call``, one ``cond`` per variable and device."""
    inner = guard.inner_optimizer
    if inner.use_ema or inner.gradient_accumulation_steps:
        raise NotImplementedError(
            "GuardOptimizer under a tf.distribute strategy does not support use_ema or "
            "gradient_accumulation_steps on the inner optimizer yet; drop them or train on one device."
        )
    pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]

    def merge(distribution, pairs, skip):
        learning_rate = inner.learning_rate

        def step(var, grad, skip, keras_var):
            def apply():
                if inner.weight_decay is not None and inner._use_weight_decay(keras_var):
                    lr = tf.cast(learning_rate, var.dtype)
                    var.assign_sub(var * tf.cast(inner.weight_decay, var.dtype) * lr)
                inner.update_step(grad, var, learning_rate)
                if keras_var.constraint is not None:
                    var.assign(keras_var.constraint(var))
                return tf.constant(0)

            return tf.cond(skip, lambda: tf.constant(0), apply)

        for grad, keras_var in pairs:
            distribution.extended.update(keras_var.value, step, args=(grad, skip, keras_var), group=False)
        distribution.extended.update(
            inner._iterations.value, lambda it, s: it.assign_add(1 - tf.cast(s, it.dtype)), args=(skip,), group=False
        )
        guard._host_hook()

    with tf.name_scope(inner.name):
        tf.distribute.get_replica_context().merge_call(merge, args=(pairs, skip))
