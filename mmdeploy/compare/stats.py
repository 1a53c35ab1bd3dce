"""Statistics for comparing methods over seeds, in plain Python (no scipy): mean and sample standard
deviation, Student-t confidence intervals, the paired t-test and the exact Wilcoxon signed-rank test.

The t distribution comes from the regularized incomplete beta function (continued fraction, modified
Lentz), two-sided p = I_{df/(df+t^2)}(df/2, 1/2); quantiles by bisection on that. The Wilcoxon null
distribution is enumerated exactly (dynamic programme over the ranks, ties as average ranks, zero
differences dropped): with n seeds the smallest two-sided p is 2 / 2^n, i.e. 0.0625 for n = 5, so five
seeds can never reach p < 0.05 on that test however large the difference.
"""
from __future__ import annotations

import math
from typing import Sequence


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def stdev(xs: Sequence[float]) -> float:
    """Sample standard deviation (n - 1); 0 for a single value."""
    if len(xs) < 2:
        return 0.0
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_cdf(t: float, df: float) -> float:
    tail = 0.5 * t_two_sided_p(t, df)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(q: float, df: float) -> float:
    """The t value with P(T <= t) = q (0 < q < 1), by bisection to 1e-12."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile level must be in (0, 1), got {q}")
    if q == 0.5:
        return 0.0
    lo, hi = -1.0, 1.0
    while t_cdf(lo, df) > q:
        lo *= 2.0
    while t_cdf(hi, df) < q:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return (lo + hi) / 2.0


def confidence_interval(xs: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """mean -+ t_{(1+level)/2, n-1} * s / sqrt(n); a single value gives (x, x)."""
    m = mean(xs)
    if len(xs) < 2:
        return m, m
    half = t_quantile((1.0 + level) / 2.0, len(xs) - 1) * stdev(xs) / math.sqrt(len(xs))
    return m - half, m + half


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Two-sided paired t-test of b - a (pairs in order). Differences all equal: t = 0, p = 1 when they
    are zero, else t = +-inf, p = 0 (no spread to weigh them against)."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"paired tests need two equally long series of at least 2 values, got {len(a)} and {len(b)}")
    d = [y - x for x, y in zip(a, b)]
    m, s = mean(d), stdev(d)
    df = len(d) - 1
    if s == 0.0:
        t = 0.0 if m == 0.0 else math.copysign(math.inf, m)
        return {"t": t, "df": df, "p": 1.0 if m == 0.0 else 0.0}
    t = m / (s / math.sqrt(len(d)))
    return {"t": t, "df": df, "p": t_two_sided_p(t, df)}


def _ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties given their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def wilcoxon_signed_rank(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Exact two-sided Wilcoxon signed-rank test of b - a: W+ = sum of the ranks of |d| over positive d
    (zeros dropped, ties averaged); p = min(1, 2 * min(P(W <= W+), P(W >= W+))) under the null in which
    each rank's sign is a fair coin, enumerated exactly. No non-zero difference: p = 1."""
    if len(a) != len(b):
        raise ValueError(f"paired tests need two equally long series, got {len(a)} and {len(b)}")
    d = [y - x for x, y in zip(a, b) if y != x]
    n = len(d)
    if n == 0:
        return {"w_plus": 0.0, "n": 0, "p": 1.0}
    ranks = _ranks([abs(x) for x in d])
    w_plus = sum(r for r, x in zip(ranks, d) if x > 0)
    doubled = [round(2 * r) for r in ranks]           # ranks are multiples of 1/2
    counts = {0: 1}                                    # number of sign patterns per doubled W+
    for r in doubled:
        nxt = dict(counts)
        for total, c in counts.items():
            nxt[total + r] = nxt.get(total + r, 0) + c
        counts = nxt
    target, patterns = round(2 * w_plus), 2 ** n
    low = sum(c for total, c in counts.items() if total <= target) / patterns
    high = sum(c for total, c in counts.items() if total >= target) / patterns
    return {"w_plus": w_plus, "n": n, "p": min(1.0, 2.0 * min(low, high))}
