"""Initialisations of an Elman RNN's weights, from the papers that showed they matter.

Each scheme sets the recurrent matrix W_h, the input matrix W_x and the biases of every layer
(and direction) of a ``SimpleRNN`` or ``nn.RNN``. The recurrent matrix can then be rescaled to a
chosen spectral radius or largest singular value: the two numbers Pascanu et al. (2013) tie to
vanishing and exploding gradients.

| scheme | W_h | W_x | biases | source |
| --- | --- | --- | --- | --- |
| ``default`` | U(-1/sqrt(H), 1/sqrt(H)) | same | same | PyTorch ``nn.RNN`` |
| ``orthogonal`` | random orthogonal | PyTorch default | 0 | Saxe et al. 2014 |
| ``identity`` | I | N(0, 0.001^2) | 0 | IRNN, Le, Jaitly, Hinton 2015 (arXiv:1504.00941) |
| ``normal`` | N(0, 1/H), spectral radius about 1 | PyTorch default | 0 | circular law |
| ``basic_tanh`` | N(0, 0.1^2) | N(0, 0.1^2) | 0 | Pascanu et al. 2013, section 4.1.1 |
| ``basic_sigmoid`` | N(0, 0.01^2) | N(0, 0.01^2) | 0 | Pascanu et al. 2013 ("sigmoid") |
| ``smart_tanh`` | sparse, 15 non-zero incoming weights per unit, spectral radius 0.95 | N(0, 0.01^2) | 0 | Pascanu et al. 2013 |
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from gradguard._errors import check_positive, unknown_name

SMART_TANH_NONZERO = 15  # incoming weights per unit kept by Pascanu's sparse initialisation
SMART_TANH_RADIUS = 0.95


def _uniform(shape, bound, gen):
    return (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound


def _normal(shape, std, gen):
    return torch.randn(shape, generator=gen, dtype=torch.float64) * std


def random_orthogonal(n: int, generator: torch.Generator | None = None) -> Tensor:
    """A Haar-random orthogonal matrix (QR of a Gaussian matrix, signs fixed by diag(R))."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(()))


def _sparse_normal(n: int, nonzero: int, gen) -> Tensor:
    """Each row (the incoming weights of one unit) keeps ``nonzero`` random N(0, 1) entries."""
    w = torch.randn(n, n, generator=gen, dtype=torch.float64)
    if nonzero >= n:
        return w
    keep = torch.rand(n, n, generator=gen).argsort(dim=1)[:, :nonzero]
    mask = torch.zeros(n, n, dtype=torch.bool).scatter_(1, keep, True)
    return w * mask


# scheme -> (W_x, W_h, zero biases?) given (hidden, input) sizes and a generator; W_x None = PyTorch default
Scheme = Callable[[int, int, "torch.Generator | None"], tuple["Tensor | None", Tensor, bool]]

SCHEMES: dict[str, Scheme] = {
    "default": lambda h, i, g: (None, _uniform((h, h), h**-0.5, g), False),
    "orthogonal": lambda h, i, g: (None, random_orthogonal(h, g), True),
    "identity": lambda h, i, g: (_normal((h, i), 1e-3, g), torch.eye(h, dtype=torch.float64), True),
    "normal": lambda h, i, g: (None, _normal((h, h), h**-0.5, g), True),
    "basic_tanh": lambda h, i, g: (_normal((h, i), 0.1, g), _normal((h, h), 0.1, g), True),
    "basic_sigmoid": lambda h, i, g: (_normal((h, i), 0.01, g), _normal((h, h), 0.01, g), True),
    "smart_tanh": lambda h, i, g: (_normal((h, i), 0.01, g), _sparse_normal(h, SMART_TANH_NONZERO, g), True),
}


