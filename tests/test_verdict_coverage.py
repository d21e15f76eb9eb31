"""Proof by simulation that the verdicts' interval covers a known truth (issue: verdicts a
reviewer accepts). The generator (``hdmap_ad.report.coverage``) has per-seed effects, per-map
effects shared by every seed and a seed x map interaction; the real bootstrap runs on each
simulated data set. Coverage is judged by the lower end of the exact binomial 95% interval on
the count of covered truths: at least 0.92 (the nominal level is 0.95)."""

from __future__ import annotations

import numpy as np
import pytest

from hdmap_ad.report.coverage import Design, coverage, map_level_se, seed_effect_sd

#: 1500 data sets per case: the exact interval's lower end is then about 0.013 below the
#: observed coverage, so a 95% interval must cover about 94% of the time to pass.
REPLICATES = 1500
N_BOOT = 200


# Maps per condition x class: 120 test maps with several seeds; a single draw's percentile
# interval is the plain paired bootstrap, whose small-sample shortfall (about 94% at 120
# maps) shrinks with more maps, so that case has 240 (the demo's domains have 768-2000).
@pytest.mark.parametrize("seeds, sigma_r, per_stratum",
                         [(1, 0.0, 60), (3, 0.0, 30), (5, 0.0, 30), (5, 0.08, 30)])
def test_the_crossed_interval_covers_the_true_delta(seeds, sigma_r, per_stratum):
    design = Design(seeds=seeds, per_stratum=per_stratum, sigma_r=sigma_r)
    if sigma_r:  # "small": the seed effect at most half the map-level standard error
        assert seed_effect_sd(design) <= 0.5 * map_level_se(design)
    out = coverage(design, REPLICATES, N_BOOT, seed=seeds)
    assert out["lower"] >= 0.92, out


def test_the_truth_is_the_population_delta_or_the_one_draw_s():
    d = Design(seeds=5, sigma_r=0.3)
    c = np.sqrt(2 * d.variance)
    from scipy.stats import norm

    # E Phi((mu + r) / c) over r ~ N(0, s^2) = Phi(mu / sqrt(c^2 + s^2)), checked by sampling
    r = np.random.default_rng(0).normal(0, 0.3, 400_000)
    sampled = np.mean(norm.cdf((d.d_b + r) / c)) - norm.cdf(d.d_a / c)
    assert d.truth() == pytest.approx(sampled, abs=5e-4)
    assert d.truth(0.0) == pytest.approx(norm.cdf(d.d_b / c) - norm.cdf(d.d_a / c))
    # one simulated draw: its empirical delta AUROC sits near the truth (many maps)
    big = Design(seeds=1, per_stratum=4000)
    (draw,), truth = big.simulate(np.random.default_rng(1))
    from sklearn.metrics import roc_auc_score

    emp = roc_auc_score(draw.y, draw.s_b) - roc_auc_score(draw.y, draw.s_a)
    assert emp == pytest.approx(truth, abs=0.01)
