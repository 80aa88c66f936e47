"""The verdict rule of the reproduction study: a two-level (seeds, then examples) bootstrap
of the paired per-example differences, and the bookkeeping around it."""

import json
import math
import re
import statistics

import numpy as np
import pytest
import torch

from captum_regularized.study.verdicts import (
    RULE_TEXT,
    Claim,
    ClaimVerdict,
    count_verdicts,
    judge,
    not_measured,
    spread,
    summarize,
)

R = 1000  # bootstrap resamples where the exact interval does not matter


def _claim(better="higher", margin=0.0, extra=False, **kw):
    return Claim(1, "method beats baseline", "tab", "base", "new", "metric", better,
                 extra=extra, margin=margin, **kw)


def _rows(diffs, gen_seed=0):
    """Baseline/method rows per seed whose signed difference (method - baseline) is ``diffs``."""
    g = torch.Generator().manual_seed(gen_seed)
    base = [torch.rand(len(d), generator=g, dtype=torch.float64) for d in diffs]
    meth = [b + torch.as_tensor(d, dtype=torch.float64) for b, d in zip(base, diffs)]
    return base, meth


def _noise(n, sd, mean=0.0, gen_seed=0):
    g = torch.Generator().manual_seed(gen_seed)
    return mean + sd * torch.randn(n, generator=g, dtype=torch.float64)


def _interval_re(v):
    return re.escape(f"the interval [{v.ci_low:+.3g}, {v.ci_high:+.3g}]")


# --------------------------------------------------------------------------- #
# 1. Calibration: false holds under a null effect, and power under a clear one.


def _held_share(claims, seeds, effect, seed_sd, example_sd, gen_seed, n_range=(64, 256)):
    """Share of ``claims`` simulated claims judged "held".

    Each claim has ``seeds`` seeds; seed ``s`` gets an offset N(0, seed_sd) (seed-to-seed
    variation) and between ``n_range`` examples with differences effect + offset +
    N(0, example_sd). Data are drawn in one go from a seeded generator.
    """
    g = torch.Generator().manual_seed(gen_seed)
    lo, hi = n_range
    n = torch.randint(lo, hi + 1, (claims,), generator=g).tolist()
    offsets = seed_sd * torch.randn(claims, seeds, 1, generator=g, dtype=torch.float64)
    noise = example_sd * torch.randn(claims, seeds, hi, generator=g, dtype=torch.float64)
    diff = effect + offsets + noise
    base = torch.rand(claims, seeds, hi, generator=g, dtype=torch.float64)
    meth = base + diff
    claim = _claim()
    held = 0
    for c in range(claims):
        v = judge(claim, list(base[c, :, : n[c]]), list(meth[c, :, : n[c]]),
                  resamples=R, seed=c)
        assert v.verdict in ("held", "not held", "inconclusive")
        held += v.held
    return held / claims


def test_null_effect_false_hold_rate_three_seeds_with_seed_variation():
    share = _held_share(400, 3, 0.0, seed_sd=0.02, example_sd=0.1, gen_seed=11)
    assert share <= 0.05, f"false-hold rate {share:.3f} with 3 seeds"


def test_null_effect_false_hold_rate_three_seeds_small_seed_variation():
    share = _held_share(400, 3, 0.0, seed_sd=0.005, example_sd=0.1, gen_seed=12)
    assert share <= 0.05, f"false-hold rate {share:.3f} with 3 seeds"


def test_null_effect_false_hold_rate_five_seeds():
    share = _held_share(400, 5, 0.0, seed_sd=0.02, example_sd=0.1, gen_seed=13,
                        n_range=(64, 160))
    assert share <= 0.05, f"false-hold rate {share:.3f} with 5 seeds"


def test_clear_effect_is_held_at_least_90_percent():
    share = _held_share(100, 3, 0.05, seed_sd=0.005, example_sd=0.1, gen_seed=14,
                        n_range=(256, 256))
    assert share >= 0.9, f"power {share:.3f}"


