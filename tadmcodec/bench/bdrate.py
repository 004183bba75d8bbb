"""Bjøntegaard delta rate (BD-rate) between two rate-quality curves.

Method (the piecewise-cubic variant used by current video-coding test
conditions, rather than Bjøntegaard's original single cubic polynomial, which
needs at least four points per curve and overshoots on uneven grids; our TADM
curves have three points, one per scale):

1. Each curve is reduced to its Pareto front: points sorted by rate, keeping a
   point only if its quality is strictly better than every cheaper point.
   A dominated point is a setting nobody would choose.
2. Quality q is made "higher is better" (q = -metric for LPIPS and DISTS).
3. log(rate) is interpolated as a function of q with a monotone piecewise cubic
   Hermite interpolant (Fritsch-Carlson slopes, the PCHIP scheme).
4. Both interpolants are integrated exactly over the overlap of the two curves'
   quality ranges; the mean log-rate difference d gives BD-rate = (e^d - 1) * 100.

Negative BD-rate: the test curve needs that many percent fewer bits than the
anchor for the same quality. Without an overlapping quality range (or with a
curve of fewer than two Pareto points) the result is None ("n/a").
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

LOWER_IS_BETTER = frozenset({"lpips_alex", "lpips_vgg", "dists", "lpips"})
"""Metrics where a smaller value is a better picture."""


def pareto_front(rates: Sequence[float], quality: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Points of (rate, quality) not dominated by a cheaper point, sorted by rate.

    `quality` must already be higher-is-better. Non-finite points are dropped.
    Returns arrays with rate and quality both strictly increasing.
    """
    r = np.asarray(rates, dtype=np.float64)
    q = np.asarray(quality, dtype=np.float64)
    ok = np.isfinite(r) & np.isfinite(q) & (r > 0)
    r, q = r[ok], q[ok]
    order = np.lexsort((-q, r))  # by rate, best quality first among equal rates
    keep_r: list[float] = []
    keep_q: list[float] = []
    for i in order:
        if not keep_q or q[i] > keep_q[-1]:
            if keep_r and r[i] == keep_r[-1]:
                continue  # same rate, worse quality (sorted): dominated
            keep_r.append(float(r[i]))
            keep_q.append(float(q[i]))
    return np.array(keep_r), np.array(keep_q)