def elman_layers(module: nn.Module) -> list[tuple[str, nn.Parameter, nn.Parameter, list[nn.Parameter]]]:
    """(name of W_h, W_x, W_h, biases) for every layer and direction of a SimpleRNN or nn.RNN."""
    from gradguard.rnn._simple import SimpleRNN

    if isinstance(module, SimpleRNN):
        return [("weight_hh", module.weight_ih, module.weight_hh, [b for b in (module.bias,) if b is not None])]
    if isinstance(module, nn.RNN):
        out = []
        for layer in range(module.num_layers):
            for sfx in ("", "_reverse")[: 2 if module.bidirectional else 1]:
                biases = [getattr(module, f"bias_{k}_l{layer}{sfx}") for k in ("ih", "hh")] if module.bias else []
                out.append((f"weight_hh_l{layer}{sfx}", getattr(module, f"weight_ih_l{layer}{sfx}"), getattr(module, f"weight_hh_l{layer}{sfx}"), biases))
        return out
    kind = type(module).__name__
    hint = (
        " The recurrent matrix of nn.LSTM and nn.GRU stacks the gates' matrices, so these schemes do not apply to it."
        if isinstance(module, (nn.LSTM, nn.GRU))
        else ""
    )
    raise TypeError(f"expected a gradguard.rnn.SimpleRNN or a torch.nn.RNN, got {kind}.{hint}")


@torch.no_grad()
def init_rnn(
    module: nn.Module,
    scheme: str = "default",
    *,
    spectral_radius: float | None = None,
    max_singular_value: float | None = None,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Initialise every layer of a ``SimpleRNN`` or ``nn.RNN`` in place; returns the module.

    Args:
        scheme: one of ``default``, ``orthogonal``, ``identity``, ``normal``, ``basic_tanh``,
            ``basic_sigmoid``, ``smart_tanh`` (see the module docstring for what each sets).
        spectral_radius: rescale each W_h to this spectral radius (``smart_tanh`` defaults to 0.95).
        max_singular_value: rescale each W_h to this largest singular value instead.
        generator: a CPU ``torch.Generator`` for a reproducible draw.

    ``init_rnn(rnn, "orthogonal", spectral_radius=r)`` gives W_h = r Q with Q orthogonal, whose
    linear RNN has ||dh_T/dh_t|| = r^(T-t) exactly.

    References:
        Le, Jaitly, Hinton 2015, "A simple way to initialize recurrent networks of rectified
        linear units", arXiv:1504.00941 (``identity``). Pascanu, Mikolov, Bengio 2013,
        arXiv:1211.5063, section 4.1.1 (``basic_tanh``, ``basic_sigmoid``, ``smart_tanh``; the
        official code sparsifies the rows of its row-vector-convention matrix, here each unit
        keeps 15 incoming weights as the paper describes).
    """
    if not isinstance(scheme, str) or scheme not in SCHEMES:
        raise unknown_name("initialisation scheme", scheme, SCHEMES)
    if spectral_radius is not None and max_singular_value is not None:
        raise ValueError("give spectral_radius or max_singular_value, not both: each fixes the scale of W_h.")
    if spectral_radius is not None:
        check_positive("spectral_radius", spectral_radius)
    if max_singular_value is not None:
        check_positive("max_singular_value", max_singular_value)
    if scheme == "smart_tanh" and spectral_radius is None and max_singular_value is None:
        spectral_radius = SMART_TANH_RADIUS
    for name, w_ih, w_hh, biases in elman_layers(module):
        hidden, inputs = w_ih.shape
        new_ih, new_hh, zero_bias = SCHEMES[scheme](hidden, inputs, generator)
        if new_ih is None:
            new_ih = _uniform((hidden, inputs), hidden**-0.5, generator)
        for b in biases:
            b.copy_(torch.zeros(hidden) if zero_bias else _uniform((hidden,), hidden**-0.5, generator))
        if spectral_radius is not None or max_singular_value is not None:
            target, now = (spectral_radius, _radius64(new_hh)) if spectral_radius is not None else (max_singular_value, _sigma64(new_hh))
            if now == 0.0:
                raise ValueError(f"cannot rescale {name}: the {scheme!r} scheme drew a matrix with no non-zero eigenvalue.")
            new_hh = new_hh * (target / now)
        w_ih.copy_(new_ih)
        w_hh.copy_(new_hh)
    return module


def _radius64(w: Tensor) -> float:
    return torch.linalg.eigvals(w).abs().max().item()


def _sigma64(w: Tensor) -> float:
    return torch.linalg.matrix_norm(w, ord=2).item()
