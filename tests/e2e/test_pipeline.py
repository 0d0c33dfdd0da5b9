"""The whole DAG on the miniature config, in a temp copy of the workflow: data -> models -> unlearn -> attack ->
evaluate -> aggregate. Asserts the science from the aggregated CSV, then that a second dry run has nothing to do.
The run itself is the session fixture ``reference_run`` (tests/conftest.py), shared with the reliability and
SLURM tests."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

import relkit

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def pipeline_run(reference_run):
    """The session's one run of the miniature config (tests/conftest.py; networking blocked while it ran)."""
    df = pd.read_csv(reference_run.workdir / "results" / "synthetic" / "tables" / "metrics.csv")
    return reference_run.workdir, df


def value(df, method, metric, attack="none", attack_params="default", params=None):
    rows = df[(df.method == method) & (df.metric == metric) & (df.attack == attack) & (df.attack_params == attack_params)]
    if params is not None:
        rows = rows[rows.params == params]
    assert len(rows) >= 1, f"no row for {method} {metric} {attack} {attack_params}"
    return float(rows.value.mean())


def test_every_grid_cell_has_rows(pipeline_run):
    _, df = pipeline_run
    # no expected cell is absent; the only `missing` rows are numbers that cannot be computed, with their reason
    # (the retrain oracle's Unlearn Score: it is the PrivLeak reference, so it has no PrivLeak of its own)
    missing = df[df.status == "missing"]
    assert missing.note.str.startswith("not computable").all(), missing
    assert set(missing.metric) <= {"unlearn_score"}, missing
    clean = df[df.attack == "none"]
    for method in ("base", "retrain", "ga", "graddiff", "npo"):
        for metric in ("forget_mcq_acc", "retain_mcq_acc", "forget_knowmem", "retain_knowmem", "forget_verbmem"):
            assert len(clean[(clean.method == method) & (clean.metric == metric)]) == 1, (method, metric)
    relearn = df[(df.attack == "relearn") & (df.metric == "forget_mcq_acc")]
    # the 3 unlearned models, one relearning strength each
    assert len(relearn) == 3


def test_base_knows_and_oracle_does_not(pipeline_run):
    _, df = pipeline_run
    base_forget = value(df, "base", "forget_mcq_acc")
    assert base_forget >= 0.6, base_forget                       # chance is 0.25
    assert value(df, "base", "retain_mcq_acc") >= 0.6
    assert value(df, "retrain", "forget_mcq_acc") <= 0.45        # never saw the forget facts
    assert value(df, "retrain", "retain_mcq_acc") >= 0.6


def test_npo_forgets_and_keeps_utility(pipeline_run):
    _, df = pipeline_run
    drop_forget = value(df, "base", "forget_mcq_acc") - value(df, "npo", "forget_mcq_acc")
    drop_retain = value(df, "base", "retain_mcq_acc") - value(df, "npo", "retain_mcq_acc")
    assert drop_forget >= 0.2, drop_forget
    assert drop_retain < drop_forget / 2, (drop_forget, drop_retain)


def test_relearning_brings_knowledge_back(pipeline_run):
    _, df = pipeline_run
    clean = value(df, "npo", "forget_mcq_acc")
    relearned = value(df, "npo", "forget_mcq_acc", attack="relearn", attack_params="fraction~1_steps~50")
    assert relearned > clean + 0.1, (clean, relearned)


def test_the_loss_landscape_rule_runs_on_a_finished_model(reference_run, tmp_path):
    """The miniature config leaves the landscape out (one ~20 s job per clean model on 2 cores); this runs the rule
    once, for the base model, in a copy of the finished run with `report.loss_landscape` switched on."""
    cfg = relkit.mini_config()
    cfg["report"].update(loss_landscape=True, landscape_points=5)
    wd = relkit.seed_workdir(reference_run.workdir, tmp_path / "wf", cfg)
    target = f"{relkit.BENCH}/landscape/models/base/landscape.json"
    res = relkit.run_snakemake(wd, target)
    assert res.returncode == 0, relkit.explain(res, wd)
    assert relkit.finished_jobs(res.stdout + res.stderr) == ["loss_landscape"]   # the data and model were reused
    result = json.loads((wd / target).read_text())
    alphas = result["alpha"]
    assert len(alphas) == 5 and 0.0 in alphas and sorted(result["loss"]) == ["forget", "retain"]
    for split, losses in result["loss"].items():
        assert len(losses) == 5 and all(math.isfinite(v) for v in losses), split
        at_zero = losses[alphas.index(0.0)]
        assert at_zero < losses[0] and at_zero < losses[-1], (split, alphas, losses)   # trained weights: a valley


def test_summary_and_second_dry_run_has_nothing_to_do(pipeline_run):
    workdir, _ = pipeline_run
    summary = (workdir / "results" / "synthetic" / "tables" / "summary.md").read_text()
    assert "npo" in summary.lower() and "retrain" in summary.lower()
    res = relkit.run_snakemake(workdir, "-n")
    assert res.returncode == 0, res.stderr
    assert "Nothing to be done" in res.stdout + res.stderr, (res.stdout + res.stderr)[-3000:]


def test_report_has_every_table_and_figure_by_stage(pipeline_run):
    """`snakemake --report` (what `make report` runs) on the finished run: one self-contained HTML file with every
    paper table and figure of the aggregate, grouped by stage, no broken caption; one table row per clean model."""
    workdir, df = pipeline_run
    res = relkit.run_snakemake(workdir, "--report", "report.html")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ERROR" not in res.stderr, res.stderr[-3000:]       # docutils reports caption errors here
    html = (workdir / "report.html").read_text(encoding="utf-8", errors="replace")
    tables = workdir / "results" / "synthetic" / "tables"
    figures = sorted((workdir / "results" / "synthetic" / "figures").glob("*.png"))
    # the report's viewer shows HTML and images, so every table is there as its HTML twin
    items = [tables / "summary.html", tables / "metrics.csv", *sorted((tables / "paper").glob("*.html")), *figures]
    assert len(figures) >= 3 and (tables / "paper" / "main.html").is_file()
    assert sorted(p.stem for p in (tables / "paper").glob("*.html")) == sorted(p.stem for p in
                                                                               (tables / "paper").glob("*.md"))
    for path in items:
        assert path.stat().st_size > 0, path
        assert path.name in html, f"{path.name} is not in the report"
    for stage in ("3. Unlearning", "4. Attacks", "5. Evaluation", "6. Aggregate"):
        assert stage in html, stage
    # the main table: one row per clean model with an Unlearn Score row; the retrain oracle's is `– ‡` (it is the
    # privacy reference), with the reason in the footnote
    scored = df[(df.attack == "none") & (df.metric == "unlearn_score")]
    main = (tables / "paper" / "main.md").read_text()
    main_rows = [ln for ln in main.splitlines() if ln.startswith("|")][2:]
    assert len(main_rows) == scored.model_id.nunique() == 5, main_rows   # base, retrain, GA, GradDiff, NPO
    assert (scored.status == "ok").sum() == 4 and "not computable" in main
