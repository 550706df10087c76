"""Recurrent gradient dynamics: why an RNN forgets, measured.

- ``SimpleRNN`` and ``init_rnn``: the Elman RNN written out, with the initialisations of the
  literature (PyTorch default, orthogonal, IRNN identity, Pascanu's basic and smart tanh).
- ``timestep_grad_norms`` and ``TimestepProbe``: the total ||dL/dh_t|| at every time step, also
  for fused ``nn.RNN``/``nn.LSTM``/``nn.GRU`` modules.
- ``hidden_jacobian_norms``: ||dh_T/dh_t|| for every t (power iteration or exact).
- ``pascanu_condition``: the largest singular value of W_h against 1/gamma.
- ``NormPreservingPenalty``: Pascanu et al.'s regulariser Omega; ``l1_penalty``, ``l2_penalty``,
  ``grad_norm_penalty``: loss terms over parameters selected by name pattern.

Reference: Pascanu, Mikolov, Bengio 2013, "On the difficulty of training recurrent neural
networks", arXiv:1211.5063.
"""

from gradguard.rnn._init import SCHEMES, init_rnn, random_orthogonal
from gradguard.rnn._jacobian import (
    SpectralCondition,
    hidden_jacobian_norms,
    largest_singular_value,
    pascanu_condition,
    spectral_radius,
)
from gradguard.rnn._penalties import (
    NormPreservingPenalty,
    grad_norm_penalty,
    l1_penalty,
    l2_penalty,
    norm_preserving_omega,
    select_parameters,
)
from gradguard.rnn._simple import NONLINEARITIES, SimpleRNN
from gradguard.rnn._timesteps import TimestepProbe, find_recurrent_module, timestep_grad_norms

__all__ = [
    "NONLINEARITIES",
    "NormPreservingPenalty",
    "SCHEMES",
    "SimpleRNN",
    "SpectralCondition",
    "TimestepProbe",
    "find_recurrent_module",
    "grad_norm_penalty",
    "hidden_jacobian_norms",
    "init_rnn",
    "l1_penalty",
    "l2_penalty",
    "largest_singular_value",
    "norm_preserving_omega",
    "pascanu_condition",
    "random_orthogonal",
    "select_parameters",
    "spectral_radius",
    "timestep_grad_norms",
]
