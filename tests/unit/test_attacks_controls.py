"""Zero-strength controls and the never-beats flag; AutoDAN-HGA crossover fires; diff_ablate directions."""
from __future__ import annotations

import random

import pandas as pd
import torch

from robust_unlearning.attacks import jailbreak_templates as J
from robust_unlearning.report.controls import control_table, find_control, never_beats_control, seed_summary
from robust_unlearning.attacks.direction import diff_directions


def _df(rows):
    return pd.DataFrame([dict(model_id=m, attack=a, attack_params=p, metric=k, value=v, status="ok")
                         for m, a, p, k, v in rows])


def test_control_table_and_flag():
    df = _df([
        ("base", "latent", "eps~0", "asr", 0.1), ("base", "latent", "eps~0.1", "asr", 0.5),
        ("npo", "latent", "eps~0", "asr", 0.0), ("npo", "latent", "eps~0.1", "asr", 0.0),
        ("base", "gcg", "n-tokens~0", "asr", 0.2), ("base", "gcg", "n-tokens~10", "asr", 0.2),
        ("npo", "gcg", "n-tokens~0", "asr", 0.3), ("npo", "gcg", "n-tokens~10", "asr", 0.25),
        ("npo", "none", "default", "forget_mcq_acc", 0.5), ("npo", "quantize", "bits~4", "forget_mcq_acc", 0.6),
        ("npo", "multi_turn", "default", "asr", 0.3),
    ])
    t = control_table(df)
    lat = t[t["attack"] == "latent"].set_index("model_id")
    assert lat.loc["base", "beats"] is True or bool(lat.loc["base", "beats"])
    assert not bool(lat.loc["npo", "beats"]) and lat.loc["npo", "control"] == "latent/eps~0"
    q = t[t["attack"] == "quantize"].iloc[0]
    assert q["control"] == "none/clean" and q["control_value"] == 0.5 and bool(q["beats"])
    assert t[t["attack"] == "multi_turn"].iloc[0]["control"] == "no control"
    # GCG never beats its zero-token control (equal on base, lower on npo): flagged; latent beats once: not
    assert never_beats_control(df) == ["gcg"]


def test_find_control_keeps_other_settings():
    cands = ["lam~0_mode~steer", "lam~0_mode~diff-ablate", "lam~1_mode~steer", "lam~1_mode~diff-ablate"]
    assert find_control("direction", "lam~1_mode~diff-ablate", cands) == "lam~0_mode~diff-ablate"
    assert find_control("direction", "lam~0_mode~steer", cands) is None          # a control has none
    assert find_control("relearn", "steps~10", ["steps~10"]) is None


def test_seed_summary_mean_and_worst():
    df = _df([("m", "weight_noise", f"seed~{s}_sigma~0.02", "forget_mcq_acc", v)
              for s, v in enumerate([0.2, 0.5, 0.3])])
    row = seed_summary(df).iloc[0]
    assert row["setting"] == "sigma~0.02" and row["n_seeds"] == 3
    assert abs(row["mean"] - 1.0 / 3) < 1e-12 and row["worst"] == 0.5


def test_the_summary_shows_weight_noise_over_seeds():
    """Several noise draws per σ: the summary has a table of their mean and worst case; a missing draw is left
    out of both, and a σ drawn once gets no row (nothing to summarise)."""
    from robust_unlearning.report.tables import _noise_seed_blocks

    df = _df([("unlearn/npo/lr~1e-3/seed~0", "weight_noise", f"seed~{s}_sigma~0.02", "forget_mcq_acc", v)
              for s, v in enumerate([0.2, 0.5, 0.3, float("nan")])]
             + [("models/base", "weight_noise", "seed~0_sigma~0.05", "forget_mcq_acc", 0.9)])
    (table,) = _noise_seed_blocks(df)
    assert table.header == ["Model", "Setting", "mean", "worst", "seeds"]
    assert table.rows == [["`unlearn/npo/lr~1e-3/seed~0`", "sigma~0.02", "0.333", "0.500", "3"]]
    assert "forget_mcq_acc" in table.caption
    assert _noise_seed_blocks(df[df["attack_params"] == "seed~0_sigma~0.05"]) == []


def test_genetic_crossover_fires_in_a_short_search(monkeypatch):
    """Crossover must happen even when steps < paragraph_every (it used to need step 5)."""
    monkeypatch.setattr(J, "template_fitness", lambda m, t, templates, items, max_rows=256:
                        [float(len(x) % 7) for x in templates])
    cfg = J.JailbreakTemplates.Config.from_dict({"population": 32, "steps": 3})
    assert cfg.mutation_rate == 0.01 and cfg.crossover_rate == 0.5
    res = J.genetic_search(None, None, list(J.SHIPPED_TEMPLATES), [{"question": "q", "answer": "a"}], cfg, seed=0)
    # generation 0 is a paragraph (crossover) step: ~half of the 30 children are crossed over
    assert res["crossovers"][0] > 5 and res["crossovers"][1:] == [0, 0]
    a, b = J.SHIPPED_TEMPLATES[0], J.SHIPPED_TEMPLATES[2]
    child = J.crossover(a, b, 5, random.Random(1))
    assert child != a and child != b


def test_diff_directions_unit_and_skip_equal_blocks():
    orig = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    att = torch.tensor([[1.0, 0.0, 3.0], [0.0, 2.0, 0.0]])
    dirs, norms = diff_directions(att, orig)
    assert list(dirs) == [0] and torch.allclose(dirs[0], torch.tensor([0.0, 0.0, 1.0]))
    assert norms == [3.0, 0.0]
