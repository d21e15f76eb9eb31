"""Coverage of the verdicts' interval on simulated data with a known true delta AUROC.

The generator mirrors the design of a hypothesis: ``S`` reference seeds each score the same
``T`` test maps with two arms. The score of arm ``X`` (A or B), seed ``s`` and map ``t``
(label ``y_t``: 1 = fault) is::

    score = y_t * (d_X + r_s[X]) + a_t + m_t[X] + e_st[X]

- ``r_s[B] ~ N(0, sigma_r^2)`` (``r_s[A] = 0``): the seed effect, how well a reference draw
  suits arm B;
- ``a_t ~ N(0, 1)``: a map's difficulty, shared by both arms and all seeds (cancels in part);
- ``m_t[X] ~ N(0, sigma_t^2)``: an arm's own map effect, shared by all seeds (what makes the
  seeds' test sets one sample, not S);
- ``e_st[X] ~ N(0, sigma_e^2)``: the seed x map interaction.

Within a seed, a fault's score is ``N(d_X + r_s, v)`` and a good's ``N(0, v)`` over the map
population, ``v = 1 + sigma_t^2 + sigma_e^2``, so that seed's true AUROC of arm X is
``Phi((d_X + r_s) / sqrt(2 v))``, and the population delta over seeds is
``Phi(d_B / sqrt(2 v + sigma_r^2)) - Phi(d_A / sqrt(2 v))`` (``E Phi((mu + r) / c) =
Phi(mu / sqrt(c^2 + sigma_r^2))`` for Gaussian ``r``). With one seed the truth is the delta
conditional on that draw, ``Phi((d_B + r_1) / sqrt(2 v)) - Phi(d_A / sqrt(2 v))``.

:func:`coverage` runs the real bootstrap (:func:`hdmap_ad.report.hypothesis.crossed_deltas`)
on ``replicates`` independent data sets and counts how often its 95% percentile interval holds
the truth; ``make bench-verdicts`` prints a grid of these.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest, norm

from hdmap_ad.report.hypothesis import PERCENTILES, Draw, crossed_deltas


@dataclass(frozen=True)
class Design:
    """One simulated hypothesis: seeds, maps per condition x class, effects (score units)."""

    seeds: int = 5
    per_stratum: int = 20
    d_a: float = 1.0
    d_b: float = 1.2
    sigma_r: float = 0.0
    sigma_t: float = 0.4
    sigma_e: float = 0.4

    @property
    def variance(self) -> float:
        return 1.0 + self.sigma_t ** 2 + self.sigma_e ** 2

    def truth(self, r_b: np.ndarray | None = None) -> float:
        """The true delta AUROC: over the seed population, or conditional on one seed's
        effect ``r_b`` (one value) when given."""
        c = np.sqrt(2.0 * self.variance)
        a = norm.cdf(self.d_a / c)
        if r_b is not None:
            return float(norm.cdf((self.d_b + float(r_b)) / c) - a)
        return float(norm.cdf(self.d_b / np.sqrt(c ** 2 + self.sigma_r ** 2)) - a)

    def simulate(self, rng: np.random.Generator) -> tuple[list[Draw], float]:
        """One data set: its draws (one per seed, the same maps) and its truth."""
        n = 4 * self.per_stratum
        y = np.tile(np.repeat([1, 0], self.per_stratum), 2)
        cond = np.repeat(["cold", "warm"], 2 * self.per_stratum)
        a = rng.normal(0.0, 1.0, n)
        m_a, m_b = rng.normal(0.0, self.sigma_t, (2, n))
        r_b = rng.normal(0.0, self.sigma_r, self.seeds)
        draws = []
        for s in range(self.seeds):
            e_a, e_b = rng.normal(0.0, self.sigma_e, (2, n))
            draws.append(Draw(y, cond, y * self.d_a + a + m_a + e_a,
                              y * (self.d_b + r_b[s]) + a + m_b + e_b))
        truth = self.truth(r_b[0]) if self.seeds == 1 else self.truth()
        return draws, truth


Bootstrap = Callable[[list[Draw], int, np.random.Generator], np.ndarray]


def crossed_pooled(draws: list[Draw], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """The pooled delta AUROC resamples of the verdicts' bootstrap."""
    return crossed_deltas(draws, n_boot, rng)[0]["auroc"]["pooled"]


def coverage(design: Design, replicates: int, n_boot: int, seed: int = 0,
             bootstrap: Bootstrap = crossed_pooled) -> dict[str, float]:
    """Coverage of the 95% percentile interval of pooled delta AUROC over ``replicates``
    simulated data sets.

    Returns:
        ``{"covered", "replicates", "coverage", "lower", "upper"}`` with the exact
        (Clopper-Pearson) 95% interval of the coverage, and ``mean_width``.
    """
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(seed)
    covered, widths = 0, []
    # many tiny products: one BLAS thread each is several times faster than a pool
    with threadpool_limits(1):
        for _ in range(replicates):
            draws, truth = design.simulate(rng)
            lo, hi = np.percentile(bootstrap(draws, n_boot, rng), PERCENTILES)
            covered += bool(lo <= truth <= hi)
            widths.append(hi - lo)
    ci = binomtest(covered, replicates).proportion_ci(0.95, method="exact")
    return {"covered": covered, "replicates": replicates, "coverage": covered / replicates,
            "lower": float(ci.low), "upper": float(ci.high),
            "mean_width": float(np.mean(widths))}


@functools.lru_cache(maxsize=64)
def map_level_se(design: Design, n_boot: int = 400, seed: int = 0) -> float:
    """The standard error of one seed's delta AUROC from its test maps (bootstrap SD of a
    single draw with ``sigma_r = 0``), the unit in which a seed effect is called small."""
    one = Design(**{**design.__dict__, "seeds": 1, "sigma_r": 0.0})
    if one != design:
        return map_level_se(one, n_boot, seed)
    draws, _ = one.simulate(np.random.default_rng(seed))
    return float(np.std(crossed_pooled(draws, n_boot, np.random.default_rng(seed + 1))))


def seed_effect_sd(design: Design) -> float:
    """SD of the seeds' true AUROC of arm B (the seed component in AUROC units)."""
    c = np.sqrt(2.0 * design.variance)
    x, w = np.polynomial.hermite_e.hermegauss(64)  # E f(Z), Z ~ N(0, 1): sum w f(x) / sqrt(2pi)
    w = w / w.sum()
    auc = norm.cdf((design.d_b + design.sigma_r * x) / c)
    mean = float(w @ auc)
    return float(np.sqrt(max(w @ (auc - mean) ** 2, 0.0)))
