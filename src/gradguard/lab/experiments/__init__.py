"""The lab's experiments, one module each; importing this package registers them, in the issue's order."""

from gradguard.lab.experiments import activations  # noqa: F401  1. f and f'
from gradguard.lab.experiments import deep_flow  # noqa: F401  2. per-layer norms at init
from gradguard.lab.experiments import deep_train  # noqa: F401  3. depth-20 MLP on digits
from gradguard.lab.experiments import bptt  # noqa: F401  4. ||dL/dh_t|| against t
from gradguard.lab.experiments import clipping  # noqa: F401  5. every clipper at a high rate
from gradguard.lab.experiments import clip_threshold  # noqa: F401  6. choosing the threshold
from gradguard.lab.experiments import long_range  # noqa: F401  7. adding, copy, temporal order
from gradguard.lab.experiments import regularization  # noqa: F401  8. L2, grad-norm, Omega
from gradguard.lab.experiments import timeseries  # noqa: F401  9. sunspots
from gradguard.lab.experiments import image  # noqa: F401  10. depth-20 CNN
