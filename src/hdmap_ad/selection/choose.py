"""The ``select`` step: pick a grid point by validation AUROC, report its test metrics.

The choice (:func:`choose_point`) reads the validation results only: the points' validation
AUROC and, for ties, their stored model size. Test metrics enter the report afterwards, as
the chosen point's headline, and as ``grid_best_on_test``: the point a test-tuned choice
would have taken, an upper bound on what selection could reach on this grid (it looked at
the test labels), never the headline.
"""

from __future__ import annotations

from typing import Any

#: Validation AUROCs this close are a tie (AUROC is a ratio of counts: exact ties happen).
TIE_TOLERANCE = 1e-9
CRITERION = ("validation AUROC: synthetic anomalies made from the held-out references of "
             "each reference fold vs those held-out references, scored by the fold models "
             "(no test map, no test label)")
TIE_RULE = ("highest validation AUROC; ties (within 1e-9) go to the smaller stored model "
            "(model_bytes), then to the earlier grid point")
UPPER_BOUND_NOTE = ("upper bound: the grid point with the best test AUROC, chosen by looking "
                    "at the test labels; never the headline")


def choose_point(validation_auroc: list[float], model_bytes: list[int]
                 ) -> tuple[int, list[int]]:
    """``(chosen position, tied positions)``: the best validation AUROC, ties to the
    smaller model, then to the earlier point (:data:`TIE_RULE`). Reads nothing of test."""
    if not validation_auroc:
        raise ValueError("an empty grid")
    best = max(validation_auroc)
    tied = [i for i, v in enumerate(validation_auroc) if v >= best - TIE_TOLERANCE]
    chosen = min(tied, key=lambda i: (model_bytes[i], i))
    return chosen, tied


def _test_block(metrics: dict[str, Any]) -> dict[str, Any]:
    out = {"auroc": metrics["metrics"]["auroc"]}
    per = metrics.get("per_condition") or {}
    if per:
        out["per_condition"] = {c: {"auroc": per[c].get("auroc")} for c in sorted(per)}
    return out


def _validation_block(v: dict[str, Any]) -> dict[str, Any]:
    return {"auroc": v["auroc"], "n_normal": v["n_normal"], "n_anomaly": v["n_anomaly"],
            "per_condition": {c: {"auroc": b["auroc"]} for c, b in
                              sorted(v["per_condition"].items())}}


def selection_report(plan: dict[str, Any], domain: str, validations: list[dict[str, Any]],
                     tests: list[dict[str, Any]]) -> dict[str, Any]:
    """The selected JSON of one domain x selection.

    Args:
        plan: ``SelectionPlan.to_dict()`` (points in grid order).
        validations: per point, its ``validation-score`` step JSON.
        tests: per point, its metrics JSON (``results/<domain>_<experiment>.json``).

    Returns:
        ``chosen`` (the point), ``validation`` and ``test`` (its metrics, each with
        ``auroc``: the test one is the headline), ``tie_break``, ``default`` (the
        experiment's own values, when in the grid), ``grid`` (every point's validation and
        test AUROC), ``grid_best_on_test`` (an upper bound, labelled) and ``regret`` (test
        AUROC of ``grid_best_on_test`` minus the chosen point's, and the default's).
    """
    points = plan["points"]
    if not (len(points) == len(validations) == len(tests)):
        raise ValueError("one validation and one test result per grid point")
    chosen, tied = choose_point([v["auroc"] for v in validations],
                                [v["model_bytes"] for v in validations])
    grid = [{**p, "validation": {"auroc": v["auroc"]}, "test": {"auroc": t["metrics"]["auroc"]},
             "model_bytes": v["model_bytes"]}
            for p, v, t in zip(points, validations, tests, strict=True)]
    test_auroc = [g["test"]["auroc"] for g in grid]
    upper = max(range(len(grid)), key=lambda i: (test_auroc[i], -i))
    default = plan.get("default")
    report = {
        "selection": plan["key"],
        "domain": domain,
        "criterion": CRITERION,
        "chosen": {**points[chosen], "default": chosen == default},
        "validation": _validation_block(validations[chosen]),
        "test": _test_block(tests[chosen]),
        "tie_break": {"rule": TIE_RULE, "tied": [points[i]["experiment"] for i in tied],
                      "decided_by": ("validation AUROC" if len(tied) == 1 else
                                     "model_bytes" if len({grid[i]["model_bytes"]
                                                           for i in tied}) > 1
                                     else "grid order")},
        "default": None if default is None else {
            **points[default], "validation": {"auroc": validations[default]["auroc"]},
            "test": {"auroc": test_auroc[default]}},
        "grid_best_on_test": {**points[upper], "test": {"auroc": test_auroc[upper]},
                              "note": UPPER_BOUND_NOTE},
        "regret": {"chosen": test_auroc[upper] - test_auroc[chosen],
                   "default": None if default is None
                   else test_auroc[upper] - test_auroc[default]},
        "axes": plan["axes"],
        "grid": grid,
        "validation_set": {"id": plan["set_id"], **plan["set_spec"]},
    }
    return report


def select_step(spec: dict[str, Any], out: str) -> None:
    """The ``select`` step: ``spec`` = ``{"plan": SelectionPlan.to_dict(), "domain": d,
    "validations": [path per point], "metrics": [path per point]}`` -> ``out`` (JSON)."""
    from hdmap_ad.errors import InputError
    from hdmap_ad.io import read_json, write_json
    from hdmap_ad.metrics.image import round_floats

    plan = spec["plan"]
    paths = list(spec["validations"]) + list(spec["metrics"])
    if len(spec["validations"]) != len(plan["points"]) or \
            len(spec["metrics"]) != len(plan["points"]):
        raise InputError(f"select: experiments.{plan['key']}: one validation and one metrics "
                         f"file per grid point ({len(plan['points'])} points)")
    docs = []
    for path in paths:
        try:
            docs.append(read_json(path))
        except FileNotFoundError:
            raise InputError(f"{path}: not found (build it first)") from None
    n = len(plan["points"])
    for point, v in zip(plan["points"], docs[:n], strict=True):
        if v.get("experiment") != point["experiment"]:
            raise InputError(f"select: a validation result of {v.get('experiment')!r} given "
                             f"for grid point {point['experiment']!r}")
    write_json(out, round_floats(selection_report(plan, spec["domain"], docs[:n], docs[n:])))
