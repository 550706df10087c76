"""Every lab verdict can fail and means its claim: each judge, on synthetic job results, passes a
healthy run and fails a deliberately broken one (a diverged RNN, a residual net that does not
train, an AR model that beats the RNN...). Cheap: no training, only the judging functions."""

from __future__ import annotations

import dataclasses
import math

from gradguard.lab import registry
from gradguard.lab.registry import STATUS_FAIL, STATUS_PASS, STATUS_SCALE


def judge(name, jobs, preset="quick", **overrides):
    exp = registry.get(name)
    cfg = dataclasses.replace(exp.presets[preset], **overrides)
    return exp.judge(cfg, [{"variant": v, "seed": 0, "metrics": m} for v, m in jobs.items()])


# ---------------------------------------------------------------- long-range
def long_range(rnn=0.162, lstm=0.004, gru=0.005, problem="adding:100", copy_lstm=None, **overrides):
    task, length = problem.split(":")
    base = 1 / 6 if task == "adding" else 10 * math.log(8) / (int(length) + 20)
    jobs = {f"{task}:T{length}:rnn-clip": {"test_error": rnn, "baseline_error": base}, f"{task}:T{length}:lstm": {"test_error": lstm if copy_lstm is None else copy_lstm, "baseline_error": base}, f"{task}:T{length}:gru": {"test_error": gru, "baseline_error": base}}
    return judge("long-range", jobs, problems=(problem,), copy_models=("rnn-clip", "lstm", "gru"), **overrides)


def test_long_range_passes_gated_cells_below_the_bar_and_a_stuck_rnn():
    assert long_range().status == STATUS_PASS


def test_long_range_fails_an_rnn_that_diverged():
    v = long_range(rnn=0.48)  # 2.9x the baseline: diverged, not stuck
    assert v.status == STATUS_FAIL and "NO" in v.summary


def test_long_range_fails_an_rnn_that_solves_it():
    assert long_range(rnn=0.01).status == STATUS_FAIL  # 0.06x: the RNN did not stay at the baseline


def test_long_range_fails_an_lstm_above_the_bar_at_the_shown_scale():
    v = long_range(lstm=0.02)  # below a tenth of the baseline (the old bar) but not below 0.01
    assert v.status == STATUS_FAIL  # T = 100 at 3,000 steps is a scale the claim was shown at: no excuse


def test_long_range_calls_a_failure_beyond_the_shown_scale_not_reproduced():
    assert long_range(lstm=0.05, problem="adding:400").status == STATUS_SCALE


def test_long_range_copy_lstm_at_the_memoryless_baseline_is_not_a_pass():
    baseline = 10 * math.log(8) / 120
    assert long_range(problem="copy:100", copy_lstm=0.9 * baseline).status == STATUS_PASS
    assert long_range(problem="copy:100", copy_lstm=baseline).status != STATUS_PASS


def test_long_range_copy_failure_is_plain_at_the_measured_budget_and_scale_limited_below_it():
    baseline = 10 * math.log(8) / 120
    assert long_range(problem="copy:100", copy_lstm=baseline, copy_steps=4000).status == STATUS_FAIL  # the budget it was shown at
    assert long_range(problem="copy:100", copy_lstm=baseline, copy_steps=1000).status == STATUS_SCALE  # below the plateau's end


def test_long_range_judges_copy_only_at_t100_where_the_paper_claims_it():
    baseline = 10 * math.log(8) / 220
    v = long_range(problem="copy:200", copy_lstm=baseline)  # the uRNN's LSTM stays at the baseline beyond T = 100
    assert "copy:T200:lstm" in v.measured["reported_only"] and not v.measured["checks"]


# ---------------------------------------------------------------- image
def image(**errors):
    err = {"plain": 0.91, "batchnorm": 0.03, "residual": 0.05, "resnet": 0.03, **errors}
    return judge("image", {v: {"test_error": e, "final_train_loss": 1.0, "init_error_ratio": 1.0} for v, e in err.items()})


def test_image_passes_trained_nets_and_fails_a_residual_net_that_does_not_train():
    assert image().status == STATUS_PASS
    assert image(residual=0.61).status == STATUS_FAIL  # lower loss than plain, but 61% test error
    assert image(plain=0.3).status == STATUS_FAIL  # a plain net that trains: the claim does not hold


