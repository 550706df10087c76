"""The spike detector on its own: trigger scores, the ring buffer, and module forensics."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gradguard._probes._spikes import LOOKBACK_STEPS, SpikeDetector, _ScalarEma, ema_zscores

finite_or_not = st.one_of(st.floats(1e-6, 1e6), st.sampled_from([0.0, -1.0, math.nan, math.inf]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(finite_or_not, min_size=3, max_size=3), min_size=1, max_size=40), st.integers(0, 10))
def test_the_vectorised_replay_equals_the_per_step_scalar_scores(rows, warmup):
    values = np.array(rows)
    vectorised = ema_zscores(values, z_thresh=6.0, warmup=warmup)
    for col in range(values.shape[1]):
        ema = _ScalarEma()
        scalar = [ema.score(v, i >= warmup, 6.0) for i, v in enumerate(values[:, col].tolist())]
        np.testing.assert_allclose(vectorised[:, col], scalar, rtol=1e-12, atol=1e-12)


def test_a_jump_scores_high_and_a_steady_series_does_not():
    rng = np.random.default_rng(0)
    series = np.exp(rng.normal(0.0, 0.1, 60))
    z = ema_zscores(series[:, None], 6.0, 20)[:, 0]
    assert np.abs(z).max() < 6.0
    series[50] *= 1e3
    z = ema_zscores(series[:, None], 6.0, 20)[:, 0]
    assert z[50] > 6.0 and np.argmax(z) == 50


def test_an_outlier_enters_the_averages_winsorised():
    ema = _ScalarEma()
    for _ in range(30):
        ema.score(1.0 + 0.01 * (_ % 3), True, 6.0)
    mean_before = ema.mean
    ema.score(1e30, True, 6.0)  # log = 69: far outside; it may move the mean by 6 sigma at most
    assert ema.mean - mean_before <= 6.0 * math.sqrt(max(ema.var, 1e-4)) + 1e-12
    assert ema.mean < 1.0


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 30), st.lists(st.integers(1, 25), min_size=1, max_size=12))
def test_the_ring_keeps_the_last_capacity_steps_in_order(capacity, chunk_sizes):
    detector = SpikeDetector(["a", "b"], capacity=capacity)
    step = 0
    for size in chunk_sizes:
        steps = np.arange(step + 1, step + size + 1)
        detector.score(steps, np.ones(size), np.ones(size), np.stack([steps * 1.0, -steps * 1.0], 1))
        step += size
    ring = detector._ring()
    expected = np.arange(max(1, step - capacity + 1), step + 1)
    np.testing.assert_array_equal(ring[:, 0], expected)
    np.testing.assert_array_equal(ring[:, 6], expected)  # module columns travel with their step
    np.testing.assert_array_equal(ring[:, 7], -expected)


def _steady(rng, rows, modules):
    return np.exp(rng.normal(0.0, 0.05, (rows, modules)))


def test_forensics_names_the_module_that_rose_first_within_the_look_back():
    rng = np.random.default_rng(1)
    names = ["embed", "block.0", "block.1", "head"]
    detector = SpikeDetector(names, capacity=64)
    norms = _steady(rng, 60, 4)
    norms[55:, 2] *= 50.0  # block.1 starts moving at step 56 ...
    norms[58:, :] *= 1e3  # ... and everything blows up at step 59
    steps = np.arange(1, 61)
    scores = np.concatenate([detector.score(steps[i : i + 10], norms[i : i + 10].sum(1), np.ones(10), norms[i : i + 10]) for i in range(0, 60, 10)])
    spike = int(steps[np.flatnonzero(scores[:, 0])[0]])
    assert spike == 56  # the total moved with block.1 already
    report = detector.forensics(spike, "grad_norm", float(scores[spike - 1, 1]))
    assert (report.first_module, report.first_step) == ("block.1", 56)
    assert report.first_z > 3.0
    assert len(report.dump["module_z"]) == len(report.dump["steps"]) == 56
    assert max(report.dump["steps"]) == spike


def test_forensics_with_a_short_buffer_still_warms_up_before_the_look_back():
    rng = np.random.default_rng(2)
    detector = SpikeDetector(["a", "b"], capacity=LOOKBACK_STEPS + 6)
    norms = _steady(rng, 40, 2)
    norms[39, 1] *= 1e4
    detector.score(np.arange(1, 41), norms.sum(1), np.ones(40), norms)
    report = detector.forensics(40, "grad_norm", 10.0)
    assert report.first_module == "b" and report.first_step == 40


def test_a_nonfinite_norm_is_a_spike_and_names_the_broken_module():
    detector = SpikeDetector(["a", "b", "c"], capacity=16)
    norms = np.ones((5, 3))
    norms[4, 1] = math.nan
    totals = np.array([1.0, 1.0, 1.0, 1.0, math.nan])
    scores = detector.score(np.arange(1, 6), totals, np.ones(5), norms)
    assert scores[:, 0].tolist() == [0.0, 0.0, 0.0, 0.0, 1.0]
    report = detector.forensics(5, "nonfinite", math.inf)
    assert report.first_module == "b" and report.first_step == 5
