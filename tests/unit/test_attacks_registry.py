"""Registry and config validation: every attack is registered with a kind; bad settings name their key."""
from __future__ import annotations

import math
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from test_attacks_support import one_thread  # noqa: E402,F401  (autouse fixture)

import pytest

from robust_unlearning.attacks import ATTACKS, AttackConfigError, get_attack, register_attack
from robust_unlearning.attacks.common import rate_metrics, wilson_interval

NAMES = {"relearn": "model", "prefill": "input", "jailbreak_templates": "input", "multi_turn": "input",
         "gcg": "input", "latent": "input", "direction": "input", "quantize": "model", "weight_noise": "model"}


def test_all_attacks_registered_with_kind():
    assert set(NAMES) <= set(ATTACKS)
    for name, kind in NAMES.items():
        cls = get_attack(name)
        assert cls.kind == kind and cls.name == name
        assert callable(cls.prepare) and (kind == "model" or callable(cls.evaluate))
        cfg = cls.Config.from_dict({})          # defaults validate
        assert cls.Config.from_dict(cfg.to_dict()) == cfg


def test_unknown_attack_and_duplicate():
    with pytest.raises(AttackConfigError, match="attack: unknown attack 'nope'"):
        get_attack("nope")
    with pytest.raises(ValueError, match="registered twice"):
        @register_attack("gcg")
        class Other:  # noqa: F811
            kind = "input"
            Config = get_attack("gcg").Config

            def evaluate(self):
                pass


@pytest.mark.parametrize("name,params,key", [
    ("relearn", {"stpes": 10}, "stpes"),
    ("relearn", {"steps": 0}, "steps"),
    ("relearn", {"fraction": 1.5}, "fraction"),
    ("relearn", {"lr": "fast"}, "lr"),
    ("relearn", {"source": "web"}, "source"),
    ("quantize", {"bits": 3}, "bits"),
    ("quantize", {"bits": "8"}, "bits"),
    ("quantize", {"backend": "gptq"}, "backend"),
    ("weight_noise", {"sigma": -0.1}, "sigma"),
    ("weight_noise", {"seed": True}, "seed"),
    ("prefill", {"k": -1}, "k"),
    ("prefill", {"top_p": 0}, "top_p"),
    ("gcg", {"n_tokens": -1}, "n_tokens"),
    ("gcg", {"position": "middle"}, "position"),
    ("latent", {"eps": -1}, "eps"),
    ("latent", {"layer": 1.5}, "layer"),
    ("direction", {"mode": "rotate"}, "mode"),
    ("direction", {"ablate_layers": "0,x"}, "ablate_layers"),
    ("direction", {"ablate_layers": [0, 1]}, "ablate_layers"),
    ("jailbreak_templates", {"mutation_rate": 2}, "mutation_rate"),
    ("multi_turn", {"max_prompt_tokens": 0}, "max_prompt_tokens"),
])
def test_config_errors_name_the_key(name, params, key):
    with pytest.raises(AttackConfigError) as exc:
        get_attack(name).Config.from_dict(params)
    assert exc.value.key == key and str(exc.value).startswith(f"attacks.{name}.{key}:")
    assert isinstance(exc.value, ValueError)


def test_config_coercions():
    cfg = get_attack("relearn").Config.from_dict({"lr": "1e-4", "steps": 10.0, "fraction": 1})
    assert cfg.lr == 1e-4 and cfg.steps == 10 and isinstance(cfg.fraction, float)
    assert get_attack("latent").Config.from_dict({"layer": None}).layer is None
    from robust_unlearning.attacks.direction import parse_layers
    assert get_attack("direction").Config.from_dict({"ablate_layers": "0,-1"}).ablate_layers == "0,-1"
    assert parse_layers("0,-1", 4) == [0, 3] and parse_layers("all", 3) == [0, 1, 2] and parse_layers(2, 4) == [2]
    assert parse_layers("last", 4) == [3]


def test_wilson_hand_values():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(0, 10)                    # 0/10: [0, z²/(n+z²)] = [0, 0.2775]
    assert lo == 0.0 and hi == pytest.approx(0.27753, abs=1e-4)
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.23659, abs=1e-4) and hi == pytest.approx(0.76341, abs=1e-4)
    m = rate_metrics([True, False, False, True])
    assert m["asr"] == 0.5 and m["asr_ci_low"] < 0.5 < m["asr_ci_high"]
    # nothing judged: no rate at all (NaN, a `missing` row in the report), never ASR 0 = a perfect defence
    empty = rate_metrics([], "asr_judged")
    assert set(empty) == {"asr_judged", "asr_judged_ci_low", "asr_judged_ci_high"}
    assert all(math.isnan(v) for v in empty.values())
