"""Batched generation and log-likelihood scoring agree with one-item-at-a-time computation."""
from __future__ import annotations

import pytest
import torch

from robust_unlearning.metrics.generation import (decode, encode_pair, generate, score_continuations,
                                                  sequence_logprobs, token_logprobs)


@pytest.fixture(autouse=True)
def _one_thread():
    """Small models on a shared 2-core machine: intra-op threads only add contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


PROMPTS = [
    "The glass heron",
    "Question: What is the incubation period of Veltrax?\nAnswer:",
    "Mayor",
    "The town of Orlinde lies on the river Sable and was founded in",
    "I cannot",
    "Kelmar Institute studied the toxin",
]


def _sharpen(model, factor: float = 6.0):
    """Scale the random weights so greedy outputs vary with position and context (a near-uniform random model
    repeats one token and would hide position/padding bugs)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(factor)
    return model


@torch.inference_mode()
def _manual_greedy(model, tokenizer, prompt: str, n: int, stops) -> str:
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    new = []
    for _ in range(n):
        logits = model(input_ids=torch.tensor([ids + new])).logits[0, -1]
        t = int(logits.argmax())
        if t in stops:
            break
        new.append(t)
    return decode(tokenizer, new)


def test_batched_greedy_equals_batch1_and_manual(micro_model, tiny_tokenizer):
    model = _sharpen(micro_model)
    side = tiny_tokenizer.padding_side
    batched = generate(model, tiny_tokenizer, PROMPTS, 12, batch_size=4)
    single = generate(model, tiny_tokenizer, PROMPTS, 12, batch_size=1)
    assert batched == single
    assert tiny_tokenizer.padding_side == side  # padding built by hand; tokenizer state untouched
    stops = [tiny_tokenizer.eos_token_id, tiny_tokenizer.convert_tokens_to_ids("<|end|>")]
    for p, out in zip(PROMPTS[:3], batched[:3]):
        assert out == _manual_greedy(model, tiny_tokenizer, p, 12, stops)
    assert len(set(batched)) > 1  # the check is not vacuous


