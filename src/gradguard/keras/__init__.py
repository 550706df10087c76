"""gradguard for Keras 3: measure, clip and skip non-finite steps inside the optimizer.

    from gradguard.keras import GuardOptimizer
    opt = GuardOptimizer(keras.optimizers.Adam(1e-3), clip=1.0, store="run.sqlite")
    model.compile(optimizer=opt, loss="mse")     # or opt.apply_gradients(zip(grads, vars))
    model.fit(x, y)
    opt.skipped_steps, opt.history, opt.findings(), opt.report("run.html")

Needs the ``keras`` extra (``python -m pip install 'gradguard[keras]'``) and a backend:
TensorFlow (``'gradguard[keras,tf]'``) or torch.
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
