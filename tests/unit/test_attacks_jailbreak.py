"""Multi-turn and jailbreak-template attacks: prompt construction, judging, offline genetic search."""
from __future__ import annotations

import os
import random
import sys

sys.path.insert(0, os.path.dirname(__file__))
import test_attacks_support as S  # noqa: E402
from test_attacks_support import one_thread  # noqa: E402,F401  (autouse fixture)

from robust_unlearning.attacks import common as C  # noqa: E402
from robust_unlearning.attacks import jailbreak_templates as J  # noqa: E402
from robust_unlearning.attacks import multi_turn as M  # noqa: E402
from robust_unlearning.attacks.common import forget_qa_items  # noqa: E402
from robust_unlearning.utils.io import read_json, read_jsonl  # noqa: E402


def test_multi_turn_prompts_and_metrics(micro_model, tiny_tokenizer, tmp_path, monkeypatch):
    S.install_fallbacks(monkeypatch)
    src = S.save_tiny(micro_model, tiny_tokenizer, tmp_path / "m")
    doc = M.MultiTurn.prepare(src, S.FakeBench(), {"max_new_tokens": 5, "max_prompt_tokens": 40}, tmp_path / "a",
                              0, "cpu")
    rows = read_jsonl(tmp_path / "a" / M.MultiTurn.ITEMS_FILE)
    conv = S.FakeBench().multi_turn()[0]["conversation"]
    full = tiny_tokenizer(tiny_tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True),
                          add_special_tokens=False)["input_ids"]
    assert rows[0]["prompt_ids"] == full[-40:] and rows[0]["truncated"] == (len(full) > 40)
    assert [r["ends_on_assistant"] for r in rows] == [False, True] and doc["result"]["n_ends_on_assistant"] == 1
    monkeypatch.setattr(C, "generate_texts", lambda *a, **k: ["It lasts 12 days.", "Sorry, no."])
    m, items = M.MultiTurn.evaluate(micro_model, tiny_tokenizer, S.FakeBench(), tmp_path / "a", {}, seed=0)
    assert m["asr"] == 0.5 and m["refusal_rate"] == 0.5 and m["asr_user_final"] == 1.0 and m["n_judged"] == 2


def test_multi_turn_sampling_is_seeded(micro_model, tiny_tokenizer, tmp_path, monkeypatch):
    S.install_fallbacks(monkeypatch)
    src = S.save_tiny(micro_model, tiny_tokenizer, tmp_path / "m")
    M.MultiTurn.prepare(src, S.FakeBench(), {"max_new_tokens": 6}, tmp_path / "a", 0, "cpu")
    a = M.MultiTurn.evaluate(micro_model, tiny_tokenizer, S.FakeBench(), tmp_path / "a", {}, seed=3)[1]
    b = M.MultiTurn.evaluate(micro_model, tiny_tokenizer, S.FakeBench(), tmp_path / "a", {}, seed=3)[1]
    assert [x["output"] for x in a] == [x["output"] for x in b]


def test_template_operators_keep_one_placeholder():
    rng = random.Random(0)
    pop = list(J.SHIPPED_TEMPLATES)
    for _ in range(200):
        a, b = rng.sample(pop, 2)
        child = J.mutate(J.crossover(a, b, 5, rng), rng)
        assert child.count(J.PLACEHOLDER) == 1
        pop.append(child)
    assert J.normalise_template("no slot here") == "no slot here {q}"
    assert J.normalise_template("{q} and {q}") == "{q} and"
    scores = J.word_momentum(["ignore rules {q}", "ignore orders {q}"], [-1.0, -3.0], {})
    assert scores["ignore"] == -2.0 and scores["rules"] == -1.0


def test_fitness_is_batched_and_matches_single(micro_model, tiny_tokenizer):
    items = forget_qa_items(S.FakeBench(), "mcq")[:3]
    temps = list(J.SHIPPED_TEMPLATES[:4])
    batched = J.template_fitness(micro_model, tiny_tokenizer, temps, items, max_rows=5)
    single = [J.template_fitness(micro_model, tiny_tokenizer, [t], items)[0] for t in temps]
    assert max(abs(x - y) for x, y in zip(batched, single)) < 1e-5


def test_jailbreak_templates_end_to_end(micro_model, tiny_tokenizer, tmp_path, monkeypatch):
    S.install_fallbacks(monkeypatch)
    src = S.save_tiny(micro_model, tiny_tokenizer, tmp_path / "m")
    params = {"population": 6, "steps": 3, "paragraph_every": 2, "n_fit_items": 2, "n_questions": 2, "n_best": 2,
              "max_new_tokens": 4}
    J.JailbreakTemplates.prepare(src, S.FakeBench(), params, tmp_path / "a", 0, "cpu")
    art = read_json(tmp_path / "a" / J.ARTEFACT)
    assert len(art["genetic"]) == 2 and all(t.count("{q}") == 1 for t in art["genetic"])
    assert art["history"][-1] >= art["history"][0]        # elitism: best fitness never drops
    assert art["genetic_fitness"][0] >= art["prototype_fitness"] - 1e-6
    m, items = J.JailbreakTemplates.evaluate(micro_model, tiny_tokenizer, S.FakeBench(), tmp_path / "a", {}, 0)
    assert m["n_autodan"] == 2 and m["n_shipped"] == 6 * 2 and m["n_genetic"] == 2 * 2
    assert m["n_prompts"] == len(items) == 2 + 12 + 4
    assert {"asr", "asr_ci_low", "asr_ci_high", "refusal_rate", "asr_any_template"} <= set(m)
    assert J.autodan_prototypes(S.FakeBench()) == []       # fake meta has no question field