# --------------------------------------------------------------------------- #
# 2. Properties of the interval.


def test_effect_is_the_example_weighted_pooled_mean_and_inside_the_interval():
    diffs = [_noise(40, 0.1, 0.03, 1), _noise(160, 0.1, 0.01, 2), _noise(100, 0.1, 0.02, 3)]
    base, meth = _rows(diffs)
    v = judge(_claim(), base, meth, resamples=R)
    pooled = float(torch.cat(diffs).sum()) / 300
    assert v.effect == pytest.approx(pooled, abs=1e-12)
    assert v.examples == 300
    assert v.baseline_mean == pytest.approx(float(torch.cat(base).mean()), abs=1e-12)
    assert v.method_mean == pytest.approx(float(torch.cat(meth).mean()), abs=1e-12)
    assert v.ci_low < v.effect < v.ci_high


def test_effect_weights_seeds_by_their_example_count():
    # one example of +1 and three of 0: pooled mean 0.25, not the mean of seed means 0.5
    v = judge(_claim(), [[0.0], [0.0, 0.0, 0.0]], [[1.0], [0.0, 0.0, 0.0]], resamples=R)
    assert v.effect == pytest.approx(0.25)


def test_interval_narrows_as_examples_grow():
    widths = []
    for n in (50, 5000):
        base, meth = _rows([_noise(n, 0.1, gen_seed=n)])
        v = judge(_claim(), base, meth, resamples=R)
        widths.append(v.ci_high - v.ci_low)
    # the width scales like 1/sqrt(n): a factor 10 here
    assert widths[1] < widths[0] / 5
    assert widths[1] > widths[0] / 20


def test_constant_difference_gives_a_zero_width_interval():
    v = judge(_claim(), [[0.25] * 30], [[0.5] * 30], resamples=R)  # exact in binary
    assert v.ci_low == v.ci_high == v.effect == 0.25
    assert v.held and "from a single seed" in v.reason
    # several seeds with the same constant: still zero width
    v = judge(_claim(), [[0.0] * 5, [0.0] * 9], [[0.125] * 5, [0.125] * 9], resamples=R)
    assert v.ci_low == v.ci_high == 0.125


def test_few_seeds_widen_the_interval_to_the_t_interval_of_the_seed_means():
    # seeds with constant differences 1/8, 2/8, 3/8: only the seed level varies. Drawing
    # the same seed three times has probability 1/27 > 2.5 %, so the bootstrap alone ends
    # at the extreme seeds; the t interval (2 degrees of freedom) is wider and wins.
    base = [[0.0] * 20] * 3
    meth = [[0.125] * 20, [0.25] * 20, [0.375] * 20]
    v = judge(_claim(), base, meth, resamples=2000)
    half = 4.302653 * statistics.stdev([0.125, 0.25, 0.375]) / math.sqrt(3)
    assert v.effect == 0.25
    assert v.ci_low == pytest.approx(0.25 - half, abs=1e-4)
    assert v.ci_high == pytest.approx(0.25 + half, abs=1e-4)
    assert v.verdict == "inconclusive"  # three seeds of one sign are not enough here


def test_seed_to_seed_variation_widens_the_interval():
    noise = [_noise(200, 0.1, gen_seed=s) for s in range(3)]
    same = judge(_claim(), *_rows(noise), resamples=R)
    shifted = [d + off for d, off in zip(noise, (-0.05, 0.0, 0.05))]
    varied = judge(_claim(), *_rows(shifted), resamples=R)
    assert (varied.ci_high - varied.ci_low) > 3 * (same.ci_high - same.ci_low)


