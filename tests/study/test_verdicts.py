"""The verdict rule and the spread computation of the reproduction study."""

import math
import statistics

import pytest

from captum_regularized.study.verdicts import Claim, judge, spread, summarize


def _claim(better="lower", margin=0.0):
    return Claim("text", "table", "base", "new", "metric", better, margin)


@pytest.mark.parametrize("values", [[1.0, 2.0], [0.3, 0.1, 0.25], [5.0, 5.0, 5.0, 5.5]])
def test_spread_is_the_sample_standard_deviation(values):
    assert spread(values) == pytest.approx(statistics.stdev(values), rel=1e-12)


@pytest.mark.parametrize("values", [[], [0.7]])
def test_spread_of_fewer_than_two_values_is_zero(values):
    assert spread(values) == 0.0


def test_summarize_keeps_the_per_seed_values():
    summary = summarize([0.2, 0.4, 0.9])
    assert summary["per_seed"] == [0.2, 0.4, 0.9]
    assert summary["mean"] == pytest.approx(0.5)
    assert summary["std"] == pytest.approx(statistics.stdev([0.2, 0.4, 0.9]))
    with pytest.raises(ValueError, match="at least one"):
        summarize([])


def test_lower_is_better_claim_held_when_clearly_better():
    verdict = judge(_claim("lower"), [0.30, 0.32, 0.31], [0.20, 0.21, 0.22])
    # d = base - new = [0.10, 0.11, 0.09]: mean 0.10, std 0.01.
    assert verdict.improvement_mean == pytest.approx(0.10)
    assert verdict.improvement_spread == pytest.approx(0.01)
    assert verdict.held and verdict.verdict == "held"
    assert verdict.baseline_mean == pytest.approx(0.31)
    assert verdict.method_mean == pytest.approx(0.21)


def test_higher_is_better_flips_the_sign():
    verdict = judge(_claim("higher"), [0.30, 0.32, 0.31], [0.20, 0.21, 0.22])
    assert verdict.improvement_mean == pytest.approx(-0.10)
    assert not verdict.held and verdict.verdict == "not held"


def test_better_on_average_but_within_the_spread_is_not_held():
    # d = [0.05, -0.06, 0.04]: mean 0.01 > 0 but std ~0.061.
    verdict = judge(_claim("lower"), [0.30, 0.20, 0.30], [0.25, 0.26, 0.26])
    assert verdict.improvement_mean == pytest.approx(0.01)
    assert verdict.improvement_spread > verdict.improvement_mean
    assert not verdict.held


def test_the_rule_boundary():
    # d = [0.1, 0.3]: mean 0.2, std sqrt(0.02) = 0.1414 -> held; d = [0.0, 0.4]: std 0.283 > 0.2.
    assert judge(_claim("higher"), [0.0, 0.0], [0.1, 0.3]).held
    assert not judge(_claim("higher"), [0.0, 0.0], [0.0, 0.4]).held


def test_single_seed_reduces_to_the_sign_of_the_difference():
    assert judge(_claim("higher"), [0.5], [0.51]).held
    assert not judge(_claim("higher"), [0.5], [0.49]).held
    tie = judge(_claim("higher"), [0.5], [0.5])
    assert tie.improvement_spread == 0.0 and not tie.held


def test_non_inferiority_margin():
    claim = _claim("higher", margin=0.02)
    assert judge(claim, [0.90, 0.92], [0.89, 0.91]).held  # lost 0.01 < 0.02
    assert not judge(claim, [0.90, 0.92], [0.85, 0.87]).held  # lost 0.05
    # lost 0.01 on average but the spread (0.0141) takes the worst case past the margin
    assert not judge(claim, [0.90, 0.90], [0.90, 0.88]).held


def test_nan_never_holds():
    verdict = judge(_claim("lower"), [0.3, 0.3], [0.1, math.nan])
    assert not verdict.held


def test_record_names_the_claim_and_its_numbers():
    record = judge(_claim("lower"), [0.3], [0.2]).as_dict()
    assert record["text"] == "text" and record["metric"] == "metric"
    assert record["verdict"] == "held" and record["seeds"] == 1


def test_bad_claims_and_values_are_rejected():
    with pytest.raises(ValueError, match="better"):
        Claim("t", "table", "a", "b", "m", "smaller")
    with pytest.raises(ValueError, match="margin"):
        Claim("t", "table", "a", "b", "m", "lower", margin=-0.1)
    with pytest.raises(ValueError, match="same number of seeds"):
        judge(_claim(), [0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="one value per seed"):
        judge(_claim(), [], [])
