"""History: columns over steps, capped at max_steps, appending at the same cost at any length."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gradguard._history import SCALARS, Chunk, History


def chunk(first: int, size: int, modules: int = 2) -> Chunk:
    steps = np.arange(first, first + size)
    return Chunk(steps, {k: steps.astype(float) for k in SCALARS}, [f"m{j}" for j in range(modules)], np.tile(steps[:, None], (1, modules)).astype(float))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=0, max_size=40), st.one_of(st.none(), st.integers(1, 60)))
def test_history_keeps_the_most_recent_steps_and_at_least_max_steps(sizes, max_steps):
    history = History(["m0", "m1"], max_steps=max_steps)
    first = 1
    for size in sizes:
        history.append(chunk(first, size))
        first += size
    total = first - 1
    kept = history.step
    assert len(history) == len(kept)
    np.testing.assert_array_equal(kept, np.arange(total - len(kept) + 1, total + 1))  # the latest, in order
    if max_steps is None:
        assert len(kept) == total
    else:
        assert len(kept) >= min(total, max_steps)  # whole chunks are dropped, never too many
        assert len(kept) - len(history.chunks()[0]) < max_steps if history.chunks() else True
    np.testing.assert_array_equal(history.module_norms[:, 1], kept)
    np.testing.assert_array_equal(history.norm_before, kept)


def test_appending_does_not_walk_the_whole_history(monkeypatch):
    """A run of a million steps flushes 100,000 chunks; each append must not visit every chunk."""
    calls = {"n": 0}
    original = Chunk.__len__

    def counting(self):
        calls["n"] += 1
        return original(self)

    monkeypatch.setattr(Chunk, "__len__", counting)
    history = History(["m0", "m1"], max_steps=5_000)
    for i in range(3_000):
        history.append(chunk(10 * i + 1, 10))
    assert len(history) >= 5_000
    assert calls["n"] <= 4 * 3_000, calls["n"]
