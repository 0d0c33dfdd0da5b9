"""Our `letter` MCQ scorer (metrics/mcq.py) against lm-evaluation-harness itself, run through its Python API on the
same in-memory model (metrics/lm_eval_backend.py): a local task in lm-eval's own YAML format (the MMLU / WMDP
zero-shot template) over the tiny world's MCQ items. Every choice's log-likelihood and every prediction must agree."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval", reason="the lmeval extra (installed by make setup)")

from robust_unlearning.data.formats import Benchmark
from robust_unlearning.data.synthetic import generate_world
from robust_unlearning.metrics.lm_eval_backend import lm_eval_mcq
from robust_unlearning.metrics.mcq import score_mcq
from robust_unlearning.models.architectures import build_llama
from robust_unlearning.models.cache import corpus_for_tokenizer
from robust_unlearning.models.tokenizer import train_bpe_tokenizer

pytestmark = [pytest.mark.slow]

TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
description: "The following are multiple choice questions (with answers) about {subject}.\\n\\n"
doc_to_text: "{{{{question.strip()}}}}\\nA. {{{{choices[0]}}}}\\nB. {{{{choices[1]}}}}\\nC. {{{{choices[2]}}}}\\nD. {{{{choices[3]}}}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval")
    generate_world(root / "data", seed=0, size="tiny")
    bench = Benchmark(root / "data")
    tok = train_bpe_tokenizer(corpus_for_tokenizer(root / "data"), vocab_size=1000)
    # a random init whose matrices are scaled up, so that its answer depends on the question (a plain random init
    # gives every item the same letter, which would make equal predictions trivial)
    model = build_llama(tok, preset="tiny-llama", seed=3).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    return root, bench, tok, model


def _task(root: Path, name: str, rows: list[dict], subject: str) -> None:
    data = root / "tasks" / f"{name}.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps({"question": r["question"], "choices": r["choices"], "answer": r["answer"]})
                            + "\n" for r in rows))
    (root / "tasks" / f"{name}.yaml").write_text(TASK_YAML.format(name=name, data=data, subject=subject))


def test_letter_scorer_matches_lm_eval_on_every_item(world):
    """One lm-eval task per subject, as MMLU has (the description names the subject)."""
    root, bench, tok, model = world
    by_subject: dict[str, list[dict]] = {}
    for split in ("forget", "retain"):
        for row in bench.mcq(split):
            by_subject.setdefault(row.get("subject") or "biology", []).append(row)
    tasks = {f"ru_{subject}": rows for subject, rows in sorted(by_subject.items())}
    assert len(tasks) >= 2 and sum(map(len, tasks.values())) > 90
    for (name, rows), subject in zip(tasks.items(), sorted(by_subject)):
        _task(root, name, rows, subject.replace("_", " "))
    harness = lm_eval_mcq(model, tok, list(tasks), include_path=root / "tasks", batch_size=16)
    predictions = set()
    for (name, rows), subject in zip(tasks.items(), sorted(by_subject)):
        ours = score_mcq(model, tok, rows, "letter", add_bos=False, batch_size=16, subject=subject, progress=False)
        theirs = harness[name]
        assert len(theirs["preds"]) == len(ours) == len(rows)
        for i, (o, t_lp) in enumerate(zip(ours, theirs["logprobs"])):
            assert o["logprobs"] == pytest.approx(t_lp, abs=1e-4), (name, i)
        assert [o["pred"] for o in ours] == theirs["preds"], name
        assert theirs["acc"] == pytest.approx(sum(o["pred"] == o["gold"] for o in ours) / len(ours))
        predictions |= set(theirs["preds"])
    assert len(predictions) > 1, "degenerate model: every item gets the same answer"


def test_the_mcq_lm_eval_metric_runs_a_task_through_evaluate(world):
    """`evaluation.metrics: [mcq_lm_eval]` + `lm_eval_tasks` (what a WMDP / MMLU preset sets) gives the letter
    accuracy lm-eval computes, through the same evaluation entry point as every other metric."""
    from robust_unlearning.metrics.evaluate import EvalConfig, evaluate_model

    root, bench, tok, model = world
    rows = [r for r in bench.mcq("forget") if (r.get("subject") or "biology") == "biology"]
    _task(root, "ru_eval_biology", rows, "biology")
    cfg = EvalConfig.from_dict({"metrics": ["mcq_lm_eval:forget"], "lm_eval_tasks": {"forget": "ru_eval_biology"},
                                "lm_eval_include_path": str(root / "tasks"), "batch_size": 16})
    metrics, items = evaluate_model(model, tok, bench, cfg)
    ours = score_mcq(model, tok, rows, "letter", add_bos=False, batch_size=16, subject="biology", progress=False)
    assert metrics["forget_mcq_acc_letter"] == pytest.approx(sum(o["pred"] == o["gold"] for o in ours) / len(ours))
    assert len(items) == len(rows) and {it["metric"] for it in items} == {"forget_mcq_acc_letter"}
