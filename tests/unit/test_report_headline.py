"""The README's headline table from a tidy metrics.csv (report/headline.py): means over seeds, `missing` for cells
that failed, `–` for cells not in the grid, the base and oracle references in the caption."""
from __future__ import annotations

import pandas as pd
import pytest

from robust_unlearning.report.headline import headline_table, main

COLS = ["benchmark", "method", "params", "seed", "model_id", "attack", "attack_params", "metric", "value", "status"]


def _row(model_id, attack, attack_params, metric, value, status="ok"):
    parts = model_id.split("/")
    method, params, seed = (parts[1], parts[2], parts[3][5:]) if parts[0] == "unlearn" else (parts[1], "-", "-")
    return ["synthetic", method, params, seed, model_id, attack, attack_params, metric, value, status]


def _table() -> pd.DataFrame:
    rows = [_row("models/base", "none", "default", "forget_mcq_acc", 0.99),
            _row("models/base", "none", "default", "retain_mcq_acc", 0.95),
            _row("models/retrain", "none", "default", "forget_mcq_acc", 0.25),
            _row("models/retrain", "none", "default", "retain_mcq_acc", 0.94)]
    for seed, (f, r) in enumerate([(0.30, 0.80), (0.40, 0.90)]):          # PRISM, two seeds
        m = f"unlearn/prism/lr~1e-5/seed~{seed}"
        rows += [_row(m, "none", "default", "forget_mcq_acc", f), _row(m, "none", "default", "retain_mcq_acc", r),
                 _row(m, "relearn", "fraction~0.5_steps~50", "forget_mcq_acc", 0.9),
                 _row(m, "relearn", "fraction~0.5_steps~10", "forget_mcq_acc", 0.5)]
    ga = "unlearn/ga/lr~1e-5/seed~0"                                        # GA: its relearning job failed
    rows += [_row(ga, "none", "default", "forget_mcq_acc", 0.2), _row(ga, "none", "default", "retain_mcq_acc", 0.3),
             _row(ga, "relearn", "fraction~0.5_steps~50", "forget_mcq_acc", "", "failed")]
    return pd.DataFrame(rows, columns=COLS)


def test_headline_table_by_hand():
    text = headline_table(_table())
    caption, table = text.split("\n\n")
    assert "base model 0.99 forget / 0.95 retain" in caption and "retrain oracle 0.25 / 0.94" in caption
    lines = table.strip().splitlines()
    assert lines[0] == "| | GA | **PRISM** |"                            # methods in the report's order
    assert lines[2] == "| forget MCQ ↓ | 0.20 | 0.35 (n=2) |"              # mean over seeds, n shown
    assert lines[3] == "| retain MCQ ↑ | 0.30 | 0.85 (n=2) |"
    # relearning rows ordered by steps; GA's failed job is `missing`, never 0; GA has no 10-step row: `–`
    assert lines[4] == "| forget MCQ after relearn steps=10 frac=0.5 | – | 0.50 (n=2) |"
    assert lines[5] == "| forget MCQ after relearn steps=50 frac=0.5 | missing | 0.90 (n=2) |"
    assert len(lines) == 6                                                  # no GCG rows in this grid


def test_two_settings_of_one_method_get_a_column_each_and_bad_input_is_named(tmp_path, capsys):
    df = _table()
    other = df[df["model_id"] == "unlearn/ga/lr~1e-5/seed~0"].assign(
        params="lr~2e-5", model_id="unlearn/ga/lr~2e-5/seed~0")
    header = headline_table(pd.concat([df, other])).split("\n\n")[1].splitlines()[0]
    assert header == "| | GA (lr=1e-5) | GA (lr=2e-5) | **PRISM** |"
    with pytest.raises(ValueError, match="no unlearned model"):
        headline_table(df[~df["model_id"].str.startswith("unlearn/")])
    bad = tmp_path / "metrics.csv"
    bad.write_text("not,a,tidy\n1,2,3\n")
    assert main([str(bad)]) == 1 and str(bad) in capsys.readouterr().err


def test_readme_block_between_the_markers_is_replaced_and_nothing_else(tmp_path, capsys):
    csv = tmp_path / "metrics.csv"
    _table().to_csv(csv, index=False)
    readme = tmp_path / "README.md"
    readme.write_text("# title\n\nbefore\n<!-- headline: start -->\nold table\n| 1 | 2 |\n<!-- headline: end -->\nafter\n")
    assert main([str(csv), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n<!-- headline: start -->\n<!-- made by: python -m ")
    assert text.endswith("<!-- headline: end -->\nafter\n")
    assert "old table" not in text and headline_table(_table()) in text
    assert main([str(csv), "--readme", str(readme)]) == 0 and readme.read_text() == text     # idempotent
    # a file without exactly one pair of markers is named and left as it was
    readme.write_text("no markers\n")
    assert main([str(csv), "--readme", str(readme)]) == 1
    assert str(readme) in capsys.readouterr().err and readme.read_text() == "no markers\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "metrics.csv"]       # no temp file left


def test_the_caption_says_whether_the_cells_have_a_spread():
    assert "Mean over seeds (n shown)" in headline_table(_table()).split("\n\n")[0]      # PRISM has two seeds
    one_seed = _table()
    one_seed = one_seed[~one_seed["model_id"].str.endswith("seed~1")]
    caption = headline_table(one_seed).split("\n\n")[0]
    assert "One seed per cell, so no interval" in caption and "Mean over seeds" not in caption
