"""The one atomic writer and the one JSON codec (gradguard._io) that lab results, reports and the run store use."""

from __future__ import annotations

import errno
import json
import math
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradguard import _io

values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=20,
)


def same(a, b):
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


@settings(max_examples=100, deadline=None)
@given(values)
def test_codec_round_trips_every_value_in_strict_json(value):
    if isinstance(value, str) and value in _io.NONFINITE:
        return  # the one ambiguity: these strings read back as numbers, by design
    text = _io.dumps(value)
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    back = _io.loads(text)
    if not any(isinstance(v, str) and v in _io.NONFINITE for v in _leaves(value)):
        assert same(back, value)


def _leaves(v):
    if isinstance(v, dict):
        for x in v.values():
            yield from _leaves(x)
    elif isinstance(v, list):
        for x in v:
            yield from _leaves(x)
    else:
        yield v


def test_codec_writes_tensors_arrays_and_literal_tokens_for_the_store():
    data = {"t": torch.tensor([1.0, math.inf]), "a": np.array([math.nan]), "s": np.float32(2.5)}
    assert _io.dumps(data) == '{"t": [1.0, "inf"], "a": ["nan"], "s": 2.5}'
    assert _io.dumps(data, literal_nonfinite=True) == '{"t": [1.0, Infinity], "a": [NaN], "s": 2.5}'
    with pytest.raises(TypeError, match="cannot write a object as JSON"):
        _io.dumps(object())


def test_atomic_json_round_trips_non_finite_numbers(tmp_path):
    path = tmp_path / "a" / "r.json"
    _io.write_json(path, {"x": math.inf, "y": [math.nan, -math.inf, 1.5], "s": "text"})
    back = _io.read_json(path)
    assert back["x"] == math.inf and math.isnan(back["y"][0]) and back["y"][1:] == [-math.inf, 1.5] and back["s"] == "text"
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_torn_or_missing_file_reads_as_none(tmp_path):
    (tmp_path / "torn.json").write_text('{"metrics": {"a": 1')
    assert _io.read_json(tmp_path / "torn.json") is None
    assert _io.read_json(tmp_path / "missing.json") is None


@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
def test_a_full_disk_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch, where):
    path = tmp_path / "result.json"
    _io.write_json(path, {"old": 1})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "write":
        real_open = open

        class Full:
            def __init__(self, fh):
                self.fh = fh

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.fh.close()

            def write(self, data):
                full()

        monkeypatch.setattr("builtins.open", lambda *a, **k: Full(real_open(*a, **k)))
    else:
        monkeypatch.setattr(os, where, full)
    with pytest.raises(OSError, match="No space left"):
        _io.write_json(path, {"new": 2})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
    assert _io.read_json(path) == {"old": 1}
