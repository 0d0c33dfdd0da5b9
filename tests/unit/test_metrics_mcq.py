"""MCQ scoring: exact lm-eval letter prompt, cloze context, argmax of hand-computable log-likelihoods."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from robust_unlearning.metrics.generation import encode_pair
from robust_unlearning.metrics.mcq import (answer_index, cloze_context, letter_prompt, mcq_accuracy, score_mcq)


@pytest.fixture(autouse=True)
def _one_thread():
    """Small models on a shared 2-core machine: intra-op threads only add contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class BigramLM(torch.nn.Module):
    """logits[b, t] = table[input_ids[b, t]]: log p(next | prefix) = log_softmax(table[last token])[next],
    computable by hand and independent of padding, so the batched scorer can be checked exactly."""

    def __init__(self, vocab: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=g) * 3)
        self.config = SimpleNamespace(max_position_embeddings=512)

    def forward(self, input_ids, attention_mask=None, **_):
        return SimpleNamespace(logits=self.table[input_ids])

    def hand_logprob(self, ctx, cont):
        lp = torch.log_softmax(self.table.detach().double(), -1)
        seq = list(ctx) + list(cont)
        return sum(float(lp[seq[len(ctx) - 1 + j], t]) for j, t in enumerate(cont))


def test_letter_prompt_is_lm_eval_template():
    got = letter_prompt("  What is the host of Veltrax? ", ["glass heron", "red fox", "marsh owl", "grey cat"])
    assert got == ("The following are multiple choice questions (with answers) about biology.\n\n"
                   "What is the host of Veltrax?\nA. glass heron\nB. red fox\nC. marsh owl\nD. grey cat\nAnswer:")
    assert letter_prompt("Q", ["a", "b"], "fictional_towns").startswith(
        "The following are multiple choice questions (with answers) about fictional towns.\n\nQ\nA. a\nB. b")


def test_cloze_context_and_answer_index():
    assert cloze_context("Who?") == "Question: Who?\nAnswer:"
    assert answer_index(2, 4) == 2 and answer_index("C", 4) == 2 and answer_index("3", 4) == 3
    with pytest.raises(ValueError):
        answer_index(4, 4)


ROWS = [
    {"question": "What is the host of Veltrax?", "choices": ["glass heron", "red fox", "owl", "grey marsh cat"],
     "answer": 0},
    {"question": "When was Orlinde founded?", "choices": ["1742", "1801", "1699", "1755"], "answer": 3},
    {"question": "Who is the mayor of Orlinde?", "choices": ["Tessa Quill", "Kelmar", "Sable", "Veltrax"],
     "answer": 1},
]


@pytest.mark.parametrize("mode,bos", [("cloze", True), ("cloze", False), ("letter", False), ("letter", True)])
def test_mcq_argmax_of_hand_loglikelihoods(tiny_tokenizer, mode, bos):
    model = BigramLM(len(tiny_tokenizer))
    scored = score_mcq(model, tiny_tokenizer, ROWS, mode, add_bos=bos, batch_size=3)
    for row, s in zip(ROWS, scored):
        if mode == "cloze":
            ctx, conts = cloze_context(row["question"]), [" " + c for c in row["choices"]]
        else:
            ctx, conts = letter_prompt(row["question"], row["choices"]), [" A", " B", " C", " D"]
        hand = [model.hand_logprob(*encode_pair(tiny_tokenizer, ctx, c, bos)) for c in conts]
        assert s["logprobs"] == pytest.approx(hand, abs=1e-4)
        assert s["pred"] == max(range(4), key=lambda i: hand[i])
        if mode == "cloze":
            norm = [h / len(c) for h, c in zip(hand, row["choices"])]
            assert s["pred_norm"] == max(range(4), key=lambda i: norm[i])
    assert mcq_accuracy(scored) == pytest.approx(sum(s["pred"] == s["gold"] for s in scored) / 3)


def test_letter_bos_switch_changes_context(tiny_tokenizer):
    ctx_nobos, _ = encode_pair(tiny_tokenizer, letter_prompt("Q", list("abcd")), " A", add_bos=False)
    ctx_bos, _ = encode_pair(tiny_tokenizer, letter_prompt("Q", list("abcd")), " A", add_bos=True)
    assert ctx_bos == [tiny_tokenizer.bos_token_id] + ctx_nobos


def test_mcq_batched_equals_direct_micro_model(micro_model, tiny_tokenizer):
    scored = score_mcq(micro_model, tiny_tokenizer, ROWS, "cloze", add_bos=True, batch_size=5)
    for row, s in zip(ROWS, scored):
        for j, c in enumerate(row["choices"]):
            ctx, cont = encode_pair(tiny_tokenizer, cloze_context(row["question"]), " " + c, True)
            with torch.inference_mode():
                lp = torch.log_softmax(micro_model(input_ids=torch.tensor([ctx + cont])).logits[0], -1)
            direct = sum(float(lp[len(ctx) - 1 + k, t]) for k, t in enumerate(cont))
            assert math.isclose(s["logprobs"][j], direct, abs_tol=1e-4)
