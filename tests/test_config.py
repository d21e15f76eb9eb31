import pytest
import yaml

from hdmap_ad.config import load_params, parse_params
from hdmap_ad.errors import InputError
from tests.conftest import REPO


def _raw():
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_shipped_params_are_valid_and_h2_budgets_match():
    p = load_params(REPO / "params.yaml")
    gated, ungated = p.experiments["gated"], p.experiments["ungated"]
    assert gated.gate != "mixed" and ungated.gate == "mixed"
    assert gated.references == ungated.references  # H2: the same reference budget


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda r: r["experiments"]["gated"].update(gate="sometimes"), "experiments.gated.gate"),
        (lambda r: r["experiments"]["gated"].update(backbone="nope"),
         "experiments.gated.backbone"),
        (lambda r: r["experiments"]["gated"].update(layers=["blocks.9"]),
         "experiments.gated.layers"),
        (lambda r: r["experiments"]["gated"]["method"].update(coreset_ratio=0),
         "experiments.gated.method"),
        (lambda r: r["experiments"]["gated"]["method"].update(coreset_proj_dim=0),
         "experiments.gated.method"),
        (lambda r: r["experiments"]["gated"]["method"].update(num_neighbors=9.0),
         "experiments.gated.method"),
        (lambda r: r["experiments"]["gated"]["method"].update(name="nope"),
         "experiments.gated.method.name"),
        (lambda r: r["experiments"]["gated"]["method"].update(radius=3),
         "experiments.gated.method"),
        (lambda r: r["experiments"]["gated"].update(coreset_ratio=0.1),
         "experiments.gated.coreset_ratio: PatchCore's options moved into the method"),
        (lambda r: r["experiments"]["gated"].update(seed=-1), "experiments.gated.seed"),
        (lambda r: r["backbones"]["effnet_lite2"].update(resize="stretch"),
         "backbones.effnet_lite2.resize"),
        (lambda r: r["dataset"].update(colour="red"), "dataset"),
        (lambda r: r.update(targets={"experiments": ["missing"]}), "targets.experiments"),
    ],
)
def test_bad_params_name_the_key(mutate, needle):
    raw = _raw()
    mutate(raw)
    with pytest.raises(InputError, match=needle.replace(".", r"\.")):
        parse_params(raw)


def test_user_study_preset_is_valid_and_covers_the_study():
    p = load_params(REPO / "presets" / "user_study.yaml")
    gates = {p.experiments[v.key].gate for v in p.variants("h2_oracle") + p.variants("h2_p90")}
    assert gates == {"oracle", "p90"}
    assert {v.budget for v in p.variants("h2_mixed")} == {1, 4, 16}
    assert {v.budget for v in p.variants("budget_sweep")} == {1, 2, 4, 8, 16, 32}
    aggs = {e.context.aggregation for e in p.experiments.values() if e.context.radius}
    assert aggs == {"mean", "gaussian", "median", "trimmed", "max"}
    assert {e.backbone for e in p.experiments.values()} == {"effnet_lite2", "effnet_lite0"}
    assert {"H1_backbone", "H2_p90_vs_mixed", "H3_context"} <= set(p.hypotheses)


def test_sweep_expands_budgets_and_seeds():
    raw = _raw()
    raw["experiments"]["ungated"].update(budgets=[1, 4], seeds=[0, 2])
    with pytest.raises(InputError, match="hypotheses.H2_gating: .* same budgets and seeds"):
        parse_params(raw)  # a sweep compared with a single run
    raw["experiments"]["gated"].update(budgets=[1, 4], seeds=[0, 2])
    p = parse_params(raw)
    keys = [v.key for v in p.variants("ungated")]
    assert keys == ["ungated_b1_s0", "ungated_b1_s2", "ungated_b4_s0", "ungated_b4_s2"]
    e = p.experiments["ungated_b4_s2"]
    assert (e.references.n_cold, e.references.n_warm, e.references.seed, e.seed) == (4, 4, 2, 2)
    assert "ungated" not in p.experiments
