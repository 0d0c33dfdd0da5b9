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
                                "lm_eval_include_path": str(root / "tasks"), "lm_eval_data": "hub",
                                "batch_size": 16})
    metrics, items = evaluate_model(model, tok, bench, cfg)
    ours = score_mcq(model, tok, rows, "letter", add_bos=False, batch_size=16, subject="biology", progress=False)
    assert metrics["forget_mcq_acc_letter"] == pytest.approx(sum(o["pred"] == o["gold"] for o in ours) / len(ours))
    assert len(items) == len(rows) and {it["metric"] for it in items} == {"forget_mcq_acc_letter"}

    # lm_eval_data: split (the default) runs the same task definition over the split's own prepared rows, cut by
    # max_items like every other metric
    cfg = EvalConfig.from_dict({"metrics": ["mcq_lm_eval:forget"], "lm_eval_tasks": {"forget": "ru_eval_biology"},
                                "lm_eval_include_path": str(root / "tasks"), "batch_size": 16,
                                "max_items": {"mcq_lm_eval": 20}})
    metrics, items = evaluate_model(model, tok, bench, cfg)
    split_rows = [{k: v for k, v in r.items() if k != "subject"} for r in bench.mcq("forget")][:20]
    ours = score_mcq(model, tok, split_rows, "letter", add_bos=False, batch_size=16, subject="biology", progress=False)
    assert len(items) == len(split_rows) == 20
    assert metrics["forget_mcq_acc_letter"] == pytest.approx(sum(o["pred"] == o["gold"] for o in ours) / len(ours))


def test_mcq_lm_eval_under_a_zero_strength_attack_is_the_clean_number(world):
    """Under an attack lm-eval cannot see the edited contexts, so `mcq_lm_eval` units are scored by our letter
    scorer with lm-eval's prompt on the same rows: with an empty insertion (zero strength) the number equals the
    clean lm-eval number exactly, item by item; a real insertion moves it."""
    from robust_unlearning.metrics.evaluate import EvalConfig, evaluate_model
    from robust_unlearning.metrics.mcq import insert_ids, mcq_under_attack

    root, bench, tok, model = world
    rows = [r for r in bench.mcq("forget") if (r.get("subject") or "biology") == "biology"]
    _task(root, "ru_zero_biology", rows, "biology")
    cfg = EvalConfig.from_dict({"metrics": ["mcq_lm_eval:forget"], "lm_eval_tasks": {"forget": "ru_zero_biology"},
                                "lm_eval_include_path": str(root / "tasks"), "batch_size": 16,
                                "max_items": {"mcq_lm_eval": 24, "mcq_letter": 5}})
    clean, clean_items = evaluate_model(model, tok, bench, cfg)
    att, att_items = mcq_under_attack(model, tok, bench, cfg, ("forget",), insert_ids(tok, []))
    assert att["forget_mcq_acc_letter"] == clean["forget_mcq_acc_letter"]
    assert len(att_items) == len(clean_items) == 24          # mcq_lm_eval's max_items, not mcq_letter's
    assert [it["score"] for it in att_items] == [it["score"] for it in clean_items]
    assert [it["output"] for it in att_items] == ["ABCD"[int(it["output"])] for it in clean_items]
    assert att_items[0]["meta"]["scorer"].startswith("letter")
    from robust_unlearning.metrics.lm_eval_backend import task_is_group
    assert not task_is_group("ru_zero_biology", str(root / "tasks"))   # found in the local folder alone
    # a local task is run from an index of its folder alone, never lm-eval's thousands of built-in tasks
    from robust_unlearning.metrics.lm_eval_backend import task_manager_for
    index = task_manager_for(["ru_zero_biology"], root / "tasks").task_index
    assert "ru_zero_biology" in index and "mmlu" not in index and "wmdp_bio" not in index
    assert "mmlu" in task_manager_for(["mmlu"], root / "tasks").task_index        # a built-in one: the built-in index
    adv = tok("Orlinde heron glass", add_special_tokens=False)["input_ids"]
    _, moved = mcq_under_attack(model, tok, bench, cfg, ("forget",), insert_ids(tok, adv))
    assert [it["meta"]["logprobs"] for it in moved] != [it["meta"]["logprobs"] for it in att_items]
    # lm_eval_data: hub scores lm-eval's own documents: nothing under an attack rather than other rows
    hub = EvalConfig.from_dict({"metrics": ["mcq_lm_eval:forget"], "lm_eval_tasks": {"forget": "ru_zero_biology"},
                                "lm_eval_include_path": str(root / "tasks"), "lm_eval_data": "hub"})
    assert mcq_under_attack(model, tok, bench, hub, ("forget",), insert_ids(tok, [])) == ({}, [])