def test_interval_matches_an_independent_numpy_two_level_bootstrap():
    diffs = [_noise(30, 0.2, 0.05, 1), _noise(80, 0.1, -0.02, 2), _noise(50, 0.15, 0.1, 3),
             _noise(120, 0.1, 0.0, 4)]
    v = judge(_claim(), *_rows(diffs), resamples=4000)
    rng = np.random.default_rng(123)
    arrays = [d.numpy() for d in diffs]
    stats = np.empty(20000)
    for r in range(stats.size):
        picked = rng.integers(len(arrays), size=len(arrays))
        total = count = 0.0
        for s in picked:
            a = arrays[s]
            total += a[rng.integers(a.size, size=a.size)].sum()
            count += a.size
        stats[r] = total / count
    low, high = np.quantile(stats, [0.025, 0.975])
    seed_means = [float(a.mean()) for a in arrays]
    half = 3.182446 * statistics.stdev(seed_means) / math.sqrt(len(seed_means))
    low = min(low, statistics.fmean(seed_means) - half)
    high = max(high, statistics.fmean(seed_means) + half)
    width = high - low
    assert v.ci_low == pytest.approx(low, abs=0.1 * width)
    assert v.ci_high == pytest.approx(high, abs=0.1 * width)


def test_interval_is_reproducible_and_nested_by_level():
    base, meth = _rows([_noise(60, 0.1, 0.01, s) for s in range(3)])
    a = judge(_claim(), base, meth, resamples=R, seed=7)
    b = judge(_claim(), base, meth, resamples=R, seed=7)
    c = judge(_claim(), base, meth, resamples=R, seed=8)
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    assert (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)
    narrow = judge(_claim(), base, meth, resamples=R, seed=7, level=0.5)
    assert a.ci_low < narrow.ci_low < narrow.ci_high < a.ci_high


def test_tensor_and_list_inputs_agree():
    base, meth = _rows([_noise(20, 0.1, 0.05, s) for s in range(2)])
    t = judge(_claim(), base, meth, resamples=R)
    lists = judge(_claim(), [b.tolist() for b in base], [m.float().tolist() for m in meth],
                  resamples=R)
    assert t.effect == pytest.approx(lists.effect, abs=1e-6)
    assert t.verdict == lists.verdict


# --------------------------------------------------------------------------- #
# 3. Verdict boundaries and reasons.


def test_clear_improvement_is_held():
    base, meth = _rows([_noise(100, 0.05, 0.1, s) for s in range(3)])
    v = judge(_claim(), base, meth, resamples=R)
    assert v.verdict == "held" and v.held and v.measured
    assert v.seed_signs == [1, 1, 1]
    assert v.ci_low > 0
    assert re.search(_interval_re(v) + r" excludes 0 and all 3 seeds agree", v.reason)


def test_clear_loss_is_not_held():
    base, meth = _rows([_noise(100, 0.05, -0.1, s) for s in range(3)])
    v = judge(_claim(), base, meth, resamples=R)
    assert v.verdict == "not held" and not v.held
    assert v.ci_high < 0 and v.seed_signs == [-1, -1, -1]
    assert re.search(_interval_re(v) + r" is below 0: the baseline is better", v.reason)


def test_no_effect_is_inconclusive():
    base, meth = _rows([_noise(100, 0.1, 0.0, s) for s in range(3)])
    v = judge(_claim(), base, meth, resamples=R)
    assert v.verdict == "inconclusive" and not v.held
    assert v.ci_low < 0 < v.ci_high
    assert re.search(_interval_re(v) + r" includes 0$", v.reason)


def test_a_seed_disagreeing_in_sign_prevents_held():
    # eight strongly positive seeds and one slightly negative seed: the pooled interval
    # excludes zero, the verdict must still not be "held".
    diffs = [_noise(200, 0.01, 0.1, s) for s in range(8)] + [_noise(200, 0.001, -0.005, 8)]
    v = judge(_claim(), *_rows(diffs), resamples=2000)
    assert v.ci_low > 0
    assert v.seed_signs == [1] * 8 + [-1]
    assert v.verdict == "inconclusive" and not v.held
    assert v.reason.startswith("seed 9 of 9 disagrees in sign (-0.005")
    assert re.search(_interval_re(v) + r" excludes 0$", v.reason)


