"""gradguard for Keras 3: measure, clip and skip non-finite steps inside the optimizer.

    from gradguard.keras import GuardOptimizer
    opt = GuardOptimizer(keras.optimizers.Adam(1e-3), clip=1.0, store="run.sqlite")
    model.compile(optimizer=opt, loss="mse")     # or opt.apply_gradients(zip(grads, vars))
    model.fit(x, y)
    opt.skipped_steps, opt.history, opt.findings(), opt.report("run.html")

Needs the ``keras`` extra (``python -m pip install 'gradguard[keras]'``) and a backend:
TensorFlow (``'gradguard[keras,tf]'``) or torch.

What works on each Keras backend (what the tests check):

* TensorFlow, eager or graph (``fit``, ``tf.function``), ``jit_compile`` False or True,
  ``steps_per_execution`` > 1: norms, the six clippers, skipping (variables, slots and
  ``iterations`` bitwise unchanged), the consecutive-skip limit, ``LossScaleOptimizer`` around
  GuardOptimizer (it sees unscaled gradients; a step the loss scaler skips never reaches it).
  In a graph the limit's ``NonFiniteGradientError`` crosses ``tf.py_function``, so TensorFlow
  raises it as a ``tf.errors.OpError`` that carries the message and the variable names.
  Under ``jit_compile=True`` XLA cannot call the host: rows wait on the device (``buffer_steps``)
  until ``history``, ``findings()``, ``flush()`` or ``callbacks=[opt.callback()]`` reads them, and
  the limit is checked then.
* ``tf.distribute.MirroredStrategy``: norms of the all-reduced gradients, one skip decision on
  every replica. Not with ``use_ema`` or ``gradient_accumulation_steps`` on the inner optimizer;
  not with ``jit_compile=True`` (Keras's own optimizers fail there too: XLA cannot reach a
  variable on another device).
* torch: everything above that applies (eager only); the skip decision reads one bool on the
  host per step, as ``gg.Guard`` does with optimizers that cannot skip on the device.
* JAX: not supported (Keras trains through ``stateless_apply`` there); GuardOptimizer refuses it
  with a clear error. Not tested here, JAX is not installed.

Activation statistics: ``ActivationProbe`` (a callback) on Functional and Sequential models, all
backends; subclassed models have no layer graph to probe.
"""

from __future__ import annotations

try:
    import keras as _keras  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised where keras is missing
    from gradguard._errors import MissingDependencyError

    raise MissingDependencyError(
        "gradguard.keras needs Keras 3, which is not installed. Install it with: "
        "python -m pip install 'gradguard[keras,tf]'  (or 'gradguard[keras]' with the torch backend)"
    ) from exc

from gradguard.keras._optimizer import GuardOptimizer
from gradguard.keras._probes import ActivationProbe

__all__ = ["ActivationProbe", "GuardOptimizer"]