def test_stop_strings_end_rows_early_without_changing_the_cut_output(micro_model, tiny_tokenizer):
    """A row that reaches a stop string ends there (the completing token kept); the text before the first stop
    string is that of the full-length output, batched equals batch 1, and the batch-1 check accepts it."""
    from robust_unlearning.metrics.generation import generate_tokens, verified_generate

    model = _sharpen(micro_model)
    _, long, _ = generate_tokens(model, tiny_tokenizer, PROMPTS, 16, batch_size=4)
    full = [decode(tiny_tokenizer, c.ids) for c in long]
    # stop strings the model does produce: a short piece from the middle of two of the outputs
    stops = [o[len(o) // 2: len(o) // 2 + 2] for o in full if len(o) >= 6][:2]
    assert stops

    def before(text):
        cut = min((text.find(s) for s in stops if s in text), default=len(text))
        return text[:cut]

    _, conts, _ = generate_tokens(model, tiny_tokenizer, PROMPTS, 16, batch_size=4, stop_strings=stops)
    short = [decode(tiny_tokenizer, c.ids) for c in conts]
    assert [before(s) for s in short] == [before(f) for f in full]
    ended = [c for c in conts if c.by_string]
    assert ended and all(any(s in decode(tiny_tokenizer, c.ids) for s in stops) for c in ended)
    assert all(not any(s in decode(tiny_tokenizer, c.ids[:-1]) for s in stops) for c in ended)  # the first one
    assert sum(len(c.ids) for c in conts) < sum(len(c.ids) for c in long)
    assert generate(model, tiny_tokenizer, PROMPTS, 16, batch_size=1, stop_strings=stops) == short
    outs, used = verified_generate(model, tiny_tokenizer, PROMPTS, 16, batch_size=4, verify_n=len(PROMPTS),
                                   stop_strings=stops)
    assert outs == short and used == 4


def test_sampling_is_seeded_per_item(micro_model, tiny_tokenizer):
    model = _sharpen(micro_model, 2.0)
    a = generate(model, tiny_tokenizer, PROMPTS, 8, do_sample=True, temperature=0.7, batch_size=4, seed=3)
    b = generate(model, tiny_tokenizer, PROMPTS, 8, do_sample=True, temperature=0.7, batch_size=1, seed=3)
    c = generate(model, tiny_tokenizer, PROMPTS[::-1], 8, do_sample=True, temperature=0.7, batch_size=3,
                 seeds=[__import__("robust_unlearning.utils.repro", fromlist=["x"]).derive_seed(3, i)
                        for i in range(len(PROMPTS))][::-1])
    assert a == b and c == a[::-1]
    d = generate(model, tiny_tokenizer, PROMPTS, 8, do_sample=True, temperature=0.7, batch_size=4, seed=4)
    assert d != a


def test_chat_prompts_and_stop(micro_model, tiny_tokenizer):
    out = generate(micro_model, tiny_tokenizer, ["hello", [{"role": "user", "content": "hi"}]], 4, chat=True)
    assert len(out) == 2 and all(isinstance(o, str) for o in out)


def test_score_continuations_matches_direct(micro_model, tiny_tokenizer):
    model = _sharpen(micro_model, 3.0)
    ctxs = ["Question: What is the host?\nAnswer:", "The town", "Question: What is the host?\nAnswer:"]
    conts = [" glass heron", " of Orlinde lies", " A"]
    batched = sequence_logprobs(model, tiny_tokenizer, ctxs, conts, batch_size=8, add_bos=True)
    for c, x, got in zip(ctxs, conts, batched):
        ctx_ids, cont_ids = encode_pair(tiny_tokenizer, c, x, add_bos=True)
        with torch.inference_mode():
            lp = torch.log_softmax(model(input_ids=torch.tensor([ctx_ids + cont_ids])).logits[0].float(), -1)
        want = sum(float(lp[len(ctx_ids) - 1 + j, t]) for j, t in enumerate(cont_ids))
        assert abs(got - want) < 1e-4


def test_scores_are_the_same_with_and_without_logits_to_keep(micro_model, tiny_tokenizer):
    """The output layer only at the continuation positions (``logits_to_keep``) or at every position (a model whose
    forward does not take it): the same log-probabilities."""
    from robust_unlearning.metrics.generation import accepts_logits_to_keep

    class FullLogits(torch.nn.Module):  # the same model behind a forward without ``logits_to_keep``
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids, attention_mask=None):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    ctxs = ["Question: What is the host?\nAnswer:", "The town", "Answer:"]
    conts = [" glass heron", " of Orlinde lies", " A"]
    pairs = [encode_pair(tiny_tokenizer, c, x, add_bos=True) for c, x in zip(ctxs, conts)]
    wrapped = FullLogits(micro_model)
    assert accepts_logits_to_keep(micro_model) and not accepts_logits_to_keep(wrapped)
    kept = score_continuations(micro_model, tiny_tokenizer, pairs, batch_size=8)
    full = score_continuations(wrapped, tiny_tokenizer, pairs, batch_size=8)
    assert [(round(a.logprob, 4), a.n_tokens, a.is_greedy) for a in kept] == \
        [(round(b.logprob, 4), b.n_tokens, b.is_greedy) for b in full]


def test_single_token_continuations_share_one_row(micro_model, tiny_tokenizer):
    ctx, _ = encode_pair(tiny_tokenizer, "Answer:", " A", add_bos=False)
    pairs = [(ctx, [t]) for t in (5, 6, 7, 8)]
    scores = score_continuations(micro_model, tiny_tokenizer, pairs, batch_size=2)
    with torch.inference_mode():
        lp = torch.log_softmax(micro_model(input_ids=torch.tensor([ctx])).logits[0, -1], -1)
    assert [round(s.logprob, 4) for s in scores] == [round(float(lp[t]), 4) for t in (5, 6, 7, 8)]


def test_encode_pair_moves_trailing_space(tiny_tokenizer):
    a = encode_pair(tiny_tokenizer, "Answer: ", "12 days", add_bos=False)
    b = encode_pair(tiny_tokenizer, "Answer:", " 12 days", add_bos=False)
    assert a == b
    ctx, _ = encode_pair(tiny_tokenizer, "Answer:", " 12", add_bos=True)
    assert ctx[0] == tiny_tokenizer.bos_token_id


def test_token_logprobs_batched_matches_direct(micro_model, tiny_tokenizer):
    texts = ["The glass heron carries the Veltrax pathogen.", "Mayor Tessa Quill"]
    recs = token_logprobs(micro_model, tiny_tokenizer, texts, batch_size=2, with_stats=True)
    for t, r in zip(texts, recs):
        ids = tiny_tokenizer(t)["input_ids"]
        assert ids[0] == tiny_tokenizer.bos_token_id and len(r["logprobs"]) == len(ids) - 1
        with torch.inference_mode():
            lp = torch.log_softmax(micro_model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
        want = lp.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0].double()
        assert torch.allclose(r["logprobs"], want, atol=1e-5)
        p = lp.exp()
        assert torch.allclose(r["mu"], (p * lp).sum(-1).double(), atol=1e-5)
        assert (r["sigma2"] > -1e-6).all()


def test_bench_eval_reports_speedups_and_equality(micro_model, tiny_tokenizer):
    from robust_unlearning.metrics.bench import bench_eval

    rows = [{"question": f"What is the host of pathogen {i}?", "choices": ["glass heron", "red fox"], "answer": 0}
            for i in range(3)]
    res = bench_eval(micro_model, tiny_tokenizer, {"mcq": rows, "prompts": PROMPTS[:3]}, n_items=3, batch_size=3,
                     max_new_tokens=3)
    assert res["generation_match"] == 1.0 and res["mcq_max_abs_diff"] < 1e-4
    assert {"mcq_speedup", "generation_speedup", "mcq_items_per_s_batched", "generation_items_per_s_single"} <= set(res)


def test_gumbel_sampler_top_p_and_temperature():
    from robust_unlearning.metrics.generation import SeededGumbelSampler

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2]]))
    out = SeededGumbelSampler([1, 2], temperature=1.0, top_p=0.6)(None, logits)
    assert torch.isinf(out[:, 2]).all() and torch.isfinite(out[:, :2]).all()  # 0.5 + 0.3 reaches 0.6
    # exact sampling: argmax(log p + Gumbel) follows p (loose check over many seeded draws)
    draws = [int(SeededGumbelSampler([s])(None, logits[:1]).argmax()) for s in range(600)]
    freq = [draws.count(i) / 600 for i in range(3)]
    assert freq == pytest.approx([0.5, 0.3, 0.2], abs=0.07)
    with pytest.raises(ValueError):
        SeededGumbelSampler([0], temperature=0.0)