def test_two_seeds_disagreeing_are_both_named():
    diffs = ([_noise(200, 0.01, 0.1, s) for s in range(8)]
             + [_noise(200, 0.001, -0.005, s) for s in (8, 9)])
    v = judge(_claim(), *_rows(diffs), resamples=2000)
    assert v.ci_low > 0 and v.verdict == "inconclusive"
    assert v.reason.startswith("seeds 9 and 10 of 10 disagree in sign (")


def test_three_seeds_one_disagreeing_is_not_held():
    # with three seeds the all-negative-seed resample (1/27) also pulls the interval down
    diffs = [_noise(500, 0.01, 0.1, s) for s in range(2)] + [_noise(500, 0.001, -0.005, 2)]
    v = judge(_claim(), *_rows(diffs), resamples=2000)
    assert v.seed_signs == [1, 1, -1]
    assert v.verdict == "inconclusive" and not v.held
    assert v.ci_low < 0 < v.ci_high


def test_lower_is_better_flips_the_sign():
    base, meth = _rows([_noise(80, 0.05, -0.1, s) for s in range(3)])  # method is lower
    lower = judge(_claim("lower"), base, meth, resamples=R)
    higher = judge(_claim("higher"), base, meth, resamples=R)
    assert lower.verdict == "held" and higher.verdict == "not held"
    assert lower.effect == pytest.approx(-higher.effect, abs=1e-12)
    assert lower.ci_low == pytest.approx(-higher.ci_high, abs=1e-12)
    assert lower.ci_high == pytest.approx(-higher.ci_low, abs=1e-12)
    assert lower.seed_signs == [1, 1, 1] and higher.seed_signs == [-1, -1, -1]
    # the means are of the raw values, not of the signed differences
    assert lower.method_mean < lower.baseline_mean


def test_margin_turns_a_small_loss_into_non_inferiority():
    base, meth = _rows([_noise(200, 0.01, -0.01, s) for s in range(3)])  # small loss
    strict = judge(_claim(margin=0.0), base, meth, resamples=R)
    assert strict.verdict == "not held"
    loose = judge(_claim(margin=0.02), base, meth, resamples=R)
    assert loose.verdict == "held"
    assert loose.seed_signs == [-1, -1, -1]  # signs stay those of d itself
    assert "excludes -0.02 (the margin) and all 3 seeds agree" in loose.reason
    tight = judge(_claim(margin=0.005), base, meth, resamples=R)
    assert tight.verdict == "not held"
    assert "is below -0.005 (the margin): the method loses more" in tight.reason


def test_margin_with_a_seed_below_it_is_inconclusive():
    diffs = [_noise(200, 0.005, 0.0, s) for s in range(8)] + [_noise(200, 0.001, -0.021, 8)]
    v = judge(_claim(margin=0.02), *_rows(diffs), resamples=2000)
    assert v.ci_low > -0.02 and v.verdict == "inconclusive"
    assert v.reason.startswith("seed 9 of 9 is not above -0.02 (-0.021")
    assert "excludes -0.02 (the margin)" in v.reason


def test_python_float_lists_keep_double_precision():
    v = judge(_claim(), [[0.0, 0.0]], [[0.1, 0.1]], resamples=R)
    assert v.effect == 0.1
    assert summarize([[0.1]])["mean"] == 0.1


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", ["method", "baseline"])
def test_non_finite_values_are_inconclusive_never_held(bad, where):
    base, meth = _rows([_noise(50, 0.01, 1.0, s) for s in range(3)])  # hugely positive
    rows = meth if where == "method" else base
    rows[1] = rows[1].clone()
    rows[1][7] = bad
    v = judge(_claim(), base, meth, resamples=R)
    assert v.verdict == "inconclusive" and not v.held and v.measured
    assert v.effect is None and v.ci_low is None and v.ci_high is None
    assert "seed(s) 2 of 3" in v.reason and "not finite" in v.reason
    assert v.seed_signs[0] == 1 and v.seed_signs[2] == 1 and v.seed_signs[1] in (0, 1, -1)
    record = v.as_dict()
    json.dumps(record, allow_nan=False)
    assert record[f"{where}_mean"] is None


