"""Figures: readable labels, one style per configuration, the training-terms figure from train_log.jsonl,
retain MCQ as the synthetic utility axis."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from robust_unlearning.report import figures as F

PRISM_FULL = "gamma-max~0.05_gcd-scope~global_lr~1e-3_rho~0.01"
PRISM_NOPROBE = "gamma-max~0_gcd-scope~global_lr~1e-3_rho~0.01"
PRISM_NOSAM = "gamma-max~0.05_gcd-scope~global_lr~1e-3_rho~0"
PRISM_NOGCD = "gamma-max~0.05_gcd-scope~none_lr~1e-3_rho~0.01"


def test_readable_labels():
    assert F.readable_label("prism", PRISM_FULL) == "PRISM"
    assert F.readable_label("prism", PRISM_NOPROBE) == "PRISM w/o probe"
    assert F.readable_label("prism", PRISM_NOSAM) == "PRISM w/o SAM"
    assert F.readable_label("prism", PRISM_NOGCD) == "PRISM w/o GCD"
    assert F.readable_label("prism", "gamma-mode~relative_gamma-target~0") == "PRISM w/o probe"
    assert F.readable_label("prism", "gamma-mode~relative_gamma-target~1") == "PRISM (rel. γ)"
    assert F.readable_label("sam_npo", "lr~1e-3_rho~0.01") == "SAM+NPO"
    names = F.configuration_names([("npo", "lr~1e-3"), ("npo", "lr~3e-3"), ("ga", "lr~2e-4")])
    assert names[("npo", "lr~1e-3")] == "NPO (lr=1e-3)" and names[("ga", "lr~2e-4")] == "GA"


def test_styles_unique_and_references_fixed():
    configs = [("base", "-"), ("retrain", "-"), ("ga", "a")] + [("prism", f"p{i}") for i in range(20)]
    st = F._styles(configs)
    assert st[("base", "-")] == ("black", "*") and st[("retrain", "-")][0] == "dimgrey"
    others = [st[c] for c in configs[2:]]
    assert len({(tuple(c), m) for c, m in others}) == len(others)          # no two share colour and marker
    # one colour per readable label: GA and PRISM differ; PRISM's settings share PRISM's colour while markers last
    assert st[("ga", "a")][0] != st[("prism", "p0")][0]
    assert len({tuple(st[("prism", f"p{i}")][0]) for i in range(12)}) == 1
    abl = F._styles([("ga", "lr~1"), ("prism", PRISM_FULL), ("prism", PRISM_NOPROBE), ("prism", PRISM_NOSAM),
                     ("prism", PRISM_NOGCD), ("npo", "lr~1"), ("sam_npo", "rho~0.01")])
    assert len({tuple(c) for c, _ in abl.values()}) == 7                    # GA never shares an ablation's green


def _log(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_training_terms_figure(tmp_path):
    bench = tmp_path / "synthetic"
    for seed, off in ((0, 0.0), (1, 0.02)):
        _log(bench / "unlearn" / "prism" / PRISM_FULL / f"seed~{seed}" / "train_log.jsonl",
             [{"step": s, "probe_grad_ratio": 0.1 * s + off, "gnorm_npo": 20.0, "sam_loss_gain": 0.5,
               "gcd_removed_fraction": 0.2, "cos_fr": -0.1} for s in range(1, 6)])
        _log(bench / "unlearn" / "npo" / "lr~1e-3" / f"seed~{seed}" / "train_log.jsonl",
             [{"step": s, "gnorm_npo": 25.0, "cos_fr": "nan"} for s in range(1, 6)])
    logs = F.read_train_logs(bench)
    assert set(logs["key"]) == {"probe_grad_ratio", "gnorm_npo", "sam_loss_gain", "gcd_removed_fraction", "cos_fr"}
    assert not ((logs.method == "npo") & (logs.key == "cos_fr")).any()       # "nan" entries are not points
    m = logs[(logs.key == "probe_grad_ratio") & (logs.step == 3)]["value"].mean()
    assert m == pytest.approx(0.31)
    written = F.write_figures(pd.DataFrame(columns=["method", "params"]), bench / "figures")
    assert [p.name for p in written] == ["training_terms.png", "training_terms.pdf"]
    assert all(p.stat().st_size > 1000 for p in written)


def test_tradeoff_uses_retain_mcq_on_synthetic():
    df = pd.DataFrame({"benchmark": ["synthetic"] * 3, "metric": ["retain_knowmem", "retain_mcq_acc", "forget_mcq_acc"]})
    assert F.utility_metric(df, df["metric"]) == "retain_mcq_acc"
    muse = df.assign(benchmark="muse_news")
    assert F.utility_metric(muse, muse["metric"]) == "retain_knowmem"


def _row(method, params, seed, attack, aparams, value, metric="forget_mcq_acc"):
    """One tidy metrics.csv row of an unlearned run."""
    return {"benchmark": "synthetic", "method": method, "params": params, "seed": str(seed),
            "model_id": f"unlearn/{method}/{params}/seed~{seed}", "attack": attack, "attack_params": aparams,
            "metric": metric, "value": value, "status": "ok", "n_items": 10, "judge": "", "checkpoint": "-",
            "note": ""}


@pytest.fixture()
def saved_figures(monkeypatch, tmp_path):
    """The matplotlib figures the figure functions would write (``_save`` captured, nothing written)."""
    figs = []
    monkeypatch.setattr(F, "_save", lambda fig, out_dir, name: figs.append(fig) or [tmp_path / name])
    return figs


def test_frontier_relearn_setting_is_the_one_every_configuration_faced():
    """A study's lr-sweep points face one setting of the relearning curve (attack_with "relearn:steps=20,..."):
    the trade-off figure must use that setting, not the curve's strongest one only three runs have."""
    from robust_unlearning.report.tables import Cells

    rows = []
    def row(*args):
        rows.append(_row(*args))
    for seed in (0, 1):
        for lr in ("5e-4", "1e-3", "2e-3"):
            row("npo", f"lr~{lr}", seed, "relearn", "fraction~1_steps~20", 0.7)
        for aparams in ("fraction~1_steps~5", "fraction~1_steps~50", "fraction~0.25_steps~50"):
            row("npo", "lr~1e-3", seed, "relearn", aparams, 0.8)
    assert F._strongest_relearn(Cells(pd.DataFrame(rows)), "forget_mcq_acc") == "fraction~1_steps~20"
    # with equal coverage the most steps, then the largest subset, wins
    same = [r for r in rows if r["params"] == "lr~1e-3"]
    assert F._strongest_relearn(Cells(pd.DataFrame(same)), "forget_mcq_acc") == "fraction~1_steps~50"


