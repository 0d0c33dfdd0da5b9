"""Report on a fake results tree: tidy CSV, missing/diverged cells, seed pooling, tables, figures.

The tree follows docs/architecture.md ("Results tree", "File contracts") exactly (metrics.json / run.json schemas, eval/<model id>/<attack>/<params>/).
The Unlearn Score function is a local stand-in (docs/evaluation.md, "Unlearn Score" on MCQ accuracies) so that the expected
numbers are hand-computable whatever the metrics part implements.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from robust_unlearning.report.collect import collect_results
from robust_unlearning.report.common import KEY, parse_params
from robust_unlearning.report.figures import write_figures
from robust_unlearning.report.tables import summary_markdown, write_tables

BENCH = "synthetic"
NPO = "unlearn/npo/beta~0.1_retain-loss~gdr"
PRISM_A = "unlearn/prism/gcd~true_sam_rho~0.01/seed~0"
PRISM_B = "unlearn/prism/gcd~false_sam_rho~0.01/seed~0"
GA = "unlearn/ga/lr~1e-3/seed~0"
CLEAN = ("none", "default")


def stand_in_score(metrics, target):
    """U = clip(MCQ_r/MCQ_r*), E = clip(1 − MCQ_f/MCQ_f*), P = clip(1 − |PrivLeak|/100), US = (UEP)^(1/3)."""
    clip = lambda v: min(1.0, max(0.0, v))  # noqa: E731
    u = clip(metrics["retain_mcq_acc"] / target["retain_mcq_acc"])
    e = clip(1 - metrics["forget_mcq_acc"] / target["forget_mcq_acc"])
    p = clip(1 - abs(metrics["privleak"]) / 100)
    return {"unlearn_score": (u * e * p) ** (1 / 3), "us_utility": u, "us_effectiveness": e, "us_privacy": p}


def _metrics_json(bench: Path, model_id: str, attack: str, aparams: str, metrics: dict, status: str = "ok"):
    d = bench / "eval" / model_id / attack / aparams
    d.mkdir(parents=True, exist_ok=True)
    judge = {"name": "answer_match", "model": None} if "asr" in metrics else None
    doc = {"model": model_id, "benchmark": BENCH, "attack": attack, "attack_params": aparams, "metrics": metrics,
           "n_items": {k: 20 for k in metrics}, "judge": judge, "status": status, "provenance": {"seed": 0}}
    (d / "metrics.json").write_text(json.dumps(doc))
    (d / "items.jsonl").write_text("")


def _run_json(bench: Path, model_id: str, status: str = "ok", s_per_step: float | None = 0.5):
    d = bench / model_id
    d.mkdir(parents=True, exist_ok=True)
    cost = {"s_per_step": s_per_step, "tokens_per_s": 1000.0, "peak_mem_mb": 512.0, "steps": 40,
            "effective_batch": 8, "probe_grad_ratio": 0.0, "sam_loss_gain": 0.0, "gcd_removed_fraction": 0.0}
    (d / "run.json").write_text(json.dumps({"provenance": {"seed": 0}, "status": status, "cost": cost}))


def clean(f, r, pl=-10.0, verb=20.0):
    return {"forget_mcq_acc": f, "retain_mcq_acc": r, "privleak": pl, "forget_verbmem": verb}


def build_tree(bench: Path) -> list[tuple[str, str, str]]:
    """Writes the tree; returns the caller's expected cells (with one missing cell)."""
    _metrics_json(bench, "models/base", *CLEAN, clean(0.8, 0.8, 0.0, 60.0))
    _metrics_json(bench, "models/retrain", *CLEAN, clean(0.2, 0.8, 0.0, 10.0))
    _metrics_json(bench, "models/base", "prefill", "k~15", {"asr": 0.9})
    _metrics_json(bench, "models/base", "quantize", "bits~4", {"forget_mcq_acc": 0.7, "retain_mcq_acc": 0.7})
    for seed, (f, r) in enumerate([(0.2, 0.6), (0.4, 0.8)]):
        mid = f"{NPO}/seed~{seed}"
        _run_json(bench, mid, s_per_step=0.5 + seed)
        _metrics_json(bench, mid, *CLEAN, clean(f, r))
        _metrics_json(bench, mid, "prefill", "k~15", {"asr": 0.1 * (seed + 1)})
        for steps in (10, 25, 50):
            if seed == 1 and steps == 50:
                continue  # the missing cell
            _metrics_json(bench, mid, "relearn", f"fraction~1.0_steps~{steps}",
                          clean(f + steps / 100, r, -10.0, 20.0 + steps))
    _metrics_json(bench, f"{NPO}/seed~0", "quantize", "bits~4", {"forget_mcq_acc": 0.6, "retain_mcq_acc": 0.6})
    for mid, f in ((PRISM_A, 0.2), (PRISM_B, 0.4)):
        _run_json(bench, mid, s_per_step=1.5)
        _metrics_json(bench, mid, *CLEAN, clean(f, 0.8))
    _run_json(bench, GA, status="diverged", s_per_step=None)  # no evaluation exists for it
    expected = [("models/base", *CLEAN), ("models/retrain", *CLEAN), (GA, *CLEAN), (PRISM_A, *CLEAN),
                (PRISM_B, *CLEAN)]
    for seed in (0, 1):
        expected += [(f"{NPO}/seed~{seed}", *CLEAN), (f"{NPO}/seed~{seed}", "prefill", "k~15")]
        expected += [(f"{NPO}/seed~{seed}", "relearn", f"fraction~1.0_steps~{s}") for s in (10, 25, 50)]
    return expected


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    bench = tmp_path_factory.mktemp("results") / BENCH
    expected = build_tree(bench)
    df = collect_results(bench, BENCH, expected=expected, score_fn=stand_in_score, us_mode=None)
    return bench, expected, df