# ---------------------------------------------------------------- timeseries
def timeseries(ar=0.167, **mse):
    cells = {"rnn": 0.165, "lstm": 0.16, "gru": 0.155, **mse}
    metrics = {"ar_test_mse": ar, "ar_val_mse": 0.131, "ar_p": 9, "persistence_mse": 0.9, "val_mse": 0.1}
    return judge("timeseries", {c: {**metrics, "test_mse": v} for c, v in cells.items()})


def test_timeseries_fails_when_the_ar_model_beats_a_recurrent_one():
    assert timeseries().status == STATUS_PASS
    assert timeseries(gru=0.17).status == STATUS_FAIL  # one cell worse than the AR is enough
    assert timeseries(rnn=0.167).status == STATUS_FAIL  # a tie is not a win
    assert timeseries(ar=0.15).status == STATUS_FAIL
    assert timeseries(lstm=math.nan).status == STATUS_FAIL  # a diverged cell never passes
    assert "AR(9) 0.131" in timeseries().summary  # the validation comparison is reported beside
    assert "on the test years lstm does not" in timeseries(lstm=0.17).summary  # names the cell that loses
    assert "on the test years" not in timeseries().summary


# ---------------------------------------------------------------- clipping
def clipping(**mse):
    values = {"none": math.inf, "norm": 0.03, "value": 0.1, "tensor_norm": 0.05, "agc": 0.12, "autoclip": 0.04, "zclip": 0.04, **mse}
    jobs = {v: {"test_mse": m, "diverged": not math.isfinite(m) or m > 10 / 6, "clipped_share": 0.5, "skipped_steps": 0, "baseline_mse": 1 / 6} for v, m in values.items()}
    return judge("clipping", jobs)


def test_clipping_fails_when_clipping_does_not_learn_or_a_clipper_diverges():
    assert clipping().status == STATUS_PASS
    assert clipping(norm=0.15).status == STATUS_FAIL  # finite, but not below half the baseline
    assert clipping(zclip=math.inf).status == STATUS_FAIL  # a clipper diverged at its defaults
    assert clipping(none=0.2).status == STATUS_FAIL  # the unclipped run did not diverge: no point shown


# ---------------------------------------------------------------- clip-threshold
def clip_threshold(low_mse=0.9, low_curve_decay=0.1, mean_norm=0.6):
    """Thresholds <= 0.03 (a decade below 0.5 x the mean norm 0.6) end at ``low_mse`` and their training
    loss decays at ``low_curve_decay`` per step; the rest end at 0.3 and decay at 0.1 per step."""
    cfg = registry.get("clip-threshold").presets["quick"]
    steps = [10.0 * i + 5 for i in range(50)]

    def job(mse, decay=0.1):
        return {"test_mse": mse, "persistence_mse": 0.88, "loss_curve": [1.0 * math.exp(-decay * x) + 0.2 for x in steps], "loss_curve_step": steps}

    jobs = {f"max_norm={t:g}": job(low_mse, low_curve_decay) if t <= 0.03 else job(0.3) for t in cfg.thresholds}
    jobs["none"] = {"test_mse": math.inf, "persistence_mse": 0.88}
    jobs["recommended"] = {"test_mse": 0.3, "persistence_mse": 0.88, "threshold": 1.0, "probe_mean_norm": mean_norm}
    return judge("clip-threshold", jobs)


def test_clip_threshold_says_plainly_whether_the_lower_edge_shows():
    worse = clip_threshold(low_mse=0.9)  # tiny thresholds end 3x worse at equal steps
    assert worse.measured["lower_edge_shown"] and "lower edge SHOWN" in worse.summary and "(worse)" in worse.summary
    slower = clip_threshold(low_mse=0.3, low_curve_decay=0.01)  # as good at the end, 10x slower to get there
    assert slower.measured["lower_edge_shown"] and "(slower)" in slower.summary
    hidden = clip_threshold(low_mse=0.31)  # tiny thresholds as good and as fast as the range: said, not hidden
    assert hidden.measured["lower_edge_shown"] is False and "lower edge NOT SHOWN" in hidden.summary and "neither worse nor slower" in hidden.summary
    assert "lower edge not shown" in hidden.headline  # in the terminal table too