def test_relearning_curves_leave_out_single_point_configurations(saved_figures, tmp_path):
    """Configurations that faced one relearning point (a study's lr-sweep points) are not drawn as two-point
    'curves' beside the real curves; every panel's lines reach the legend."""
    from robust_unlearning.report.tables import Cells

    rows = []

    def row(*args):
        rows.append(_row(*args))
    for seed in (0, 1):
        for method in ("npo", "prism"):
            row(method, "lr~1e-3", seed, "none", "default", 0.5)
            for steps in (5, 20, 50):
                row(method, "lr~1e-3", seed, "relearn", f"fraction~1_steps~{steps}", 0.6 + steps / 100)
        row("npo", "lr~2e-3", seed, "none", "default", 0.4)
        row("npo", "lr~2e-3", seed, "relearn", "fraction~1_steps~20", 0.7)
    figs = saved_figures
    F.relearning_curves(Cells(pd.DataFrame(rows)), tmp_path)
    labels = [line.get_label() for line in figs[0].axes[0].get_lines()]
    assert len(labels) == 2 and not any("2e-3" in label for label in labels)
    # a grid where every configuration has one point still gets its (two-point) lines
    single = [r for r in rows if r["attack"] == "none" or r["attack_params"] == "fraction~1_steps~20"]
    F.relearning_curves(Cells(pd.DataFrame(single)), tmp_path)
    assert len(figs[1].axes[0].get_lines()) == 3


def test_prism_ablation_bars_show_the_primary_numbers_not_an_empty_score(saved_figures, tmp_path):
    """A study without VerbMem has no Unlearn Score: the bars are clean forget / retain MCQ and forget MCQ after
    the relearning setting every PRISM setting faced, not an empty US axis."""
    from robust_unlearning.report.tables import Cells

    rows = []

    def row(params, seed, attack, aparams, metric, value):
        rows.append(_row("prism", params, seed, attack, aparams, value, metric))
    for seed in (0, 1):
        for params in (PRISM_FULL, PRISM_NOPROBE):
            row(params, seed, "none", "default", "forget_mcq_acc", 0.5)
            row(params, seed, "none", "default", "retain_mcq_acc", 0.7)
            row(params, seed, "none", "default", "US", math.nan)
            row(params, seed, "relearn", "fraction~1_steps~20", "forget_mcq_acc", 0.8)
        row(PRISM_FULL, seed, "relearn", "fraction~1_steps~50", "forget_mcq_acc", 0.9)   # the full method only
    figs = saved_figures
    F.prism_ablation_bars(Cells(pd.DataFrame(rows)), tmp_path)
    labels = [t.get_text() for t in figs[0].axes[0].get_legend().get_texts()]
    assert labels == ["MCQ_f clean ↓", "MCQ_r clean ↑", "MCQ_f after relearn steps=20 frac=1 ↓"]
    heights = sorted(round(p.get_height(), 3) for p in figs[0].axes[0].patches)
    assert heights == [0.5, 0.5, 0.7, 0.7, 0.8, 0.8]
    nothing = [dict(r, value=math.nan) for r in rows]
    assert F.prism_ablation_bars(Cells(pd.DataFrame(nothing)), tmp_path) == [] and len(figs) == 1
