"""Every registered experiment: metadata, a smoke run that writes a well-formed result, and the
quick presets cheap enough to run here reproduce their claims."""

from __future__ import annotations

import dataclasses
import json
from fnmatch import fnmatchcase

import pytest

from gradguard.lab import registry, runner
from gradguard import _io
from gradguard.lab.registry import STATUS_PASS, STATUS_SETUP, Verdict
from gradguard.report import data

NAMES = registry.names()


def test_all_ten_experiments_of_the_issue_are_registered():
    assert set(NAMES) >= {"activations", "deep-flow", "deep-train", "bptt", "clipping", "clip-threshold", "long-range", "regularization", "timeseries", "image"}


@pytest.mark.parametrize("name", NAMES)
def test_metadata(name):
    exp = registry.get(name)
    assert exp.claim and exp.anchor and exp.short_anchor and exp.quick_seconds > 0
    assert {"quick", "full", "smoke"} <= set(exp.presets) <= {"quick", "standard", "full", "smoke"}
    for preset in exp.presets.values():
        assert isinstance(preset, exp.config)
        variants = exp.variants(preset)
        assert variants and len(set(variants)) == len(variants)
    assert exp.run.__doc__ is None or isinstance(exp.run.__doc__, str)
    module = __import__(exp.run.__module__, fromlist=["x"])
    assert module.__doc__ and len(module.__doc__) > 80  # every experiment file says what it does


@pytest.mark.parametrize("name", NAMES)
def test_smoke_preset_writes_a_well_formed_result(name, tmp_path):
    result = runner.run_experiment(name, preset="smoke", out=tmp_path, device="cpu", workers=1)
    exp = registry.get(name)
    on_disk = json.loads((tmp_path / name / "smoke" / "result.json").read_text())  # strict JSON
    assert on_disk["experiment"] == name and on_disk["claim"] == exp.claim and on_disk["anchor"] == exp.anchor
    verdict = result["verdict"]
    assert verdict["status"] == STATUS_SETUP, result.get("errors")  # a smoke run judges no claim
    assert verdict["criterion"] and isinstance(verdict["measured"], dict)
    assert len(result["jobs"]) == len(exp.variants(exp.presets["smoke"])) * exp.seeds["smoke"]
    assert all(j["metrics"] for j in result["jobs"])
    assert on_disk["config"] == json.loads(_io.dumps(dataclasses.asdict(exp.presets["smoke"])))
    jobs = list((tmp_path / name / "smoke" / "jobs").glob("*.json"))
    assert len(jobs) == len(result["jobs"])
    # every experiment declares its figures, and each one whose variants ran draws every one of them
    assert exp.figures and on_disk["figures"] == [f.to_dict() for f in exp.figures]
    ran = exp.variants(exp.presets["smoke"])
    expected = [f for f in exp.figures if not f.variants or any(fnmatchcase(v, p) for v in ran for p in f.variants)]
    (claim,) = data.load(tmp_path)[0].claims
    assert [f.title for f in claim.figures] == [f.title for f in expected], claim.notes
    for spec, fig in zip(expected, claim.figures):
        lines = [c.label for c in fig.curves if not c.reference]
        assert lines == [v for v in ran if not spec.variants or any(fnmatchcase(v, p) for p in spec.variants)], fig.notes
        assert not [n for n in fig.notes if "drawn for" in n or "x values" in n], fig.notes


@pytest.mark.parametrize("name", ["activations", "bptt"])
def test_quick_presets_that_take_seconds_reproduce_their_claim(name, tmp_path):
    result = runner.run_experiment(name, preset="quick", out=tmp_path, device="cpu", workers=1, keep_stores=False)
    assert result["verdict"]["status"] == STATUS_PASS, result["verdict"]["summary"]


def test_bptt_quick_numbers_match_the_computed_anchors(tmp_path):
    result = runner.run_experiment("bptt", preset="quick", out=tmp_path, device="cpu", workers=1, keep_stores=False)
    anchors = result["verdict"]["measured"]["anchors"]
    for name in ("s=0.9 k=10", "s=1.5 k=10", "s=3 k=10"):
        measured, reference = anchors[name]["measured"], anchors[name]["reference"]
        assert reference / 3 < measured < reference * 3, name


def test_verdict_status_words():
    assert Verdict(True, "c", "s").status == "pass"
    assert Verdict(False, "c", "s").status == "fail"
    assert Verdict(False, "c", "s", scale_limited=True).status == "not reproduced at quick scale"
    assert Verdict(True, "c", "s", scale_limited=True).status == "pass"
    assert Verdict(True, "c", "s", setup_only=True).status == "set-up ran (smoke)"
    assert Verdict(True, "c", "s", error=True).status == "error"


def test_unknown_experiment_suggests_close_matches():
    with pytest.raises(ValueError, match="Did you mean 'clipping'"):
        registry.get("cliping")
    with pytest.raises(ValueError, match="Did you mean 'deep-train'"):
        registry.get("deep_trian")


def test_config_overrides_are_typed_and_checked():
    exp = registry.get("clipping")
    cfg = exp.preset("quick", {"steps": "7", "lr": "0.25", "variants": "none,norm"})
    assert cfg.steps == 7 and cfg.lr == 0.25 and cfg.variants == ("none", "norm")
    with pytest.raises(ValueError, match="Did you mean 'steps'"):
        exp.preset("quick", {"stepz": "7"})
    with pytest.raises(ValueError, match="expects a int"):
        exp.preset("quick", {"steps": "many"})
    with pytest.raises(ValueError, match="unknown preset"):
        exp.preset("quik")
    flow = registry.get("deep-flow").preset("quick", {"depths": "3,4"})
    assert flow.depths == (3, 4)