def _rows(df, model_id, attack="none", aparams="default"):
    return df[(df.model_id == model_id) & (df.attack == attack) & (df.attack_params == aparams)]


def _value(df, model_id, metric, attack="none", aparams="default"):
    sub = _rows(df, model_id, attack, aparams)
    sub = sub[sub.metric == metric]
    assert len(sub) == 1, (model_id, attack, aparams, metric)
    return sub.iloc[0]


# ------------------------------------------------------------------------------------------------ CSV
def test_one_row_per_cell_metric_and_hand_counted(tree):
    bench, _, df = tree
    assert not df.duplicated(KEY).any()
    assert list(df.columns[:10]) == ["benchmark", "method", "params", "seed", "model_id", "attack", "attack_params",
                                     "metric", "value", "status"]
    # evaluation rows: base 4+1+2, retrain 4, npo s0 4+1+3·4+2, npo s1 4+1+2·4, prism 2·4
    n_eval = 7 + 4 + 19 + 13 + 8
    # US rows (4 each) for every evaluation the stand-in can score: base/retrain/npo/prism clean, 5 relearn
    n_us = 4 * (2 + 2 + 2 + 5)
    n_cost = 6 * 5          # 3 compute + 3 training-term numbers: npo ×2, prism ×2, ga (diverged)
    n_missing = 4 + 4       # npo seed 1 relearn steps~50 (4 metrics + 4 US as seen on seed 0) ...
    n_diverged_cell = 8     # ... and ga's expected clean cell (8 clean metrics seen on other models)
    assert len(df) == n_eval + n_us + n_cost + n_missing + n_diverged_cell


def test_identity_columns_parsed_from_paths(tree):
    _, _, df = tree
    base = _rows(df, "models/base")
    assert set(base.method) == {"base"} and set(base.params) == {"-"} and set(base.seed) == {"-"}
    npo1 = _rows(df, f"{NPO}/seed~1")
    assert set(npo1.method) == {"npo"} and set(npo1.params) == {"beta~0.1_retain-loss~gdr"}
    assert set(npo1.seed) == {"1"} and set(df.benchmark) == {BENCH}


def test_cost_rows_from_run_json(tree):
    _, _, df = tree
    assert _value(df, f"{NPO}/seed~1", "s_per_step").value == 1.5
    assert _value(df, PRISM_A, "peak_mem_mb").value == 512.0
    assert _value(df, PRISM_A, "tokens_per_s").status == "ok"


def test_missing_cell_marked_with_empty_value(tree):
    bench, _, df = tree
    miss = _rows(df, f"{NPO}/seed~1", "relearn", "fraction~1.0_steps~50")
    assert set(miss.status) == {"missing"} and miss.value.isna().all()
    assert set(miss.metric) == set(_rows(df, f"{NPO}/seed~0", "relearn", "fraction~1.0_steps~50").metric)
    write_tables(df, bench / "tables")
    csv = pd.read_csv(bench / "tables" / "metrics.csv", dtype={"seed": str})
    assert len(csv) == len(df)
    back = csv[(csv.status == "missing")]
    assert len(back) == len(miss) and back.value.isna().all()


