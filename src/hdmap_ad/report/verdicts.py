"""Verdicts from bootstrap distributions: three one-sided tests against a margin, a family-wise
correction, and the rule that turns adjusted p-values into one of four verdicts.

A verdict is about ``delta`` (B - A, AUROC units) and a practical ``margin`` (>= 0):

- **supported**: the test of ``H0: delta <= +margin`` rejects (B better by more than the margin);
- **refuted**: the test of ``H0: delta >= -margin`` rejects (B worse by more than the margin);
- **equivalent**: both one-sided tests of ``H0: delta >= +margin`` and ``H0: delta <= -margin``
  reject (TOST, Schuirmann 1987; its p-value is the larger of the two): no practical difference;
- **inconclusive**: none of these.

Each test is one-sided at :data:`LEVEL` (2.5%, the tails of a 95% two-sided interval), so
without correction ``supported`` means about "the 95% interval lies above +margin" and
``equivalent`` "the 95% interval lies inside (-margin, +margin)". With ``correction: holm``
(Holm 1979, *A simple sequentially rejective multiple test procedure*, Scand. J. Statist.
6(2)) each kind of test is adjusted over the family of verdicts of one hypothesis (every
domain x claim x budget, and the macro rows), so the chance of any false ``supported`` in the
family is at most 2.5%, and likewise for ``refuted`` and for ``equivalent`` (at most 7.5% for a
false verdict of any kind, by the union bound).

p-values come from the bootstrap distribution (``(1 + #{resamples on the null side}) /
(n + 1)``, Davison & Hinkley 1997, eq. 4.11) when it can resolve the smallest level Holm may
need (``LEVEL / family_size`` holds at least :data:`MIN_TAIL` resamples); otherwise, for the
whole family, from a normal approximation with the bootstrap standard error around the point
estimate. The JSON says which (``p_method``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import norm

#: One-sided level of every test (supported, refuted, each side of equivalent).
LEVEL = 0.025
#: The verdicts, in report order.
VERDICTS = ("supported", "refuted", "equivalent", "inconclusive")
#: The tests behind the first three verdicts.
TESTS = ("supported", "refuted", "equivalent")
#: Family-wise corrections (``hypotheses.<key>.correction``).
CORRECTIONS = ("holm", "none")
#: Default practical margin, AUROC units (``hypotheses.<key>.margin``).
DEFAULT_MARGIN = 0.005
#: Resamples the bootstrap tail must hold at the smallest corrected level to be used.
MIN_TAIL = 10

VERDICT_RULE = (
    "each verdict is a one-sided test at 2.5% on delta AUROC (B - A) against the margin, its "
    "p-value adjusted over the hypothesis's family of verdicts (correction): supported: "
    "delta > +margin; refuted: delta < -margin; equivalent: -margin < delta < +margin (both "
    "one-sided tests, TOST); otherwise inconclusive"
)


def p_method(n_boot: int, family_size: int) -> str:
    """``bootstrap`` when ``n_boot`` resolves the smallest corrected level of a family of
    ``family_size`` verdicts (``(n_boot + 1) * LEVEL / family_size >= MIN_TAIL``), else
    ``normal``."""
    return "bootstrap" if (n_boot + 1) * LEVEL / max(family_size, 1) >= MIN_TAIL else "normal"


def _normal_sf(z: float) -> float:
    """Upper tail of the standard normal; NaN (0 / 0: no spread, no distance) counts as 1."""
    return 1.0 if np.isnan(z) else float(norm.sf(z))


def p_values(boot: np.ndarray, estimate: float, margin: float,
             method: str = "bootstrap") -> dict[str, float]:
    """Raw one-sided p-values of the three tests of one verdict.

    Args:
        boot: ``(n,)`` resampled deltas (NaN entries are ignored).
        estimate: the point estimate of delta (full sample).
        margin: the practical margin (>= 0).
        method: ``bootstrap`` (the resamples' tail share, add-one) or ``normal`` (a normal
            approximation with the resamples' standard deviation around ``estimate``).

    Returns:
        ``{"supported", "refuted", "equivalent"}`` p-values in (0, 1].
    """
    b = np.asarray(boot, dtype=np.float64)
    b = b[np.isfinite(b)]
    if not len(b):
        return dict.fromkeys(TESTS, 1.0)
    if method == "bootstrap":
        n = len(b)

        def tail(k: int) -> float:
            return float((1 + k) / (n + 1))

        return {"supported": tail(int((b <= margin).sum())),
                "refuted": tail(int((b >= -margin).sum())),
                "equivalent": max(tail(int((b >= margin).sum())),
                                  tail(int((b <= -margin).sum())))}
    if method != "normal":
        raise ValueError(f"unknown p-value method {method!r}")
    se = float(b.std(ddof=1)) if len(b) > 1 else 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        z_up = np.float64(estimate - margin) / se  # distance above +margin, in SEs
        z_low = np.float64(estimate + margin) / se  # distance above -margin
    return {"supported": _normal_sf(z_up),
            "refuted": _normal_sf(-z_low),
            "equivalent": max(_normal_sf(-z_up), _normal_sf(z_low))}


def holm(p: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as ``p``): the i-th smallest becomes
    ``max_{j <= i} min(1, (m - j + 1) p_(j))``."""
    p = np.asarray(p, dtype=np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out = np.empty(m)
    out[order] = adjusted
    return [float(x) for x in out]


def adjust(raw: Sequence[dict[str, float]], correction: str) -> list[dict[str, float]]:
    """Each test's p-values adjusted over the family (one dict per verdict)."""
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; one of {CORRECTIONS}")
    if correction == "none" or not raw:
        return [dict(r) for r in raw]
    cols = {t: holm([r[t] for r in raw]) for t in TESTS}
    return [{t: cols[t][i] for t in TESTS} for i in range(len(raw))]


def decide(p_adjusted: dict[str, float] | None) -> str:
    """The verdict of adjusted p-values (None: inconclusive): the first test of
    :data:`TESTS` that rejects at :data:`LEVEL`; supported and refuted, or supported and
    equivalent, cannot both reject on one distribution."""
    if p_adjusted is None:
        return "inconclusive"
    for t in TESTS:
        if p_adjusted[t] < LEVEL:
            return t
    return "inconclusive"