def test_clip_threshold_lower_edge_needs_a_threshold_far_below_the_range():
    untested = clip_threshold(mean_norm=0.05)  # 0.5 m = 0.025: no swept threshold is at or below 0.0025
    assert untested.measured["lower_edge_shown"] is None and "lower edge NOT TESTED" in untested.summary


# ---------------------------------------------------------------- deep-flow
def deep_flow(**override):
    cfg = registry.get("deep-flow").presets["quick"]
    base = {"sigmoid": 1e-12, "tanh:he": {5: 0.9, 10: 1.0, 20: 1.9, 50: 8.6}, "relu:he": 1.1, "relu:xavier": 1e-3, "other": 0.5}
    jobs = {}
    for v in registry.get("deep-flow").variants(cfg):
        act, init, _, _ = v.split(":")
        metrics = {}
        for d in cfg.depths:
            key = f"{act}:{init}"
            if act == "sigmoid":
                r = override.get(key, base["sigmoid"])
            elif key == "tanh:he":
                r = override.get(key, base["tanh:he"])[d]
            else:
                r = override.get(key, base.get(key, base["other"]))
            metrics[str(d)] = {"error_ratio": r, "weight_grad_ratio": 0.08}
        jobs[v] = metrics
    return judge("deep-flow", jobs)


def test_deep_flow_fails_a_tanh_he_net_that_does_not_grow_or_a_sigmoid_init_that_does_not_vanish():
    assert deep_flow().status == STATUS_PASS
    assert deep_flow(**{"tanh:he": {5: 1.0, 10: 1.0, 20: 0.9, 50: 0.8}}).status == STATUS_FAIL
    assert deep_flow(**{"sigmoid:he": 1e-3}).status == STATUS_FAIL


# ---------------------------------------------------------------- deep-train
def deep_train(**errors):
    err = {"sigmoid": 0.9, "relu-default": 0.9, "relu-xavier": 0.4, "relu-he": 0.05, "relu-he-batchnorm": 0.04, "relu-residual": 0.06, "sigmoid-batchnorm": 0.08, **errors}
    return judge("deep-train", {v: {"test_error": e, "init_error_ratio": 1.0} for v, e in err.items()})


def test_deep_train_isolates_he_init():
    assert deep_train().status == STATUS_PASS
    assert deep_train(**{"relu-default": 0.1}).status == STATUS_FAIL  # default init trains: the claim does not hold
    assert deep_train(**{"relu-xavier": 0.03}).status == STATUS_FAIL  # Xavier beats He


# ---------------------------------------------------------------- regularization
def regularization(omega_error, steps=1000, none_error=0.74, preset="quick"):
    errors = {"none": none_error, "l2": 0.74, "grad_norm": 0.74, "omega": omega_error}
    penalties = registry.get("regularization").presets[preset].penalties
    return judge("regularization", {p: {"ratio_after": 1e-3, "ratio_before": 1e-5, "test_error": errors[p], "steps": steps} for p in penalties}, preset=preset)


def test_regularization_never_passes_an_unsolved_task():
    assert regularization(0.005).status == STATUS_PASS
    assert regularization(0.47).status != STATUS_PASS  # the old verdict passed this
    assert regularization(0.47).status == STATUS_SCALE  # 1,000 of the paper's 5M updates
    assert regularization(0.011, preset="standard").status == STATUS_SCALE  # just above 1%: not solved
    assert "not reproduced at this scale" in regularization(0.3, preset="standard", none_error=0.005).summary


def test_regularization_says_whether_omega_beats_clipping_alone():
    shown = regularization(0.005, steps=15_000, none_error=0.6, preset="standard")
    assert shown.status == STATUS_PASS and shown.measured["omega_advantage_shown"] is True
    assert "Omega's advantage shows" in shown.summary and "advantage shown" in shown.headline
    both = regularization(0.005, steps=15_000, none_error=0.001, preset="standard")
    assert both.status == STATUS_PASS and both.measured["omega_advantage_shown"] is False  # a pass, but no advantage claimed
    assert "not shown" in both.summary and "not shown" in both.headline
    assert regularization(0.5, none_error=0.001, preset="standard").measured["omega_advantage_shown"] is None
