"""Compare statistics against values computed by hand and printed tables (no scipy in the environment)."""
from __future__ import annotations

import math

import pytest

from mmdeploy.compare.stats import (betainc, confidence_interval, paired_t_test, stdev, t_quantile, t_two_sided_p,
                                    wilcoxon_signed_rank)


@pytest.mark.parametrize("level, df, table", [
    (0.975, 1, 12.706), (0.975, 2, 4.303), (0.975, 4, 2.776), (0.975, 5, 2.571), (0.975, 9, 2.262),
    (0.975, 30, 2.042), (0.95, 4, 2.132), (0.995, 4, 4.604), (0.975, 1000, 1.962)])
def test_t_quantiles_match_the_printed_table(level, df, table):
    assert t_quantile(level, df) == pytest.approx(table, abs=5e-4)
    assert t_quantile(1 - level, df) == pytest.approx(-table, abs=5e-4)


@pytest.mark.parametrize("t", [0.1, 0.7, 1.0, 2.5, 10.0])
def test_t_p_values_match_closed_forms(t):
    # df 1 (Cauchy): p = 1 - (2/pi) atan|t|; df 2: p = 1 - |t| / sqrt(2 + t^2);
    # df 4: p = I_x(2, 1/2) = 1 - sqrt(1 - x) (1 + x/2), x = 4 / (4 + t^2)
    assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), rel=1e-9)
    assert t_two_sided_p(-t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    x = 4 / (4 + t * t)
    assert t_two_sided_p(t, 4) == pytest.approx(1 - math.sqrt(1 - x) * (1 + x / 2), rel=1e-9)


def test_incomplete_beta_by_hand():
    assert betainc(1, 1, 0.3) == pytest.approx(0.3)                       # uniform
    assert betainc(2, 3, 0.4) == pytest.approx(0.5248, abs=1e-12)          # sum_{j>=2} C(4,j) .4^j .6^(4-j)
    assert betainc(0.5, 0.5, 0.5) == pytest.approx(0.5)                    # arcsine, symmetric


def test_paired_t_by_hand():
    # d = [1, 2, 0, 2, 2]: mean 1.4, s = sqrt(0.8), t = 1.4 / (sqrt(0.8) / sqrt 5) = 3.5, df 4
    out = paired_t_test([1, 2, 3, 4, 5], [2, 4, 3, 6, 7])
    assert out["t"] == pytest.approx(3.5) and out["df"] == 4
    x = 4 / (4 + 3.5 ** 2)
    assert out["p"] == pytest.approx(1 - math.sqrt(1 - x) * (1 + x / 2), rel=1e-9)   # 0.0249
    assert 0.02 < out["p"] < 0.05                    # between the table's 3.747 (0.02) and 2.776 (0.05)
    assert paired_t_test([1, 2], [1, 2])["p"] == 1.0
    assert paired_t_test([1, 2], [2, 3]) == {"t": math.inf, "df": 1, "p": 0.0}


def test_confidence_interval_by_hand():
    lo, hi = confidence_interval([1, 2, 3, 4, 5])
    half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)   # t_{.975,4} s / sqrt(n)
    assert (lo, hi) == pytest.approx((3 - half, 3 + half), abs=1e-6)
    assert stdev([2.0]) == 0.0 and confidence_interval([0.7]) == (0.7, 0.7)


def test_wilcoxon_exact_by_hand():
    # every difference positive: only 1 of 2^n sign patterns is as extreme on each side
    assert wilcoxon_signed_rank([0] * 5, [1, 2, 3, 4, 5])["p"] == pytest.approx(2 / 32)
    assert wilcoxon_signed_rank([0] * 6, [3, 1, 4, 1.5, 9, 2.6])["p"] == pytest.approx(2 / 64)
    # n = 8, W+ = 3 (ranks 1 and 2 positive): subsets of 1..8 with sum <= 3 are {}, 1, 2, 3, 12 -> 5/256
    out = wilcoxon_signed_rank([0] * 8, [1, 2, -3, -4, -5, -6, -7, -8])
    assert out["w_plus"] == 3 and out["n"] == 8 and out["p"] == pytest.approx(2 * 5 / 256)
    # ties: |d| = 1, 1, 2 -> ranks 1.5, 1.5, 3, all positive: W+ = 6 only when every sign is +: p = 2/8
    assert wilcoxon_signed_rank([0, 0, 0], [1, -1 + 2, 2])["p"] == pytest.approx(0.25)
    # zero differences are dropped; none left: p = 1
    tied = wilcoxon_signed_rank([1, 2, 3, 4], [1, 2, 3, 5])
    assert tied["n"] == 1 and tied["p"] == 1.0
    assert wilcoxon_signed_rank([1, 2], [1, 2])["p"] == 1.0
