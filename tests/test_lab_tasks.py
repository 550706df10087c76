"""Lab tasks: every baseline measured on its own generator, the layout of each input, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from gradguard.lab.tasks import TASKS, Adding, CopyMemory, Digits, Multiplication, Sunspots, TemporalOrder, make_task, sunspot_series


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def measured(task, n=20000, seed=0):
    x, y = task.test_set() if hasattr(task, "test_set") else task.batch(n, gen(seed))
    out = task.baseline_output(x)
    return task.loss(out, y).item(), task.error(out, y)


# ---------------------------------------------------------------- baselines
def test_modern_adding_predicting_one_scores_one_sixth():
    loss, error = measured(Adding(100, "modern"))
    assert abs(loss - 1 / 6) < 0.01
    assert Adding(100).baseline().loss == pytest.approx(1 / 6)


def test_pascanu_adding_predicting_half_gets_a_24th_and_36_percent_wrong():
    task = Adding(100, "pascanu")
    loss, error = measured(task)
    assert abs(loss - 1 / 24) < 0.003
    assert abs(error - 0.36) < 0.015
    assert task.baseline().error == pytest.approx(0.36)


def test_lstm1997_adding_baseline_matches_its_analytic_value():
    task = Adding(100, "1997")
    loss, error = measured(task)
    assert abs(loss - task.baseline().loss) < 0.002
    assert abs(error - task.baseline().error) < 0.015
    zero = 0.1 + 0.9 / 49  # the first pair marked by X1 or X2: its value counts as 0
    assert task.baseline().loss == pytest.approx((2 - zero) / 48)


def test_multiplication_predicting_a_quarter():
    task = Multiplication(100)
    loss, error = measured(task)
    assert abs(loss - 7 / 144) < 0.003
    assert abs(error - task.baseline().error) < 0.015


@pytest.mark.parametrize("length", [10, 100, 200])
def test_copy_memoryless_baseline_is_10_ln8_over_T_plus_20(length):
    task = CopyMemory(length)
    loss, error = measured(task, n=2000)
    expected = 10 * math.log(8) / (length + 20)
    assert loss == pytest.approx(expected, rel=1e-5)  # exact: blanks are free, the 10 symbols cost ln 8 each
    assert task.baseline().loss == pytest.approx(expected)
    assert CopyMemory(100).baseline().loss == pytest.approx(0.1733, abs=1e-4)


@pytest.mark.parametrize("bits, chance, floor", [(2, 0.75, math.log(4)), (3, 0.875, math.log(8))])
def test_temporal_order_chance_error_and_nll_floor(bits, chance, floor):
    task = TemporalOrder(100, bits)
    loss, error = measured(task)
    assert loss == pytest.approx(floor, rel=1e-6)
    assert abs(error - chance) < 0.015
    assert task.baseline().error == pytest.approx(chance)


def test_digits_class_frequency_baseline_is_near_chance():
    task = Digits("flat")
    loss, error = measured(task)
    assert 0.85 < error < 0.95
    assert abs(loss - math.log(10)) < 0.1
    assert task.baseline().error == pytest.approx(error)


def test_sunspots_series_and_persistence_baseline():
    years, values = sunspot_series()
    assert len(values) == 309 and years[0] == 1700 and years[-1] == 2008
    task = Sunspots(window=20, test_years=60)
    x, y = task.test_set()
    assert len(y) == 60
    # persistence: the forecast is the last input year, which is the previous target
    assert torch.equal(task.baseline_output(x)[1:], y[:-1])
    loss, error = measured(task)
    assert error == pytest.approx(task.baseline().error)
    assert 0.5 < error < 1.5  # the cycle makes persistence poor in standardised units


def test_sunspots_sqrt_transform_standardises_the_square_roots():
    raw, root = Sunspots(window=20, test_years=60, transform="none"), Sunspots(window=20, test_years=60, transform="sqrt")
    _, values = sunspot_series()
    z = torch.tensor(values[: len(values) - 60]).sqrt()
    z = (z - z.mean()) / z.std(correction=0)  # the training years' mean and spread
    assert torch.allclose(root.train_set()[1][:, 0], z[20:].float(), atol=1e-5)
    assert not torch.allclose(raw.train_set()[1], root.train_set()[1])
    with pytest.raises(ValueError, match="transform"):
        Sunspots(transform="log")


# ---------------------------------------------------------------- layouts
def test_modern_adding_layout():
    x, y = Adding(50).batch(500, gen())
    markers = x[..., 1]
    assert torch.all(markers.sum(1) == 2)
    assert torch.all(markers[:, :25].sum(1) == 1) and torch.all(markers[:, 25:].sum(1) == 1)
    assert torch.allclose((x[..., 0] * markers).sum(1, keepdim=True), y)


def test_pascanu_adding_marker_windows():
    x, y = Adding(100, "pascanu").batch(500, gen())
    length = x.shape[1]
    assert 100 <= length < 110
    pos = x[..., 1].nonzero()[:, 1].reshape(-1, 2)
    assert torch.all(pos[:, 0] < int(0.1 * length)) and torch.all(pos[:, 1] >= int(0.1 * length)) and torch.all(pos[:, 1] < int(0.5 * length))
    assert torch.allclose((x[..., 0] * x[..., 1]).sum(1, keepdim=True) / 2, y)


def test_lstm1997_adding_layout():
    x, y = Adding(100, "1997").batch(2000, gen())
    assert 100 <= x.shape[1] <= 110
    marked = (x[..., 1] == 1).sum(1)
    assert torch.all(marked == 2)
    first_marked = x[:, 0, 1] == 1
    assert torch.all(x[~first_marked, 0, 1] == -1) and torch.all(x[:, -1, 1] == -1)
    assert first_marked.any() and torch.all(x[first_marked, 0, 0] == 0)  # a marked first pair counts as 0
    assert torch.all((y >= 0) & (y <= 1))
    assert torch.allclose(0.5 + (x[..., 0] * (x[..., 1] == 1)).sum(1, keepdim=True) / 4, y)
    assert torch.all((x[..., 1] == 1).float().argmax(1) < 10)


def test_copy_layout():
    task = CopyMemory(30)
    x, y = task.batch(50, gen())
    assert x.shape == (50, 50, 10)
    symbols = x.argmax(-1)
    assert torch.all(symbols[:, :10] < 8)
    assert torch.all(symbols[:, 10:39] == 8) and torch.all(symbols[:, 39] == 9) and torch.all(symbols[:, 40:] == 8)
    assert torch.all(y[:, :40] == 8) and torch.equal(y[:, 40:], symbols[:, :10])


@pytest.mark.parametrize("bits", [2, 3])
def test_temporal_order_layout_and_label(bits):
    task = TemporalOrder(100, bits)
    x, y = task.batch(1000, gen())
    symbols = x.argmax(-1)
    relevant = symbols < 2
    assert torch.all(relevant.sum(1) == bits)
    pos = relevant.nonzero()[:, 1].reshape(-1, bits)
    for i, (lo, hi) in enumerate(TemporalOrder._WINDOWS[bits]):
        assert torch.all(pos[:, i] >= int(lo * 100)) and torch.all(pos[:, i] < int(hi * 100))
    bits_seen = symbols.gather(1, pos)
    assert torch.equal(sum(bits_seen[:, i] << i for i in range(bits)), y)
    assert set(y.tolist()) == set(range(2**bits))


# ---------------------------------------------------------------- determinism and errors
@pytest.mark.parametrize("name", sorted(TASKS))
def test_same_seed_same_batch_other_seed_other_batch(name):
    kwargs = {} if name in ("digits", "sunspots") else {"length": 30}
    task = make_task(name, **kwargs)
    (x1, y1), (x2, y2), (x3, _) = task.batch(16, gen(1)), task.batch(16, gen(1)), task.batch(16, gen(2))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)


def test_unknown_task_name_suggests_close_match():
    with pytest.raises(ValueError, match="Did you mean 'adding'"):
        make_task("addding")


def test_bad_task_arguments_say_what_was_received():
    with pytest.raises(ValueError, match="bits must be 2 or 3"):
        TemporalOrder(100, bits=4)
    with pytest.raises(ValueError, match="variant"):
        Adding(100, "modernn")
    with pytest.raises(ValueError, match="leaves too few"):
        Sunspots(window=200, test_years=100)


def test_solved_criteria():
    assert Adding(50).solved(0.01) and not Adding(50).solved(0.02)
    assert TemporalOrder(50).solved(0.009) and not TemporalOrder(50).solved(0.011)
    copy = CopyMemory(100)
    assert copy.solved(copy.baseline().loss / 11) and not copy.solved(copy.baseline().loss / 9)