def test_lm_eval_groups_and_tasks_score_the_runs_own_rows(world):
    """`lm_eval_data: split`: lm-eval's OWN definitions of `mmlu` (a group of 57 per-subject tasks, in 4 sub-groups)
    and `wmdp_bio` run over the prepared rows, offline. The group is split by each row's `subject`, its accuracy is
    lm-eval's size-weighted aggregate, and every item equals our letter scorer with that subject's description."""
    from robust_unlearning.metrics.lm_eval_backend import lm_eval_on_rows

    _, bench, tok, model = world
    rows = bench.mcq("forget") + bench.mcq("retain")
    subjects = ["anatomy", "college_physics", "high_school_biology"]   # lm-eval's mmlu_<subject> tasks
    mmlu_rows = [{**r, "subject": subjects[i % 3]} for i, r in enumerate(rows)]
    res = lm_eval_on_rows(model, tok, "mmlu", mmlu_rows, batch_size=16)
    assert res["n_subtasks"] == 3 and sorted(set(res["tasks"])) == subjects
    ours = {s: score_mcq(model, tok, [r for r in mmlu_rows if r["subject"] == s], "letter", add_bos=False,
                         batch_size=16, subject=s, progress=False) for s in subjects}
    flat = [o for s in subjects for o in ours[s]]                     # leaves in lm-eval's order: by subject here
    by_task = {s: [p for t, p in zip(res["tasks"], res["preds"]) if t == s] for s in subjects}
    for s in subjects:
        assert by_task[s] == [o["pred"] for o in ours[s]], s
    assert len(res["preds"]) == len(flat) == len(rows)
    assert res["acc"] == pytest.approx(sum(o["pred"] == o["gold"] for o in flat) / len(flat))

    rows = [{k: v for k, v in r.items() if k != "subject"} for r in rows]   # our scorer prefers a row's subject
    bio = lm_eval_on_rows(model, tok, "wmdp_bio", rows, batch_size=16)
    ours_bio = score_mcq(model, tok, rows, "letter", add_bos=False, batch_size=16, subject="biology", progress=False)
    assert bio["preds"] == [o["pred"] for o in ours_bio] and set(bio["tasks"]) == {"wmdp_bio"}
    assert bio["acc"] == pytest.approx(sum(o["pred"] == o["gold"] for o in ours_bio) / len(ours_bio))
    # what an attack's scoring of mcq_lm_eval units reads: a group takes each row's subject, a task one description
    from robust_unlearning.metrics.lm_eval_backend import task_is_group
    assert task_is_group("mmlu") and not task_is_group("wmdp_bio")


def test_a_group_needs_subjects_naming_its_tasks(world, tmp_path):
    from robust_unlearning.metrics.lm_eval_backend import cached_task_manager, write_local_tasks

    _, bench, _, _ = world
    rows = [{**r, "subject": "not_a_subject"} for r in bench.mcq("forget")[:4]]
    with pytest.raises(ValueError, match="mmlu_<subject>.*not_a_subject"):
        write_local_tasks("mmlu", rows, tmp_path, cached_task_manager())
    with pytest.raises(ValueError, match="unknown lm-eval task 'no_such_task'"):
        write_local_tasks("no_such_task", rows, tmp_path, cached_task_manager())


def test_the_wmdp_preset_scores_wmdp_and_mmlu_with_lm_eval_offline(tmp_path):
    """The wmdp_bio preset's own `evaluation:` section, on the WMDP reconstruction prepared from hub-format fixtures
    (cais/wmdp, cais/mmlu with real MMLU subjects), with the datasets library offline: forget = lm-eval's wmdp_bio
    over the held-out WMDP half, retain = lm-eval's mmlu group over MMLU test. Both equal our letter scorer."""
    import datasets
    import yaml

    from robust_unlearning.data.wmdp import prepare_wmdp_dialogue
    from robust_unlearning.metrics.evaluate import EvalConfig, evaluate_model

    repo = Path(__file__).resolve().parents[2]
    prepare_wmdp_dialogue({"name": "wmdp_dialogue", "source": str(repo / "tests" / "fixtures" / "hub"), "seed": 0,
                           "cache_dir": str(tmp_path / "hf")}, tmp_path / "data")
    bench = Benchmark(tmp_path / "data")
    rows = {s: bench.mcq(s) for s in ("forget", "retain")}
    assert rows["forget"] and {r["subject"] for r in rows["retain"]} == {"high_school_geography", "astronomy"}
    texts = [r["question"] + " " + " ".join(r["choices"]) for s in rows for r in rows[s]] * 4
    tok = train_bpe_tokenizer(texts + ["The following are multiple choice questions (with answers) about"] * 4,
                              vocab_size=400)
    model = build_llama(tok, preset="tiny-llama", seed=5).eval()

    preset = yaml.safe_load((repo / "workflow" / "presets" / "wmdp_bio.yaml").read_text())["evaluation"]
    assert preset["lm_eval_tasks"] == {"forget": "wmdp_bio", "retain": "mmlu"}
    cfg = EvalConfig.from_dict({**preset, "metrics": [m for m in preset["metrics"] if m.startswith("mcq_lm_eval")],
                                "dtype": "float32"})
    offline = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = True
    try:
        metrics, items = evaluate_model(model, tok, bench, cfg)
    finally:
        datasets.config.HF_HUB_OFFLINE = offline
    for split, subject in (("forget", "biology"), ("retain", None)):
        ours = score_mcq(model, tok, rows[split], "letter", add_bos=False, batch_size=8, subject=subject or "x",
                         progress=False)
        theirs = [it for it in items if it["metric"] == f"{split}_mcq_acc_letter"]
        assert len(theirs) == len(ours) == len(rows[split])
        tasks = [r.get("subject") or "wmdp_bio" for r in rows[split]]
        ours_in_lm_eval_order = [o["pred"] for t in sorted(set(tasks)) for o, tt in zip(ours, tasks) if tt == t]
        assert [int(it["output"]) for it in theirs] == ours_in_lm_eval_order   # lm-eval: subject by subject
        assert sorted({it["meta"]["task"] for it in theirs}) == sorted(set(tasks))
        by_row = {int(it["item_id"].rsplit("#", 1)[1]): int(it["output"]) for it in theirs}   # ids = row index
        assert [by_row[i] for i in range(len(ours))] == [o["pred"] for o in ours]
        assert metrics[f"{split}_mcq_acc_letter"] == pytest.approx(sum(o["pred"] == o["gold"] for o in ours)
                                                                   / len(ours))
