"""A symptom linked to its cause carries the cause's remedy and fix, not its own: a clip threshold
computed from norms that explode because of the init or the learning rate treats the symptom."""

from __future__ import annotations

import numpy as np

from gradguard._finding import Finding
from gradguard._rules import diagnose, link_causes
from tests.test_rules import layers, run

GROWING = [0.5 * 1.1**i for i in range(60)]  # 170x over the run, finite


def test_exploding_from_the_init_points_at_the_init():
    found = {f.code: f for f in diagnose(run(GROWING, records={"preact_std": layers(3.0 ** np.arange(7))}))}
    exploding = found["EXPLODING_GRADIENT"]
    assert exploding.caused_by == "INIT_SCALE"
    assert exploding.fix == found["INIT_SCALE"].fix == {"init": "he"}
    assert "clip" not in exploding.remedy.lower() and "kaiming_normal_" in exploding.remedy and "INIT_SCALE" in exploding.remedy


def test_exploding_from_the_learning_rate_points_at_the_learning_rate():
    loss = [2.0 - 0.02 * i for i in range(30)] + [1.4 + 0.05 * i for i in range(30)]
    found = {f.code: f for f in diagnose(run(GROWING, lr=np.linspace(0.1, 40, 60), loss=loss))}
    assert found["EXPLODING_GRADIENT"].caused_by == "LR_TOO_HIGH"
    for code in ("EXPLODING_GRADIENT", "CLIP_THRESHOLD"):  # CLIP_THRESHOLD via EXPLODING_GRADIENT: the root's fix
        assert found[code].fix == found["LR_TOO_HIGH"].fix and "clip" not in found[code].fix


def symptom(code, **kw):
    return Finding(code, "error", "...", remedy=f"own remedy of {code}", fix={"clip": 1234.0}, **kw)


def test_chains_lead_to_the_root_and_unlinked_symptoms_keep_their_own():
    cause = Finding("LOSS_NOT_AVERAGED", "error", "...", remedy="Average the loss over the batch.", fix={"loss_reduction": "mean"})
    lr = Finding("LR_TOO_HIGH", "error", "...", remedy="Lower the learning rate.", fix={"lr": 0.1})
    linked = {f.code: f for f in link_causes([cause, lr, symptom("NONFINITE"), symptom("GRADIENT_SPIKE", caused_by="SATURATION")])}
    assert linked["LR_TOO_HIGH"].caused_by == "LOSS_NOT_AVERAGED" and linked["NONFINITE"].caused_by == "LOSS_NOT_AVERAGED"
    for code in ("LR_TOO_HIGH", "NONFINITE"):
        assert linked[code].fix == {"loss_reduction": "mean"}, code
        assert linked[code].remedy.startswith("This follows from LOSS_NOT_AVERAGED; fix that first: average the loss"), code
    # caused_by names a finding that is not there: nothing to point at
    assert linked["GRADIENT_SPIKE"].remedy == "own remedy of GRADIENT_SPIKE" and linked["GRADIENT_SPIKE"].fix == {"clip": 1234.0}
    assert linked["LOSS_NOT_AVERAGED"].fix == {"loss_reduction": "mean"}


def test_a_cause_without_a_remedy_leaves_the_symptoms():
    linked = {f.code: f for f in link_causes([Finding("INIT_SCALE", "warning", "..."), symptom("EXPLODING_GRADIENT")])}
    assert linked["EXPLODING_GRADIENT"].caused_by == "INIT_SCALE"
    assert linked["EXPLODING_GRADIENT"].remedy == "own remedy of EXPLODING_GRADIENT"
