"""The statistics every comparative sentence rests on, against values worked out by hand or published."""

import math

import pytest

from optcv.stats import spread, welch, wilson


def test_spread_uses_the_sample_standard_deviation():
    s = spread([1.0, 2.0, 4.0])
    assert (s.mean, s.low, s.high, s.n) == (7 / 3, 1.0, 4.0, 3)
    assert s.std == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert spread([5.0]).std == 0.0


def test_welch_matches_the_textbook_computation():
    a, b = [0.50, 0.52, 0.55, 0.53], [0.60, 0.58, 0.63]
    d = welch(a, b)
    va, vb = spread(a).std ** 2 / 4, spread(b).std ** 2 / 3
    t = (spread(a).mean - spread(b).mean) / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 2)
    assert d.difference == pytest.approx(spread(a).mean - spread(b).mean)
    assert t == pytest.approx(-4.38, abs=0.01) and dof == pytest.approx(3.90, abs=0.01)
    assert 0.01 < d.p_value < 0.02 and d.significant  # t tables, 4 dof: 3.75 at p = 0.02, 4.60 at p = 0.01
    assert d.ci_low < d.difference < d.ci_high < 0


def test_welch_claims_nothing_within_the_spread_or_from_one_seed():
    overlapping = welch([0.50, 0.55, 0.52], [0.51, 0.54, 0.53])
    assert overlapping.p_value > 0.5 and not overlapping.significant
    assert overlapping.ci_low < 0 < overlapping.ci_high
    single = welch([0.4], [0.5])
    assert not single.tested and not single.significant and single.p_value is None
    assert welch([1.0, 1.0], [1.0, 1.0]).p_value == 1.0


def test_wilson_interval_matches_published_values():
    # Newcombe (1998), Statistics in Medicine 17:857, Table I: 81/263 → 0.2553–0.3662; 0/10 → 0–0.2775.
    low, high = wilson(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    low, high = wilson(0, 10)
    assert low == 0.0 and round(high, 4) == 0.2775
    with pytest.raises(ValueError):
        wilson(0, 0)


def _difference(p_value, n=3, diff=-0.02):
    return {"measure": "final_train_loss", "better": "SGD", "other": "Adagrad",
            "difference": {"difference": diff, "ci_low": diff - 0.01, "ci_high": diff + 0.01, "p_value": p_value,
                           "n_a": n, "n_b": n, "test": "Welch's t-test", "tested": p_value is not None}}


def test_a_difference_is_claimed_only_below_alpha_and_never_from_one_seed():
    from optcv.report.compare import compare_conclusions
    from optcv.stats import ALPHA

    below, at, untested = compare_conclusions([_difference(ALPHA * 0.99), _difference(ALPHA), _difference(None, 1)])
    assert below.startswith("**SGD** ended with a lower final training loss than Adagrad by 0.0200")
    assert "n = 3 seeds each, p = 0.05)" in below
    assert at.startswith("Final training loss: no difference between SGD and Adagrad beyond seed-to-seed spread")
    assert "95 % CI of SGD − Adagrad -0.0300 to -0.0100; Welch's t-test, n = 3 seeds each, p = 0.05)" in at
    assert "no test is possible, so no difference is claimed" in untested
    same = welch([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])  # no change at all
    assert same.difference == 0 and same.p_value == 1.0 and not same.significant


def test_a_column_of_percentages_prints_with_one_precision():
    """evaluate's side-by-side table once printed 6.500 beside 50.4."""
    from optcv.report.tables import markdown_table

    table = markdown_table([{"class": "cat", "pytorch": 6.5}, {"class": "overall", "pytorch": 50.4}], digits=2)
    assert "|    6.50 |" in table and "|   50.40 |" in table
    assert "6.500" in markdown_table([{"x": 6.5}, {"x": 50.4}])  # without digits: magnitude-based, as before
