"""Real data shipped inside pip packages: scikit-learn's digits and statsmodels' sunspots.

Nothing is downloaded. Splits are fixed (``split_seed``), so every run of every experiment sees
the same train and test sets; the experiment's seed only changes the model and the batch order.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gradguard._errors import check_choice, check_fraction, check_int
from gradguard._extras import require
from gradguard.lab.tasks._base import Baseline, Task, argmax_error


def _package_file(package: str, *parts: str) -> Path | None:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    return path if path.exists() else None


@functools.lru_cache(maxsize=1)
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: 1797 images of 8x8 pixels, values 0-16, 10 classes.

    Read straight from the CSV inside scikit-learn (importing ``sklearn`` takes a second or two,
    paid again by every worker process); its own loader is the fallback.
    """
    path = _package_file("sklearn", "datasets", "data", "digits.csv.gz")
    if path is None:
        datasets = require("sklearn.datasets", "the digits tasks")
        bunch = datasets.load_digits()
        return bunch.data.astype(np.float32) / 16.0, bunch.target.astype(np.int64)
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    return table[:, :-1] / 16.0, table[:, -1].astype(np.int64)


@functools.lru_cache(maxsize=1)
def sunspot_series() -> tuple[np.ndarray, np.ndarray]:
    """statsmodels' bundled yearly sunspot numbers, 1700-2008: (years, values), 309 each.

    Read straight from the CSV inside the statsmodels package (importing ``statsmodels.api`` would
    take seconds and pull in pandas).
    """
    path = _package_file("statsmodels", "datasets", "sunspots", "sunspots.csv")
    if path is None:  # not installed (raises with the install command), or its data files moved
        sunspots = require("statsmodels.datasets.sunspots", "the sunspots task")
        frame = sunspots.load_pandas().data
        return frame["YEAR"].to_numpy(np.float64), frame["SUNACTIVITY"].to_numpy(np.float64)
    table = np.loadtxt(path, delimiter=",", skiprows=1)
    return table[:, 0], table[:, 1]


DIGIT_FORMS = ("pixels", "rows", "image", "flat")


class Digits(Task):
    """scikit-learn's digits as a classification task, in four forms.

    - ``"pixels"``: a 64-step sequence of one pixel each (the pixel-MNIST analogue of Le et al.
      2015); with ``permute=True`` the pixels come in one fixed random order (permuted MNIST).
    - ``"rows"``: 8 steps of 8 pixels.
    - ``"image"``: (1, 8, 8) images for CNNs; ``"flat"``: 64 features for MLPs.

    A fixed random split (``split_seed``) holds out ``test_fraction`` of the
    1797 images. Baseline: the training set's class frequencies (argmax: its most common class),
    about 90% error and loss ln 10.
    """

    classification = True
    output_size = 10
    error_name = "test error"
    success = "test error far below the 90% of chance"

    def __init__(self, form: str = "pixels", permute: bool = False, test_fraction: float = 0.25, split_seed: int = 0):
        self.form = check_choice("form", form, DIGIT_FORMS)
        self.permute = bool(permute)
        self.test_fraction = check_fraction("test_fraction", test_fraction)
        self.split_seed = check_int("split_seed", split_seed)
        self.name = f"digits-{form}" + ("-permuted" if permute else "")
        self.input_size = {"pixels": 1, "rows": 8, "image": 1, "flat": 64}[form]
        x, y = digits_arrays()
        rng = np.random.default_rng(self.split_seed)
        order = rng.permutation(len(x))
        n_test = int(round(self.test_fraction * len(x)))
        if self.permute:
            x = x[:, rng.permutation(64)]
        self._train = (self._shape(torch.from_numpy(x[order[n_test:]])), torch.from_numpy(y[order[n_test:]]))
        self._test = (self._shape(torch.from_numpy(x[order[:n_test]])), torch.from_numpy(y[order[:n_test]]))

    def _shape(self, x: Tensor) -> Tensor:
        if self.form == "pixels":
            return x.reshape(-1, 64, 1)
        if self.form == "rows":
            return x.reshape(-1, 8, 8)
        if self.form == "image":
            return x.reshape(-1, 1, 8, 8)
        return x

    @property
    def train_size(self) -> int:
        return len(self._train[1])

    def batch(self, n, gen):
        idx = torch.randint(0, self.train_size, (n,), generator=gen)
        return self._train[0][idx], self._train[1][idx]

    def train_set(self) -> tuple[Tensor, Tensor]:
        return self._train

    def test_set(self) -> tuple[Tensor, Tensor]:
        return self._test

    def error(self, out, y):
        return argmax_error(out, y)

    def solved(self, error):
        return error < 0.1

    def _class_log_freq(self) -> Tensor:
        counts = torch.bincount(self._train[1], minlength=10).double()
        return (counts / counts.sum()).log().float()

    def baseline(self):
        x, y = self._test
        out = self.baseline_output(x)
        return Baseline("training class frequencies", self.loss(out, y).item(), self.error(out, y), "chance on 10 balanced classes: 90% error, loss ln 10")

    def baseline_output(self, x):
        """The training set's class frequencies for every input (argmax: the most common class)."""
        return self._class_log_freq().expand(len(x), 10).clone()


