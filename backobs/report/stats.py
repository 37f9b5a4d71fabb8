"""Statistics of the report: the difference of two optimizers' means, with Welch's interval.

The seeds of two optimizers are independent samples with possibly different variances, so
the interval for the difference of their means is Welch's: with sample variances ``s1², s2²``
(``ddof=1``) of ``n1, n2 >= 2`` seeds,

    se² = s1²/n1 + s2²/n2,   df = se⁴ / ((s1²/n1)² / (n1 - 1) + (s2²/n2)² / (n2 - 1))

(Welch–Satterthwaite), and the interval is ``diff ± t(df, 1 - (1 - level)/2) · se`` with
Student's t quantile (:func:`scipy.special.stdtrit`, which accepts a fractional ``df``;
``scipy.special`` imports no torch).
"""

import math
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
"""The confidence level of the report's intervals."""


@dataclass(frozen=True)
class Difference:
    """A difference of means with its confidence interval.

    Attributes:
        value (float): ``mean(sample) - mean(baseline)``; ``nan`` if not computable.
        low (float): Lower end of the interval (``nan`` with fewer than two seeds a side).
        high (float): Upper end.
        df (float): Welch–Satterthwaite degrees of freedom (``inf`` if both variances are 0).
    """

    value: float
    low: float
    high: float
    df: float

    @property
    def significant(self):
        """bool: The interval excludes 0 (``False`` without an interval)."""
        return bool(self.low > 0 or self.high < 0)


_NOTHING = Difference(math.nan, math.nan, math.nan, math.nan)


def welch_difference(sample, baseline, level=LEVEL):
    """The difference of the means of ``sample`` and ``baseline`` with Welch's interval.

    Args:
        sample (array-like): One value per seed, e.g. an optimizer's final test accuracies.
        baseline (array-like): One value per seed of the baseline.
        level (float): Confidence level in (0, 1).

    Returns:
        Difference: ``nan`` throughout if a side has fewer than two seeds or a non-finite
        value. If both sides have zero variance the interval is the difference itself.
    """
    sample = np.asarray(sample, dtype=float)
    baseline = np.asarray(baseline, dtype=float)
    if min(len(sample), len(baseline)) < 2:
        return _NOTHING
    if not (np.isfinite(sample).all() and np.isfinite(baseline).all()):
        return _NOTHING
    value = float(sample.mean() - baseline.mean())
    parts = [values.var(ddof=1) / len(values) for values in (sample, baseline)]
    variance = sum(parts)
    if variance == 0:
        return Difference(value, value, value, math.inf)
    df = variance**2 / sum(
        part**2 / (len(values) - 1) for part, values in zip(parts, (sample, baseline))
    )
    half_width = t_quantile(df, 1 - (1 - level) / 2) * math.sqrt(variance)
    return Difference(value, value - half_width, value + half_width, float(df))


def t_quantile(df, probability):
    """Student's t quantile: the ``t`` with ``P(T <= t) = probability`` for ``df`` > 0."""
    from scipy.special import stdtrit

    return float(stdtrit(df, probability))
