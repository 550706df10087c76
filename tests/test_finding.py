"""Finding: the dict round trip (old dicts without caused_by/fix load), and the causal order."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from gradguard._finding import CODES, SEVERITIES, Finding, by_severity, causal_order


def test_round_trip_with_cause_and_fix():
    f = Finding("NONFINITE", "error", "NaN", ["a"], {"x": float("nan")}, "lower it", 7, "LR_TOO_HIGH", {"lr": 3e-4, "warmup_steps": 20})
    d = json.loads(json.dumps(f.to_dict()))
    back = Finding.from_dict(d)
    assert back.caused_by == "LR_TOO_HIGH" and back.fix == {"lr": 3e-4, "warmup_steps": 20}
    assert (back.code, back.severity, back.where, back.step, back.remedy) == (f.code, f.severity, f.where, f.step, f.remedy)


def test_old_dicts_load():
    old = {"code": "EXPLODING_GRADIENT", "severity": "error", "message": "m", "where": [], "evidence": {}, "remedy": "r", "step": 3}
    f = Finding.from_dict(old)
    assert f.caused_by is None and f.fix == {}


def test_cause_first_then_its_symptoms():
    symptom = Finding("NONFINITE", "error", "nan", caused_by="LR_TOO_HIGH")
    other = Finding("LOSS_OSCILLATION", "warning", "osc")
    cause = Finding("LR_TOO_HIGH", "error", "lr")
    info = Finding("CLIP_THRESHOLD", "info", "t", caused_by="LR_TOO_HIGH")
    ordered = causal_order([other, symptom, info, cause])
    assert [f.code for f in ordered] == ["LR_TOO_HIGH", "NONFINITE", "CLIP_THRESHOLD", "LOSS_OSCILLATION"]
    assert by_severity(ordered) == ordered


def test_a_symptom_whose_cause_is_absent_is_a_root():
    lone = Finding("NONFINITE", "error", "nan", caused_by="LR_TOO_HIGH")
    assert causal_order([Finding("CLIP_THRESHOLD", "info", "t"), lone])[0] is lone


def test_same_severity_the_more_fundamental_cause_first():
    ordered = causal_order([Finding("LR_TOO_HIGH", "error", "a"), Finding("NONFINITE_INPUT", "error", "b")])
    assert ordered[0].code == "NONFINITE_INPUT"


@st.composite
def finding(draw):
    """A finding whose cause (if any) comes earlier in CODES: every chain of causes ends."""
    i = draw(st.integers(0, len(CODES) - 1))
    cause = draw(st.one_of(st.none(), st.sampled_from(CODES[:i]))) if i else None
    return Finding(CODES[i], draw(st.sampled_from(SEVERITIES)), "m", caused_by=cause)


@given(st.lists(finding(), max_size=8))
def test_causal_order_is_a_stable_permutation(items):
    ordered = causal_order(items)
    assert sorted(map(id, ordered)) == sorted(map(id, items))
    assert causal_order(ordered) == ordered
    position = {id(f): i for i, f in enumerate(ordered)}
    for f in items:  # a symptom comes right after a finding with its cause's code, when one is present
        causes = [g for g in items if g.code == f.caused_by]
        if causes:
            assert any(position[id(g)] < position[id(f)] for g in causes)
    roots = [f for f in ordered if f.caused_by not in {g.code for g in items}]
    ranks = [(-SEVERITIES.index(f.severity), CODES.index(f.code)) for f in roots]
    assert ranks == sorted(ranks)  # roots: most urgent, then most fundamental, first
