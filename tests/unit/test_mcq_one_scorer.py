"""One MCQ scorer: every MCQ number, clean or under an attack, comes from ``metrics.mcq`` with the evaluation's
settings, so an attack at zero strength reproduces the clean evaluation's number EXACTLY (==, not approx).

Real parts: the tiny synthetic world (``generate_world``, read through ``data.formats.Benchmark``), the session's BPE
tokenizer and a micro Llama; the clean numbers come from ``evaluate_model``, the attacked ones from each attack's own
``evaluate``.
"""
from __future__ import annotations

import json

import pytest
import torch

from robust_unlearning.attacks.direction import Direction
from robust_unlearning.attacks.gcg import ARTEFACT as GCG_ARTEFACT
from robust_unlearning.attacks.gcg import GCG
from robust_unlearning.data.formats import Benchmark
from robust_unlearning.data.synthetic import generate_world
from robust_unlearning.metrics.evaluate import evaluate_model
from robust_unlearning.metrics.mcq import insert_ids, mcq_under_attack
from robust_unlearning.models.io import save_model

# the evaluation's non-default settings on purpose: a scorer that ignores them (raw sum, other BOS, all rows) differs
EVAL = {"metrics": ["mcq_cloze:forget", "mcq_cloze:retain", "mcq_letter:forget"], "max_items": 12,
        "mcq_norm": "acc_norm", "cloze_bos": True, "mcq_bos": False, "batch_size": 5}
MCQ_KEYS = ("forget_mcq_acc", "forget_mcq_acc_cloze_sum", "forget_mcq_acc_cloze_norm", "forget_mcq_acc_letter")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("world") / "data"
    generate_world(root, seed=0, size="tiny")
    return Benchmark(root)


@pytest.fixture()
def setup(micro_model, tiny_tokenizer, bench, tmp_path):
    torch.manual_seed(0)
    clean, items = evaluate_model(micro_model, tiny_tokenizer, bench, EVAL)
    return micro_model, tiny_tokenizer, bench, clean, items, tmp_path


def _logprobs(items, metric):
    return {it["item_id"]: it["meta"]["logprobs"] for it in items if it["metric"] == metric}


def test_empty_insertion_is_the_clean_scorer_item_by_item(setup):
    model, tok, bench, clean, items, _ = setup
    att, att_items = mcq_under_attack(model, tok, bench, EVAL, ("forget", "retain"), insert_ids(tok, []))
    for key in MCQ_KEYS + ("retain_mcq_acc",):
        assert att[key] == clean[key], key
    assert _logprobs(att_items, "forget_mcq_acc") == _logprobs(items, "forget_mcq_acc")
    assert len(_logprobs(items, "forget_mcq_acc")) == 12          # the evaluation's max_items, not every row
    # a non-empty insertion really changes what is scored (the equality above is not vacuous)
    adv = tok("Orlinde heron", add_special_tokens=False)["input_ids"]
    moved, moved_items = mcq_under_attack(model, tok, bench, EVAL, ("forget",), insert_ids(tok, adv))
    assert _logprobs(moved_items, "forget_mcq_acc") != _logprobs(items, "forget_mcq_acc")


@pytest.mark.parametrize("position", ["suffix", "prefix"])
def test_insert_ids_puts_the_ids_at_the_question(tiny_tokenizer, position):
    from robust_unlearning.metrics.generation import encode_pair
    tok = tiny_tokenizer
    row = {"question": "Which animal carries Veltrax?", "choices": ["glass heron", "Orlinde"], "answer": 0}
    ctx = "Question: Which animal carries Veltrax?\nAnswer:"
    ids, _ = encode_pair(tok, ctx, " glass heron", True)
    out = insert_ids(tok, [7, 8, 9], position)(row, "cloze", ctx, ids, True)
    assert len(out) >= len(ids) + 3 and out[0] == tok.bos_token_id
    text = tok.decode([i for i in out if i not in (7, 8, 9)], skip_special_tokens=True).replace(" ", "")
    assert text == ctx.replace(" ", "")
    cut = out.index(7)
    before = tok.decode(out[1:cut]).replace(" ", "")
    assert before == ("Question:WhichanimalcarriesVeltrax?" if position == "suffix" else "Question:")


def test_gcg_with_an_empty_suffix_reproduces_the_clean_numbers(setup):
    model, tok, bench, clean, _, tmp = setup
    src = tmp / "m"
    save_model(model, tok, src)
    GCG.prepare(src, bench, {"n_tokens": 2, "steps": 1, "n_candidates": 4, "n_items": 2, "max_new_tokens": 2,
                             "eval_items": 2}, tmp / "gcg", 0, "cpu")
    art = json.loads((tmp / "gcg" / GCG_ARTEFACT).read_text())
    art["adv_ids"] = []  # zero strength: no adversarial tokens at all
    (tmp / "gcg" / GCG_ARTEFACT).write_text(json.dumps(art))
    m, _ = GCG.evaluate(model, tok, bench, tmp / "gcg", EVAL, seed=0)
    for key in MCQ_KEYS:
        assert m[key] == clean[key], key
    assert m["forget_mcq_acc_clean"] == clean["forget_mcq_acc"] and m["forget_mcq_gain"] == 0.0


def test_direction_at_lambda_zero_reproduces_the_clean_numbers(setup):
    model, tok, bench, clean, _, tmp = setup
    src = tmp / "m"
    save_model(model, tok, src)
    Direction.prepare(src, bench, {"lam": 0.0, "max_new_tokens": 2, "eval_items": 2}, tmp / "dir", 0, "cpu")
    m, _ = Direction.evaluate(model, tok, bench, tmp / "dir", EVAL, seed=0)
    for key in MCQ_KEYS + ("retain_mcq_acc",):
        assert m[key] == clean[key], key
    # the same hooks at λ = 8 move every score: what is scored under the attack is the hooked model
    from safetensors.torch import load_file

    from robust_unlearning.attacks.direction import VECTORS, direction_hooks
    e_a = load_file(str(tmp / "dir" / VECTORS))["e_a"]
    with direction_hooks(model, "steer", e_a, 8.0 * m["direction_norm"], int(m["layer"]), []):
        _, hooked = mcq_under_attack(model, tok, bench, EVAL, ("forget",))
    assert _logprobs(hooked, "forget_mcq_acc") != _logprobs(setup[4], "forget_mcq_acc")
