"""ROUGE, KnowMem prompt/cut rules and VerbMem reference truncation (docs/evaluation.md, "VerbMem", "KnowMem")."""
from __future__ import annotations

import pytest

from robust_unlearning.metrics.generation import clean_up_tokenization
from robust_unlearning.metrics.muse import (cut_knowmem_output, knowmem_prompt, knowmem_scores, rouge, rouge_l_f1,
                                            verbmem_reference)


def test_rouge_l_hand_example():
    # LCS("the cat sat on the mat", "the cat on a mat") = the, cat, on, mat = 4; P = 4/5, R = 4/6
    s = rouge("the cat sat on the mat", "the cat on a mat")
    p, r = 4 / 5, 4 / 6
    assert s["rougeL_f1"] == pytest.approx(2 * p * r / (p + r))
    assert s["rougeL_recall"] == pytest.approx(r)
    assert rouge_l_f1("12 days", "") == 0.0
    assert rouge_l_f1("12 days", "12 days") == 1.0


def test_knowmem_prompt_format():
    icl = [{"question": "Q1?", "answer": "A1"}, {"question": "Q2?", "answer": "A2"}]
    assert knowmem_prompt("Q?", icl) == ("Question: Q1?\nAnswer: A1\n\nQuestion: Q2?\nAnswer: A2\n\n"
                                         "Question: Q?\nAnswer: ")
    assert knowmem_prompt("Q?") == "Question: Q?\nAnswer: "


@pytest.mark.parametrize("raw,cut", [
    ("12 days\n\nQuestion: What?", "12 days"),
    ("12 days\nQuestion: What?", "12 days"),
    ("12 daysQuestion: x", "12 days"),
    ("12 days\nfor sure", "12 days\nfor sure"),
    ("a\n\nb\nQuestion c", "a"),
    ("Question: x", ""),
])
def test_knowmem_cut_rules(raw, cut):
    assert cut_knowmem_output(raw) == cut


def test_knowmem_scores_use_cut_output():
    s = knowmem_scores(["twelve days\n\nQuestion: other words entirely"], ["twelve days"])
    assert s[0]["rougeL_f1"] == 1.0


def test_verbmem_reference_counts_bos(tiny_tokenizer):
    gt = "The glass heron carries the Veltrax pathogen across the marsh."
    body = tiny_tokenizer(gt, add_special_tokens=False)["input_ids"]
    assert len(body) > 5
    ref = verbmem_reference(tiny_tokenizer, gt, 5)  # BOS + 4 gt tokens
    assert ref == clean_up_tokenization(tiny_tokenizer.decode(body[:4]))


def test_clean_up_tokenization():
    assert clean_up_tokenization("Hello , world . I do n't") == "Hello, world. I don't"


def test_rouge_equals_rouge_score_library():
    """Our ROUGE (no nltk import) gives rouge_score's numbers bit for bit, on hand cases and random texts."""
    import random

    from rouge_score import rouge_scorer

    lib = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=False)
    words = ["the", "The", "cat", "sat", "on", "mat", "12", "days", "Veltrax", "heron's", "isn't", "Über", "naïve",
             "—", "...", "a-b", "x_y", "İstanbul", "", " ", "\n\n", "Question:", "Answer:", "1742.", "(ok)"]
    rng = random.Random(0)
    cases = [("", ""), ("a", ""), ("", "a"), ("the cat", "the cat"), ("Über naïve", "uber naive"),
             ("the cat sat on the mat", "the cat on a mat")]
    for _ in range(300):
        cases.append((" ".join(rng.choice(words) for _ in range(rng.randint(0, 40))),
                      " ".join(rng.choice(words) for _ in range(rng.randint(0, 40)))))
    for target, prediction in cases:
        ref = lib.score(target, prediction)
        ours = rouge(target, prediction)
        assert ours == {"rougeL_f1": float(ref["rougeL"].fmeasure), "rougeL_recall": float(ref["rougeL"].recall),
                        "rouge1_f1": float(ref["rouge1"].fmeasure), "rouge2_f1": float(ref["rouge2"].fmeasure)}, \
            (target, prediction)