SUNSPOT_TRANSFORMS = ("none", "sqrt")


class Sunspots(Task):
    """One-step-ahead forecasting of yearly sunspot numbers (statsmodels' copy, 1700-2008).

    Input: the previous ``window`` years (one feature per step), standardised with the training
    years' mean and spread; target: the next year, in the same units. ``transform="sqrt"`` takes
    the square root of the sunspot numbers before standardising (the classic variance-stabilising
    transform for this series); every set, error and baseline is then on that scale. The last ``test_years``
    targets are held out, in time order (no shuffling across the split), and the ``val_years``
    before them form a validation set (model selection), also in time order. Error = test MSE in
    standardised units. Baseline: persistence (next year = this year), measured on the same test
    targets; an 11-year cycle makes it beatable, which is the point of the task.
    """

    name = "sunspots"
    input_size = 1
    output_size = 1
    error_name = "test MSE"
    success = "test MSE below the persistence forecast's"

    def __init__(self, window: int = 20, test_years: int = 60, val_years: int = 0, transform: str = "none"):
        self.window = check_int("window", window, minimum=1)
        self.test_years = check_int("test_years", test_years, minimum=1)
        self.val_years = check_int("val_years", val_years, minimum=0)
        self.transform = check_choice("transform", transform, SUNSPOT_TRANSFORMS)
        years, values = sunspot_series()
        if transform == "sqrt":
            values = np.sqrt(values)
        if window + test_years + val_years >= len(values) - 10:
            raise ValueError(f"window + test_years + val_years = {window + test_years + val_years} leaves too few of the {len(values)} years for training.")
        split = len(values) - test_years  # first target index that is held out
        mean, std = values[:split].mean(), values[:split].std()
        z = torch.tensor((values - mean) / std, dtype=torch.float32)
        windows = z.unfold(0, window + 1, 1)  # (n, window + 1): inputs then target
        targets_at = torch.arange(window, len(z))
        train = targets_at < split
        self.years = years
        self.scale = float(std)
        fit = targets_at < split - val_years  # the validation years are the last training years, in time order
        val = train & ~fit
        self._train = (windows[fit, :window, None], windows[fit, window:])
        self._val = (windows[val, :window, None], windows[val, window:])
        self._test = (windows[~train, :window, None], windows[~train, window:])

    @property
    def train_size(self) -> int:
        return len(self._train[1])

    def batch(self, n, gen):
        idx = torch.randint(0, self.train_size, (n,), generator=gen)
        return self._train[0][idx], self._train[1][idx]

    def train_set(self):
        return self._train

    def test_set(self):
        return self._test

    def val_set(self):
        """The ``val_years`` targets before the test years (empty when val_years is 0)."""
        return self._val

    def error(self, out, y):
        return torch.nn.functional.mse_loss(out.detach(), y).item()

    def solved(self, error):
        return error < self.baseline().error

    def baseline(self):
        x, y = self._test
        mse = self.error(self.baseline_output(x), y)
        return Baseline("persistence (next year = this year)", mse, mse, "measured on the held-out years")

    def baseline_output(self, x):
        return x[:, -1, :].clone()
