"""Paired time ratios, their spread, and verdicts that say "inconclusive" when noise decides.

A benchmark verdict such as "A is within 3% of B" compares two timings that
move with the machine's load. Measured one after the other, a change of load
between them becomes a false difference. So A and B are measured interleaved
(:func:`mmrep.benchmark.timing.interleaved`: A, B, B, A, ... round after
round) and each round gives one paired ratio ``a_i / b_i``: a slow-down that
hits both members of a pair cancels out.

The verdict uses the median of the paired ratios and a distribution-free
confidence interval for it (order statistics, no normality assumed): with
``n`` ratios sorted, ``[r_(k), r_(n-k+1)]`` covers the true median with
probability ``1 - 2 P(Bin(n, 1/2) <= k - 1)``; we take the largest ``k``
whose coverage is at least the confidence asked for (95%). With fewer than
6 pairs no ``k`` reaches 95%, and the interval is the full range with its
lower coverage stated.

A target ``ratio <= limit`` is then

* **met** when the whole interval is at or below the limit;
* **not met** when the whole interval is above it;
* **inconclusive** when the interval contains the limit: the spread of the
  measurement covers the margin, and another run could go either way; also
  when there are too few pairs (under 5) for an interval of 90% coverage.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence, Tuple

DEFAULT_CONFIDENCE = 0.95
# a verdict needs an interval at least this likely to hold the median (5 pairs or more)
MIN_COVERAGE = 0.9
MET, NOT_MET, INCONCLUSIVE = 'met', 'not met', 'inconclusive'


def _binom_cdf_half(k: int, n: int) -> float:
    """P(Bin(n, 1/2) <= k)."""
    return sum(math.comb(n, i) for i in range(0, k + 1)) / 2 ** n


def median_interval(values: Sequence[float],
                    confidence: float = DEFAULT_CONFIDENCE) -> Tuple[float, float, float]:
    """``(low, high, coverage)``: an order-statistic confidence interval for the median.

    ``coverage`` is the interval's exact coverage probability (at least
    ``confidence`` when ``len(values) >= 6`` at 95%; the full range's
    coverage, ``1 - 2 / 2**n``, for fewer values).
    """
    if not values:
        raise ValueError('no values: a median interval needs at least one')
    if not 0 < confidence < 1:
        raise ValueError(f'confidence must be in (0, 1), got {confidence}')
    ordered = sorted(values)
    n = len(ordered)
    best_k, best_coverage = 1, 1 - 2 * _binom_cdf_half(0, n)
    for k in range(2, n // 2 + 1):
        coverage = 1 - 2 * _binom_cdf_half(k - 1, n)
        if coverage < confidence:
            break
        best_k, best_coverage = k, coverage
    return ordered[best_k - 1], ordered[n - best_k], best_coverage


@dataclass(frozen=True)
class RatioSummary:
    """Median of paired ratios ``a_i / b_i`` with its confidence interval."""
    median: float
    low: float
    high: float
    coverage: float
    pairs: int

    def as_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def __str__(self) -> str:
        return (f'{self.median:.3f}x [{self.low:.3f}, {self.high:.3f}] '
                f'({self.pairs} pairs, {100 * self.coverage:.0f}% interval)')


def paired_ratios(a_ms: Sequence[float], b_ms: Sequence[float]) -> List[float]:
    """``a_i / b_i`` for samples taken in the same rounds of one interleaved measurement."""
    if len(a_ms) != len(b_ms):
        raise ValueError(f'paired samples need the same rounds: {len(a_ms)} against '
                         f'{len(b_ms)} samples (were they measured in one interleaved group?)')
    if not a_ms:
        raise ValueError('no samples to pair')
    if any(b <= 0 for b in b_ms) or any(a < 0 for a in a_ms):
        raise ValueError('times must be positive')
    return [a / b for a, b in zip(a_ms, b_ms)]


def summarize_ratios(ratios: Sequence[float],
                     confidence: float = DEFAULT_CONFIDENCE) -> RatioSummary:
    low, high, coverage = median_interval(ratios, confidence)
    return RatioSummary(statistics.median(ratios), low, high, coverage, len(ratios))


def compare_paired(a_ms: Sequence[float], b_ms: Sequence[float],
                   confidence: float = DEFAULT_CONFIDENCE) -> RatioSummary:
    """Summary of the time ratio A/B from paired samples (below 1: A is faster)."""
    return summarize_ratios(paired_ratios(a_ms, b_ms), confidence)


def verdict(summary: RatioSummary, at_most: Optional[float] = None,
            at_least: Optional[float] = None, min_coverage: float = MIN_COVERAGE) -> str:
    """``'met'``, ``'not met'`` or ``'inconclusive'`` for ``ratio <= at_most`` / ``>= at_least``.

    Fewer pairs than give an interval of ``min_coverage`` (5 pairs: 93.75%)
    decide nothing: ``'inconclusive'``.
    """
    if (at_most is None) == (at_least is None):
        raise ValueError('give exactly one of at_most and at_least')
    if summary.coverage < min_coverage:
        return INCONCLUSIVE
    if at_most is not None:
        if summary.high <= at_most:
            return MET
        return NOT_MET if summary.low > at_most else INCONCLUSIVE
    if summary.low >= at_least:
        return MET
    return NOT_MET if summary.high < at_least else INCONCLUSIVE