def _pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fritsch-Carlson derivatives: shape preserving, no overshoot between points."""
    n = len(x)
    h = np.diff(x)
    delta = np.diff(y) / h
    d = np.zeros(n)
    if n == 2:
        d[:] = delta[0]
        return d
    for k in range(1, n - 1):
        if delta[k - 1] * delta[k] <= 0:
            d[k] = 0.0
        else:  # weighted harmonic mean of the neighbouring secants
            w1 = 2 * h[k] + h[k - 1]
            w2 = h[k] + 2 * h[k - 1]
            d[k] = (w1 + w2) / (w1 / delta[k - 1] + w2 / delta[k])
    d[0] = _end_slope(h[0], h[1], delta[0], delta[1])
    d[-1] = _end_slope(h[-1], h[-2], delta[-1], delta[-2])
    return d


def _end_slope(h0: float, h1: float, m0: float, m1: float) -> float:
    """One-sided three-point end derivative, limited so the end segment stays monotone."""
    d = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
    if np.sign(d) != np.sign(m0):
        return 0.0
    if np.sign(m0) != np.sign(m1) and abs(d) > abs(3 * m0):
        return 3 * m0
    return d


def _hermite_integral(x: np.ndarray, y: np.ndarray, d: np.ndarray, lo: float, hi: float) -> float:
    """Exact integral over [lo, hi] (inside [x0, xn]) of the cubic Hermite interpolant."""
    total = 0.0
    for k in range(len(x) - 1):
        a, b = max(lo, x[k]), min(hi, x[k + 1])
        if b <= a:
            continue
        h = x[k + 1] - x[k]
        # integrate the Hermite basis in local coordinates t in [ta, tb]
        ta, tb = (a - x[k]) / h, (b - x[k]) / h
        total += h * (
            y[k] * _basis_int(_h00, ta, tb)
            + h * d[k] * _basis_int(_h10, ta, tb)
            + y[k + 1] * _basis_int(_h01, ta, tb)
            + h * d[k + 1] * _basis_int(_h11, ta, tb)
        )
    return total


# Antiderivatives of the cubic Hermite basis functions on t in [0, 1].
def _h00(t: float) -> float:
    return t**4 / 2 - t**3 + t


def _h10(t: float) -> float:
    return t**4 / 4 - 2 * t**3 / 3 + t**2 / 2


def _h01(t: float) -> float:
    return -(t**4) / 2 + t**3


def _h11(t: float) -> float:
    return t**4 / 4 - t**3 / 3


def _basis_int(f, ta: float, tb: float) -> float:
    return f(tb) - f(ta)


def bd_rate(
    anchor_rate: Sequence[float],
    anchor_metric: Sequence[float],
    test_rate: Sequence[float],
    test_metric: Sequence[float],
    lower_is_better: bool = False,
) -> float | None:
    """BD-rate of `test` against `anchor` in percent (negative = test saves bits), or None (n/a)."""
    fronts = _fronts_and_overlap(anchor_rate, anchor_metric, test_rate, test_metric, lower_is_better)
    if fronts is None:
        return None
    (ra, qa), (rt, qt), (lo, hi) = fronts
    la, lt = np.log(ra), np.log(rt)
    ia = _hermite_integral(qa, la, _pchip_slopes(qa, la), lo, hi)
    it = _hermite_integral(qt, lt, _pchip_slopes(qt, lt), lo, hi)
    diff = (it - ia) / (hi - lo)
    return (math.exp(diff) - 1.0) * 100.0


def overlap(
    anchor_metric: Sequence[float], test_metric: Sequence[float], anchor_rate: Sequence[float],
    test_rate: Sequence[float], lower_is_better: bool = False,
) -> tuple[float, float] | None:
    """The quality interval (in metric units) a BD-rate was averaged over, or None."""
    fronts = _fronts_and_overlap(anchor_rate, anchor_metric, test_rate, test_metric, lower_is_better)
    if fronts is None:
        return None
    lo, hi = fronts[2]
    return (-hi, -lo) if lower_is_better else (lo, hi)


def _fronts_and_overlap(anchor_rate, anchor_metric, test_rate, test_metric, lower_is_better):
    """Both Pareto fronts (metric negated when lower is better) and their common quality range, or None."""
    sign = -1.0 if lower_is_better else 1.0
    ra, qa = pareto_front(anchor_rate, [sign * m for m in anchor_metric])
    rt, qt = pareto_front(test_rate, [sign * m for m in test_metric])
    if len(ra) < 2 or len(rt) < 2:
        return None
    lo, hi = max(qa[0], qt[0]), min(qa[-1], qt[-1])
    if not hi > lo:
        return None
    return (ra, qa), (rt, qt), (lo, hi)


def bd_quality(
    anchor_rate: Sequence[float],
    anchor_metric: Sequence[float],
    test_rate: Sequence[float],
    test_metric: Sequence[float],
    lower_is_better: bool = False,
) -> float | None:
    """Bjøntegaard delta quality: mean (test - anchor) metric at equal rate, in the metric's units.

    The companion of BD-rate (BD-PSNR for PSNR): the metric is interpolated
    (PCHIP) against log(rate) over the overlapping rate range. It stays
    defined where the quality ranges do not overlap but the rate ranges do.
    For LPIPS/DISTS a negative value means the test is better.
    """
    sign = -1.0 if lower_is_better else 1.0
    ra, qa = pareto_front(anchor_rate, [sign * m for m in anchor_metric])
    rt, qt = pareto_front(test_rate, [sign * m for m in test_metric])
    if len(ra) < 2 or len(rt) < 2:
        return None
    la, lt = np.log(ra), np.log(rt)
    lo, hi = max(la[0], lt[0]), min(la[-1], lt[-1])
    if not hi > lo:
        return None
    ia = _hermite_integral(la, qa, _pchip_slopes(la, qa), lo, hi)
    it = _hermite_integral(lt, qt, _pchip_slopes(lt, qt), lo, hi)
    return sign * (it - ia) / (hi - lo)
