import pytest
import yaml

from hdmap_ad.config import load_params, parse_params
from hdmap_ad.errors import InputError
from tests.test_pipeline import REPO


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
        (lambda r: r["experiments"]["gated"].update(coreset_ratio=0), "coreset_ratio"),
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