def test_diverged_run_yields_diverged_rows(tree):
    _, _, df = tree
    ga = df[df.model_id == GA]
    assert set(ga.status) == {"diverged"}
    assert {"s_per_step", "peak_mem_mb", "tokens_per_s", "forget_mcq_acc"} <= set(ga.metric)
    assert _value(df, GA, "peak_mem_mb").value == 512.0 and math.isnan(_value(df, GA, "s_per_step").value)


def test_unlearn_score_rows_clean_and_attacked(tree):
    _, _, df = tree
    # npo seed 0: U = 0.6/0.8, E = 1 − 0.2/0.8, P = 1 − 10/100
    u, e, p = 0.75, 0.75, 0.9
    assert _value(df, f"{NPO}/seed~0", "us_utility").value == pytest.approx(u)
    assert _value(df, f"{NPO}/seed~0", "unlearn_score").value == pytest.approx((u * e * p) ** (1 / 3))
    # relearn 10 steps on seed 0: forget 0.3 → E = 1 − 0.3/0.8
    assert _value(df, f"{NPO}/seed~0", "us_effectiveness", "relearn", "fraction~1.0_steps~10").value == \
        pytest.approx(1 - 0.3 / 0.8)
    assert _value(df, "models/base", "unlearn_score").value == pytest.approx(0.0)
    # the stand-in cannot score an ASR-only evaluation: no US rows there, no crash
    assert not (_rows(df, "models/base", "prefill", "k~15").metric == "unlearn_score").any()


def test_malformed_and_absent_inputs_never_crash(tmp_path):
    bench = tmp_path / BENCH
    (bench / "eval" / "models/base" / "none" / "default").mkdir(parents=True)
    (bench / "eval" / "models/base" / "none" / "default" / "metrics.json").write_text("{not json")
    df = collect_results(bench, BENCH, expected=[("models/retrain", "none", "default")], score_fn=None)
    assert set(zip(df.model_id, df.status)) == {("models/base", "failed"), ("models/retrain", "missing")}
    empty = collect_results(tmp_path / "nothing", BENCH)
    assert empty.empty and list(empty.columns[:10])[-1] == "status"
    out = write_tables(empty, tmp_path / "tables")
    assert [p.name for p in out] == ["metrics.csv", "summary.md", "summary.html"]
    assert write_figures(empty, tmp_path / "figures") == []


def test_real_unlearn_score_muse_like(tmp_path):
    pytest.importorskip("robust_unlearning.metrics.unlearn_score")
    bench = tmp_path / "muse_news"
    muse = lambda verb, kr, pl: {"forget_verbmem": verb, "retain_knowmem": kr, "privleak": pl}  # noqa: E731
    _metrics_json(bench, "models/base", *CLEAN, muse(60.0, 0.5, 0.0))
    _metrics_json(bench, f"{NPO}/seed~0", *CLEAN, muse(15.0, 0.4, -10.0))
    _metrics_json(bench, f"{NPO}/seed~0", "relearn", "steps~10", muse(30.0, 0.5, -10.0))
    df = collect_results(bench, "muse_news")  # the real metrics.unlearn_score
    u, e, p = 0.8, 0.75, 0.9  # 0.4/0.5, 1 − 15/60, 1 − 10/100
    assert _value(df, f"{NPO}/seed~0", "unlearn_score").value == pytest.approx((u * e * p) ** (1 / 3))
    assert _value(df, f"{NPO}/seed~0", "us_effectiveness", "relearn", "steps~10").value == pytest.approx(0.5)
    assert _value(df, "models/base", "unlearn_score").value == pytest.approx(0.0)


