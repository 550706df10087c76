"""The pathological long-range tasks, each with its memoryless baseline.

Generators follow the papers' definitions (see the docstrings); every one is vectorised, draws
only from the ``torch.Generator`` it is handed, and returns batch-first tensors.

References:
    Hochreiter & Schmidhuber 1997, "Long short-term memory", §5.4 (adding), §5.5 (multiplication).
    Pascanu, Mikolov & Bengio 2013, "On the difficulty of training recurrent neural networks",
        §4.1 and the official code (addition.py, multiplication.py, tempOrder.py, tempOrder3bit.py).
    Le, Jaitly & Hinton 2015 (arXiv 1504.00941) and Arjovsky, Shah & Bengio 2016 (uRNN, §4):
        the modern adding problem and the copy-memory task.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gradguard._errors import check_choice, check_int
from gradguard.lab.tasks._base import Baseline, Task, argmax_error, wrong_share


def _uniform_int(low: Tensor | int, high: Tensor | int, n: int, gen: torch.Generator) -> Tensor:
    """Integers uniform in [low, high) per row; ``low``/``high`` may be per-row tensors."""
    low_t = torch.as_tensor(low, dtype=torch.float64)
    high_t = torch.as_tensor(high, dtype=torch.float64)
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    return (low_t + torch.floor(u * (high_t - low_t))).long()


def _one_hot(symbols: Tensor, size: int) -> Tensor:
    return torch.nn.functional.one_hot(symbols, size).float()


# --------------------------------------------------------------------------- adding problem
ADDING_VARIANTS = ("modern", "pascanu", "1997")


class Adding(Task):
    """The adding problem in three published forms. Inputs are (value, marker) pairs.

    - ``"modern"`` (Le et al. 2015; Arjovsky et al. 2016): length T, values U[0, 1], one marker
      uniform in the first half and one in the second half; target = the sum of the two marked
      values. Predicting 1 scores MSE 1/6 (the variance of a sum of two uniforms). Error = MSE;
      solved = MSE below a tenth of that.
    - ``"pascanu"`` (Pascanu et al. 2013, addition.py): length l = T + U{0..T/10-1} (one l per
      batch), values U[0, 1), first marker in [0, 0.1 l), second in [0.1 l, 0.5 l); target =
      (a + b) / 2. A sequence is wrong when its squared error exceeds 0.04; solved = under 1%
      wrong. Predicting 0.5 scores MSE 1/24 and gets P(|a + b - 1| > 0.4) = 36% wrong.
    - ``"1997"`` (Hochreiter & Schmidhuber 1997, Exp. 4): length uniform in [T, T + T/10] (one
      per batch), values U[-1, 1]; X1 is one of the first ten pairs, X2 one of the first T/2 - 1
      other pairs; the first and last pairs carry marker -1; when the first pair is a marked
      one, its value counts as 0 (the paper's "X1 = 0"; we set the value to 0). Target =
      0.5 + (X1 + X2) / 4; a sequence is wrong when its absolute error is 0.04 or more; solved =
      under 1% wrong. Predicting 0.5 scores MSE about 0.039 and gets about 85% wrong (exact
      values in ``baseline()``).
    """

    input_size = 2
    output_size = 1

    def __init__(self, length: int = 100, variant: str = "modern"):
        self.length = check_int("length", length, minimum=4)
        self.variant = check_choice("variant", variant, ADDING_VARIANTS)
        self.name = f"adding-{variant}"
        self.error_name = "MSE" if variant == "modern" else "wrong share"
        self.success = "MSE < 1/60 (a tenth of predicting 1)" if variant == "modern" else "under 1% of sequences wrong"

    def batch(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        return {"modern": self._modern, "pascanu": self._pascanu, "1997": self._lstm1997}[self.variant](n, gen)

    def _modern(self, n, gen):
        T = self.length
        values = torch.rand(n, T, generator=gen)
        first = _uniform_int(0, T // 2, n, gen)
        second = _uniform_int(T // 2, T, n, gen)
        return self._pack(values, first, second, values.gather(1, first[:, None]) + values.gather(1, second[:, None]))

    def _pascanu(self, n, gen):
        extra = max(1, self.length // 10)
        T = self.length + int(torch.randint(0, extra, (1,), generator=gen))
        values = torch.rand(n, T, generator=gen)
        first = _uniform_int(0, max(1, int(0.1 * T)), n, gen)
        second = _uniform_int(max(1, int(0.1 * T)), int(0.5 * T), n, gen)
        a, b = values.gather(1, first[:, None]), values.gather(1, second[:, None])
        return self._pack(values, first, second, (a + b) / 2)

    def _lstm1997(self, n, gen):
        T = self.length + int(torch.randint(0, self.length // 10 + 1, (1,), generator=gen))
        values = torch.rand(n, T, generator=gen) * 2 - 1
        first = _uniform_int(0, 10, n, gen)
        # X2: one of the first T/2 - 1 pairs still unmarked: draw a rank among them, skip X1's slot.
        second = _uniform_int(0, self.length // 2 - 1, n, gen)
        second = second + (second >= first).long()
        values[(first == 0) | (second == 0), 0] = 0.0  # a marked first pair counts as 0 ("X1 = 0")
        x1, x2 = values.gather(1, first[:, None]), values.gather(1, second[:, None])
        x, _ = self._pack(values, first, second, x1)
        edge = x[:, [0, -1], 1]
        x[:, [0, -1], 1] = torch.where(edge == 1.0, edge, torch.full_like(edge, -1.0))
        return x, 0.5 + (x1 + x2) / 4

    @staticmethod
    def _pack(values, first, second, target):
        markers = torch.zeros_like(values)
        rows = torch.arange(len(values))
        markers[rows, first] = 1.0
        markers[rows, second] = 1.0
        return torch.stack([values, markers], dim=-1), target

    def error(self, out, y):
        if self.variant == "modern":
            return torch.nn.functional.mse_loss(out.detach(), y).item()
        if self.variant == "pascanu":
            return wrong_share(out, y, 0.04)
        return wrong_share(out, y, 0.04 - 1e-12, squared=False)  # "correct if the absolute error is below 0.04"

    def solved(self, error):
        return error < (1 / 60 if self.variant == "modern" else 0.01)

    def baseline(self):
        if self.variant == "modern":
            return Baseline("predict 1", 1 / 6, 1 / 6, "Arjovsky et al. 2016 §4.2: expected MSE 0.167, the variance of a sum of two uniforms")
        if self.variant == "pascanu":
            return Baseline("predict 0.5", 1 / 24, 0.36, "Pascanu et al. 2013 addition.py; P(|a+b-1| > 0.4) = 0.36, computed")
        # The first pair is marked by X1 one time in ten, by X2 one time in (T/2 - 1) of the rest;
        # its value then counts as 0. MSE = Var[(X1 + X2)/4]; "right" = P(|X1 + X2| < 0.16), for a
        # triangular sum of two uniforms or, when one is 0, a single uniform.
        zero = 0.1 + 0.9 / (self.length // 2 - 1)
        right = (1 - zero) * (2 * 0.16 - 0.16**2 / 2) / 2 + zero * 0.16
        return Baseline("predict 0.5", (2 - zero) / 3 / 16, 1 - right, "Hochreiter & Schmidhuber 1997 section 5.4; Var[(X1+X2)/4], a marked first pair counting 0")

    def baseline_output(self, x):
        value = 1.0 if self.variant == "modern" else 0.5
        return torch.full((len(x), 1), value)


# --------------------------------------------------------------------------- multiplication
class Multiplication(Task):
    """Multiplication (Pascanu et al. 2013, multiplication.py): as Pascanu's adding problem, with
    target a * b. A sequence is wrong when its squared error exceeds 0.04; solved = under 1% wrong.
    Predicting E[ab] = 1/4 scores MSE Var[ab] = 1/9 - 1/16 = 7/144 and gets
    P(ab < 0.05) + P(ab > 0.45) = 39.0% wrong (P(ab < c) = c (1 - ln c)).
    """

    name = "multiplication"
    input_size = 2
    output_size = 1
    error_name = "wrong share"
    success = "under 1% of sequences wrong"

    def __init__(self, length: int = 100):
        self.length = check_int("length", length, minimum=10)
        self._adding = Adding(length, "pascanu")

    def batch(self, n, gen):
        x, _ = self._adding.batch(n, gen)
        marked = torch.where(x[..., 1] > 0, x[..., 0], torch.ones_like(x[..., 0]))  # 1 where unmarked
        return x, marked.prod(dim=1, keepdim=True)

    def error(self, out, y):
        return wrong_share(out, y, 0.04)

    def solved(self, error):
        return error < 0.01

    def baseline(self):
        def below(c):
            return c * (1 - math.log(c))

        return Baseline("predict 1/4", 1 / 9 - 1 / 16, below(0.05) + 1 - below(0.45), "Pascanu et al. 2013 multiplication.py; our computation")

    def baseline_output(self, x):
        return torch.full((len(x), 1), 0.25)


# --------------------------------------------------------------------------- temporal order
class TemporalOrder(Task):
    """Temporal order (Pascanu et al. 2013, tempOrder.py / tempOrder3bit.py; Hochreiter &
    Schmidhuber 1997, Exp. 6). One-hot inputs over 6 symbols: symbols 0 and 1 carry the bits,
    2-5 are distractors that fill every other step. With ``bits=2`` the bits sit at
    [0.1, 0.2) T and [0.5, 0.6) T; with ``bits=3`` at [0.1, 0.2) T, [0.3, 0.4) T and [0.6, 0.7) T.
    The class is v0 + 2 v1 (+ 4 v2), read at the last step. Error = share misclassified; solved =
    under 1% (Pascanu's success criterion). Chance: 75% (87.5%) error, NLL ln 4 (ln 8).
    """

    input_size = 6
    classification = True
    error_name = "misclassified"
    success = "under 1% misclassified"

    _WINDOWS = {2: ((0.1, 0.2), (0.5, 0.6)), 3: ((0.1, 0.2), (0.3, 0.4), (0.6, 0.7))}

    def __init__(self, length: int = 100, bits: int = 2):
        self.length = check_int("length", length, minimum=10)
        if bits not in self._WINDOWS:
            raise ValueError(f"bits must be 2 or 3 (Pascanu's temporal order and 3-bit temporal order), got {bits!r}.")
        self.bits = bits
        self.output_size = 2**bits
        self.name = "temporal-order" if bits == 2 else "temporal-order-3bit"

    def batch(self, n, gen):
        T = self.length
        symbols = torch.randint(2, 6, (n, T), generator=gen)
        label = torch.zeros(n, dtype=torch.long)
        for i, (lo, hi) in enumerate(self._WINDOWS[self.bits]):
            pos = _uniform_int(int(lo * T), max(int(lo * T) + 1, int(hi * T)), n, gen)
            bit = torch.randint(0, 2, (n,), generator=gen)
            symbols[torch.arange(n), pos] = bit
            label += bit << i
        return _one_hot(symbols, 6), label

    def error(self, out, y):
        return argmax_error(out, y)

    def solved(self, error):
        return error < 0.01

    def baseline(self):
        k = self.output_size
        return Baseline("uniform guess", math.log(k), 1 - 1 / k, "Pascanu et al. 2013 §4.1: chance error and NLL floor ln(classes)")

    def baseline_output(self, x):
        return torch.zeros(len(x), self.output_size)  # uniform logits; argmax picks class 0


# --------------------------------------------------------------------------- copy memory
class CopyMemory(Task):
    """Copy memory (Arjovsky et al. 2016 §4.1). Alphabet a0..a9: the input is 10 symbols drawn
    from a0..a7, then T - 1 blanks (a8), the delimiter a9 and 10 more blanks (length T + 20); the
    target is T + 10 blanks followed by the 10 symbols. Loss: mean cross-entropy over all steps
    and 9 output classes (a0..a8). The memoryless strategy (blanks, then a uniform guess over
    8 symbols) scores 10 ln 8 / (T + 20). Error = that mean cross-entropy; solved = below a
    tenth of the baseline.
    """

    name = "copy"
    input_size = 10
    output_size = 9
    per_step = True
    classification = True
    error_name = "cross-entropy"
    success = "cross-entropy below a tenth of the memoryless 10 ln 8 / (T + 20)"
    BLANK, DELIMITER, RECALL = 8, 9, 10

    def __init__(self, length: int = 100):
        self.length = check_int("length", length, minimum=1)

    def batch(self, n, gen):
        T, k = self.length, self.RECALL
        symbols = torch.randint(0, 8, (n, k), generator=gen)
        x = torch.full((n, T + 2 * k), self.BLANK, dtype=torch.long)
        x[:, :k] = symbols
        x[:, T + k - 1] = self.DELIMITER
        y = torch.full((n, T + 2 * k), self.BLANK, dtype=torch.long)
        y[:, -k:] = symbols
        return _one_hot(x, 10), y

    def error(self, out, y):
        return self.loss(out.detach(), y).item()

    def solved(self, error):
        return error < self.baseline().loss / 10

    def recall_accuracy(self, out: Tensor, y: Tensor) -> float:
        """Share of the 10 recalled symbols predicted right."""
        k = self.RECALL
        return (out[:, -k:].argmax(-1) == y[:, -k:]).float().mean().item()

    def baseline(self):
        value = self.RECALL * math.log(8) / (self.length + 2 * self.RECALL)
        return Baseline("blanks, then uniform over 8 symbols", value, value, "Arjovsky et al. 2016 §4.1: 10 ln 8 / (T + 20)")

    def baseline_output(self, x):
        n, steps = x.shape[:2]
        k = self.RECALL
        logits = torch.full((n, steps, self.output_size), -1e4)
        logits[:, : steps - k, self.BLANK] = 0.0
        logits[:, steps - k :, :8] = 0.0
        return logits