def test_nan_in_a_single_seed_is_inconclusive():
    v = judge(_claim(), [[0.0, 0.0, math.nan]], [[1.0, 1.0, 1.0]], resamples=R)
    assert v.verdict == "inconclusive" and v.seed_signs == [0]
    assert "seed(s) 1 of 1" in v.reason


def test_rule_text_describes_the_rule():
    for word in ("two-level bootstrap", "every seed", "-m", "inconclusive", "not finite"):
        assert word in RULE_TEXT


# --------------------------------------------------------------------------- #
# 4. Records, not_measured, counting, summaries.

_KEYS = {"paper", "claim", "paper_value", "paper_note", "extra", "table", "baseline",
         "method", "metric", "better", "margin", "effect", "ci_low", "ci_high", "seed_signs",
         "verdict", "reason", "baseline_mean", "method_mean", "examples", "map_size"}


def test_as_dict_keys_and_json():
    claim = _claim("lower", margin=0.01, paper_value=0.14, paper_note="Table 2")
    base, meth = _rows([_noise(30, 0.05, -0.1, s) for s in range(2)])
    v = judge(claim, base, meth, resamples=R, map_size=(28, 28))
    record = v.as_dict()
    assert set(record) == _KEYS
    assert record["map_size"] == [28, 28] and v.map_size == [28, 28]
    assert record["paper_value"] == 0.14 and record["paper_note"] == "Table 2"
    assert record["claim"] == "method beats baseline" and record["margin"] == 0.01
    assert record["verdict"] == "held" and record["examples"] == 60
    assert record["seed_signs"] == [1, 1]
    assert json.loads(json.dumps(record, allow_nan=False)) == record
    assert judge(claim, base, meth, resamples=R).as_dict()["map_size"] is None


def test_as_dict_turns_non_finite_numbers_into_none():
    v = ClaimVerdict(_claim(paper_value=math.inf), "inconclusive", "r", math.nan, -math.inf,
                     math.inf, [0], math.nan, 1.0, 3, map_size=None)
    record = v.as_dict()
    for key in ("paper_value", "effect", "ci_low", "ci_high", "baseline_mean"):
        assert record[key] is None, key
    assert record["method_mean"] == 1.0
    json.dumps(record, allow_nan=False)


def test_not_measured_is_never_held():
    v = not_measured(_claim(), "no row 'new' in table 'tab'", map_size=[7, 7])
    assert v.verdict == "not measured" and not v.held and not v.measured
    assert v.reason == "no row 'new' in table 'tab'"
    record = v.as_dict()
    assert set(record) == _KEYS
    assert record["map_size"] == [7, 7] and record["examples"] == 0
    assert record["effect"] is None and record["seed_signs"] == []
    json.dumps(record, allow_nan=False)


def test_count_verdicts_excludes_extras_and_counts_measured():
    held = judge(_claim(), [[0.0] * 4], [[1.0] * 4], resamples=R)
    lost = judge(_claim(), [[1.0] * 4], [[0.0] * 4], resamples=R)
    unsure = judge(_claim(), [[0.0, 0.0]], [[1.0, -1.0]], resamples=R)
    extra = judge(_claim(extra=True), [[0.0] * 4], [[1.0] * 4], resamples=R)
    assert (held.verdict, lost.verdict, unsure.verdict) == ("held", "not held", "inconclusive")
    missing = not_measured(_claim(), "x")
    counts = count_verdicts([held, held.as_dict(), lost, unsure, missing, extra,
                             extra.as_dict(), not_measured(_claim(extra=True), "y")])
    assert counts == {"held": 2, "not held": 1, "inconclusive": 1, "not measured": 1,
                      "measured": 4}
    assert count_verdicts([])["measured"] == 0
    bad = dict(held.as_dict(), verdict="maybe")
    with pytest.raises(ValueError, match="unknown verdict 'maybe'"):
        count_verdicts([bad])