def test_real_unlearn_score_on_the_synthetic_world_uses_retain_mcq(tmp_path):
    """KnowMem_r of a small model is ~0 (noise), so the synthetic world's U is retain MCQ above chance."""
    bench = tmp_path / "synthetic"
    row = lambda verb, kr, mcq_r, pl: {"forget_verbmem": verb, "retain_knowmem": kr,  # noqa: E731
                                       "retain_mcq_acc": mcq_r, "privleak": pl}
    _metrics_json(bench, "models/base", *CLEAN, row(60.0, 1.0, 0.95, -100.0))
    _metrics_json(bench, f"{NPO}/seed~0", *CLEAN, row(15.0, 0.0, 0.81, -10.0))
    df = collect_results(bench, "synthetic")
    u, e, p = (0.81 - 0.25) / (0.95 - 0.25), 0.75, 0.9
    assert _value(df, f"{NPO}/seed~0", "us_utility").value == pytest.approx(u)
    assert _value(df, f"{NPO}/seed~0", "unlearn_score").value == pytest.approx((u * e * p) ** (1 / 3))


def test_wmdp_score_gets_prompt_attack_asr(tmp_path):
    bench = tmp_path / "wmdp_bio"
    # the names the lm-eval backend / letter scorer write (metrics/unlearn_score.py, WMDP_*)
    wmdp = lambda f, r: {"forget_mcq_acc_letter": f, "retain_mcq_acc_letter": r}  # noqa: E731
    _metrics_json(bench, "models/base", *CLEAN, wmdp(0.65, 0.6))
    mid = f"{NPO}/seed~0"
    _metrics_json(bench, mid, *CLEAN, wmdp(0.35, 0.55))
    for attack, ap, asr in (("prefill", "k~15", 0.2), ("prefill", "k~20", 0.4), ("multi_turn", "default", 0.3)):
        _metrics_json(bench, mid, attack, ap, {"asr": asr})
    _metrics_json(bench, mid, "relearn", "steps~100", wmdp(0.55, 0.55))
    calls = []

    def recording(metrics, target, mode=None, asr_values=None):
        calls.append((mode, sorted(asr_values or [])))
        if "forget_mcq_acc_letter" not in metrics:
            raise KeyError("forget_mcq_acc_letter")
        return {"unlearn_score": 0.5, "us_utility": 0.5, "us_effectiveness": 0.5,
                **({"us_privacy": 0.5} if asr_values else {})}

    df = collect_results(bench, "wmdp_bio", score_fn=recording)
    assert ("wmdp", [0.2, 0.3, 0.4]) in calls and ("wmdp", []) in calls
    assert _value(df, mid, "us_privacy").value == 0.5
    relearn = _rows(df, mid, "relearn", "steps~100")
    assert "us_privacy" not in set(relearn.metric) and "sqrt" in relearn[relearn.metric == "unlearn_score"].iloc[0].note
    if importlib.util.find_spec("robust_unlearning.metrics.unlearn_score") is None:
        return
    real = collect_results(bench, "wmdp_bio")
    u, e, r = (0.55 - 0.25) / (0.6 - 0.25), (0.65 - 0.35) / (0.65 - 0.25), 1 - 0.3
    assert _value(real, mid, "unlearn_score").value == pytest.approx((u * e * r) ** (1 / 3))


# --------------------------------------------------------------------------------------------- tables
def _md_rows(path: Path) -> int:
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("|")]
    return len(lines) - 2


def _tex_rows(path: Path) -> int:
    lines = path.read_text().splitlines()
    return lines.index("\\bottomrule") - lines.index("\\midrule") - 1


def test_tables_written_with_expected_rows(tree, tmp_path):
    _, _, df = tree
    written = write_tables(df, tmp_path)
    names = sorted(p.name for p in written)
    stems = ["main", "relearning", "prompt_attacks", "whitebox", "prism_ablation"]
    assert names == sorted(["metrics.csv", "summary.md", "summary.html"]
                           + [f"{s}.{e}" for s in stems for e in ("md", "tex", "html")])
    assert all(p.stat().st_size > 0 for p in written)
    expected_rows = {"main": 6,            # base, retrain, ga (diverged), npo+gdr, prism ×2
                     "relearning": 2,      # npo × {forget_mcq_acc, forget_verbmem}
                     "prompt_attacks": 2,  # base, npo
                     "whitebox": 2,        # base, npo × forget_mcq_acc under quantize
                     "prism_ablation": 2}
    for stem, n in expected_rows.items():
        assert _md_rows(tmp_path / f"{stem}.md") == n, stem
        assert _tex_rows(tmp_path / f"{stem}.tex") == n, stem
        page = (tmp_path / f"{stem}.html").read_text()
        assert page.startswith("<!DOCTYPE html>") and page.count("<tr>") == n + 1, stem   # header + rows
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_summary_tables_stay_narrow(tree, tmp_path):
    """summary.md is read in a terminal or on GitHub: every table has at most 3 label columns + 8 values; the
    metrics left out are named below the clean tables (they stay in metrics.csv)."""
    _, _, df = tree
    extra = df[df["metric"] == "forget_mcq_acc"].assign(metric="forget_mcq_acc_cloze_sum")
    summary = summary_markdown(pd.concat([df, extra], ignore_index=True))
    widths = [ln.count("|") - 1 for ln in summary.splitlines() if ln.startswith("|")]
    assert widths and max(widths) <= 11, max(widths)
    assert "`forget_mcq_acc_cloze_sum`" in summary and "metrics.csv" in summary


def test_summary_asr_table_shows_the_plain_question_rate_as_clean(tree):
    """ASR has no clean evaluation: the white-box attacks' ``asr_clean`` (same items, no attack) is its clean."""
    _, _, df = tree
    row = df[(df["metric"] == "forget_mcq_acc") & (df["attack"] == "none") & (df["method"] == "base")].iloc[[0]]
    extra = pd.concat([row.assign(attack="gcg", attack_params="default", metric="asr", value=0.5),
                       row.assign(attack="gcg", attack_params="default", metric="asr_clean", value=0.125)])
    summary = summary_markdown(pd.concat([df, extra], ignore_index=True))
    table = summary[summary.index("Under attack: ASR"):]
    assert "| clean |" in table.splitlines()[2]
    base = next(ln for ln in table.splitlines() if ln.startswith("| Base"))
    assert base.split("|")[4].strip() == "0.125" and "0.500" in base, base


def test_mean_std_over_seeds_and_labels(tree, tmp_path):
    _, _, df = tree
    write_tables(df, tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    npo_line = next(ln for ln in summary.splitlines() if ln.startswith("| NPO+GDR"))
    assert "0.300 ± 0.141" in npo_line          # forget MCQ 0.2, 0.4
    assert "| Base |" in summary and "| Retrain |" in summary
    assert "diverged" in summary and "missing" in summary
    main = (tmp_path / "main.md").read_text()
    assert "1.000 ± 0.707" in main              # s/step 0.5, 1.5
    relearn = (tmp_path / "relearning.md").read_text()
    line = next(ln for ln in relearn.splitlines() if "NPO+GDR" in ln and "MCQ_f" in ln)
    assert line.rstrip(" |").endswith("0.700 †")  # 50 steps: seed 0 only, seed 1 missing
    tex = (tmp_path / "main.tex").read_text()
    assert "\\toprule" in tex and "$\\pm$" in tex and "NPO+GDR" in tex
    ablation = (tmp_path / "prism_ablation.md").read_text()
    assert "gcd=false" in ablation and "gcd=true" in ablation


def test_summary_html_holds_every_summary_table_escaped(tree, tmp_path):
    """summary.html (what the Snakemake report shows) has the same tables and cells as summary.md."""
    _, _, df = tree
    write_tables(df, tmp_path)
    md, page = (tmp_path / "summary.md").read_text(), (tmp_path / "summary.html").read_text()
    n_tables = sum(1 for ln in md.splitlines() if ln.startswith("|:"))
    assert n_tables >= 3 and page.count("<table>") == n_tables
    assert page.count("<tr>") == sum(1 for ln in md.splitlines() if ln.startswith("| "))
    assert "0.300 ± 0.141" in page and "<h1>Results summary: synthetic</h1>" in page
    assert "<script" not in page and "http" not in page          # self-contained, nothing fetched
    from robust_unlearning.report.tables import Table
    t = Table("x", "a <b> & c", ["Method", "v"], [["<img src=x>", "1"]]).html()
    assert "&lt;img src=x&gt;" in t and "<img" not in t and "a &lt;b&gt; &amp; c" in t


def test_tables_are_deterministic(tree, tmp_path):
    _, _, df = tree
    a, b = write_tables(df, tmp_path / "a"), write_tables(df, tmp_path / "b")
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes(), pa.name


# -------------------------------------------------------------------------------------------- figures
def test_figures_written_and_non_empty(tree, tmp_path):
    _, _, df = tree
    land = tmp_path / "npo_landscape.json"
    land.write_text(json.dumps({"method": "NPO", "alpha": [-1, 0, 1], "loss": {"forget": [3, 1, 3],
                                                                            "retain": [2, 1, 2]}}))
    multi = tmp_path / "all_landscape.json"
    multi.write_text(json.dumps({"PRISM": {"alpha": [-1, 0, 1], "loss": {"forget": [2, 1, 2],
                                                                         "retain": [1.5, 1, 1.5]}}}))
    written = write_figures(df, tmp_path / "fig", landscape_files=[land, multi])
    stems = ["relearning_curves", "tradeoff", "attack_heatmap_forget_mcq_acc", "attack_heatmap_asr",
             "prism_ablation", "loss_landscape"]
    assert sorted(p.name for p in written) == sorted(f"{s}.{e}" for s in stems for e in ("png", "pdf"))
    assert all(p.stat().st_size > 0 for p in written)
    assert not [p for p in (tmp_path / "fig").iterdir() if p.name.startswith(".")]


def test_figures_with_absent_data_are_skipped(tree, tmp_path, caplog):
    _, _, df = tree
    only_base = df[df.model_id == "models/base"]
    only_base = only_base[only_base.attack == "none"]
    with caplog.at_level("INFO"):
        written = write_figures(only_base, tmp_path)
    assert [p.name for p in written] == ["tradeoff.png", "tradeoff.pdf"]
    assert "relearning_curves skipped" in caplog.text and "prism_ablation skipped" in caplog.text


# ------------------------------------------------------------------------------------------ boundaries
def _absolute_imports(path: Path, package: str) -> list[str]:
    """Every module ``path`` imports, relative imports resolved against ``package`` (``from ..methods import x``
    inside robust_unlearning.report is robust_unlearning.methods; ``from .. import methods`` is too)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append(mod)
            out += [f"{mod}.{a.name}" for a in node.names]   # `from .. import methods` names a module too
    return out


def test_import_resolution_sees_relative_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("from ..methods import loop\nfrom .. import attacks\nfrom .common import x\nimport os\n")
    names = _absolute_imports(src, "robust_unlearning.report")
    assert "robust_unlearning.methods" in names and "robust_unlearning.attacks" in names
    assert "robust_unlearning.report.common" in names and "os" in names


def test_report_imports_neither_methods_nor_attacks():
    import robust_unlearning.report as report

    for path in Path(report.__file__).parent.glob("*.py"):
        for name in _absolute_imports(path, "robust_unlearning.report"):
            assert not name.startswith(("robust_unlearning.methods", "robust_unlearning.attacks")), (path, name)
            if name.startswith("robust_unlearning.metrics"):
                assert name in ("robust_unlearning.metrics", "robust_unlearning.metrics.unlearn_score") or \
                    name.startswith("robust_unlearning.metrics.unlearn_score"), (path, name)


def test_report_modules_load_neither_methods_nor_attacks_at_run_time():
    """The static check above misses dynamic imports (importlib); a fresh interpreter shows what really loads."""
    import subprocess
    import sys

    code = ("import sys, robust_unlearning.report.build, robust_unlearning.report.collect, "
            "robust_unlearning.report.tables, robust_unlearning.report.figures; "
            "print(' '.join(m for m in sys.modules if m.startswith('robust_unlearning.')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "robust_unlearning.report.build" in loaded
    bad = [m for m in loaded if m.startswith(("robust_unlearning.methods", "robust_unlearning.attacks"))]
    assert not bad, bad


def test_attack_params_parse_for_steps():
    assert parse_params("fraction~0.5_steps~10") == {"fraction": "0.5", "steps": "10"}


def test_a_metric_without_a_finite_value_is_a_missing_row_with_its_reason(tmp_path):
    """NaN in metrics.json (JSON NaN, or null) is never an `ok` row with a blank value: `missing`, not computable."""
    bench = tmp_path / "synthetic"
    _metrics_json(bench, "models/base", *CLEAN, {"forget_mcq_acc": 0.8, "privleak": float("nan"),
                                                 "privleak_minkpp": None})
    df = collect_results(bench, "synthetic")
    for name in ("privleak", "privleak_minkpp"):
        row = _value(df, "models/base", name)
        assert row.status == "missing" and math.isnan(row.value) and "not computable" in row.note, row
    assert _value(df, "models/base", "forget_mcq_acc").status == "ok"