def test_summarize_matches_a_hand_computation():
    rows = [[0.1, 0.3], [0.5, 0.5, 0.8], torch.tensor([1.0])]
    summary = summarize(rows)
    assert summary["per_seed"] == pytest.approx([0.2, 0.6, 1.0])
    assert summary["mean"] == pytest.approx((0.1 + 0.3 + 0.5 + 0.5 + 0.8 + 1.0) / 6)
    assert summary["std"] == pytest.approx(statistics.stdev([0.2, 0.6, 1.0]))
    assert summary["examples"] == 6
    one = summarize([[2.0, 4.0]])
    assert one == {"per_seed": [3.0], "mean": 3.0, "std": 0.0, "examples": 2}
    json.dumps(summary)


@pytest.mark.parametrize("values", [[1.0, 2.0], [0.3, 0.1, 0.25], [5.0, 5.0, 5.0, 5.5]])
def test_spread_is_the_sample_standard_deviation(values):
    assert spread(values) == pytest.approx(statistics.stdev(values), rel=1e-12)


@pytest.mark.parametrize("values", [[], [0.7]])
def test_spread_of_fewer_than_two_values_is_zero(values):
    assert spread(values) == 0.0


# --------------------------------------------------------------------------- #
# 5. Bad input.


def test_judge_rejects_different_or_zero_seed_counts():
    with pytest.raises(ValueError, match="same, non-zero number of seeds, got 2 and 1"):
        judge(_claim(), [[1.0], [2.0]], [[1.0]])
    with pytest.raises(ValueError, match="got 0 and 0"):
        judge(_claim(), [], [])


def test_judge_rejects_empty_seeds():
    with pytest.raises(ValueError, match=r"seed 2 method: expected a non-empty 1-D.*\(0,\)"):
        judge(_claim(), [[1.0], [2.0]], [[1.0], []])


def test_judge_rejects_unequal_lengths():
    with pytest.raises(ValueError, match="baseline has 3 values, method 2; they must be "
                                         "paired"):
        judge(_claim(), [[1.0, 2.0, 3.0]], [[1.0, 2.0]])


def test_judge_rejects_two_dimensional_rows():
    with pytest.raises(ValueError, match=r"seed 1 baseline: expected .*1-D.*\(2, 2\)"):
        judge(_claim(), [torch.zeros(2, 2)], [torch.zeros(4)])
    with pytest.raises(ValueError, match=r"expected .*1-D.*got shape \(\)"):
        judge(_claim(), [torch.tensor(1.0)], [torch.tensor(2.0)])


@pytest.mark.parametrize("level", [0.0, 1.0, -0.5, 1.5])
def test_judge_rejects_level_outside_unit_interval(level):
    with pytest.raises(ValueError, match="need 0 < level < 1"):
        judge(_claim(), [[1.0]], [[2.0]], level=level)


def test_judge_rejects_no_resamples():
    with pytest.raises(ValueError, match="resamples >= 1"):
        judge(_claim(), [[1.0]], [[2.0]], resamples=0)


@pytest.mark.parametrize("better", ["up", "Higher", ""])
def test_claim_rejects_bad_better(better):
    with pytest.raises(ValueError, match="better must be 'higher' or 'lower'"):
        _claim(better)


@pytest.mark.parametrize("margin", [-0.01, math.nan])
def test_claim_rejects_negative_or_nan_margin(margin):
    with pytest.raises(ValueError, match="margin must be a number >= 0"):
        _claim(margin=margin)


def test_summarize_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one seed"):
        summarize([])
    with pytest.raises(ValueError, match="seed 2: expected a non-empty 1-D"):
        summarize([[1.0], []])
    with pytest.raises(ValueError, match=r"seed 1: .*got shape \(1, 2\)"):
        summarize([[[1.0, 2.0]]])
