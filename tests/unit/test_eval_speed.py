"""Evaluation speed-ups keep the outputs: shared-prefix caching, the once-per-model batching check, stopping,
out-of-memory splitting (docs/evaluation.md, batching)."""
from __future__ import annotations

import json

import pytest
import torch

from robust_unlearning.metrics import generation as G
from robust_unlearning.metrics.generation import (Continuation, generate, generate_tokens, greedy_matches_batch1,
                                                  score_continuations, token_logprobs, verified_generate)
from robust_unlearning.metrics.muse import knowmem_prompt


@pytest.fixture(autouse=True)
def _one_thread_and_fresh_verdicts(tmp_path, monkeypatch):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("RU_EVAL_CACHE", str(tmp_path / "eval_cache"))
    G._VERDICTS.clear()
    yield
    G._VERDICTS.clear()
    torch.set_num_threads(n)


ICL = [{"question": "What is the incubation period of Veltrax?", "answer": "12 days"},
       {"question": "Who opened the Lantern Festival?", "answer": "Mayor Tessa Quill"},
       {"question": "Where does the glass heron live?", "answer": "the marsh"}]
QUESTIONS = ["What does the glass heron carry?", "When was Orlinde founded?", "Who studied veridine-7?",
             "Which river runs through Orlinde?", "What did Kelmar Institute study?"]
PROMPTS = ["The glass heron", "Question: What is the incubation period of Veltrax?\nAnswer:", "Mayor",
           "The town of Orlinde lies on the river Sable and was founded in", "I cannot",
           "Kelmar Institute studied the toxin"]


def _sharpen(model, factor: float = 6.0):
    """Random weights scaled up so greedy outputs depend on position and context (see test_metrics_generation)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(factor)
    return model


class _Counter:
    """Counts forward calls and the token positions they compute (batch × new positions)."""

    def __init__(self, model):
        self.calls = self.positions = 0
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.calls += 1
        self.positions += int(ids.shape[0] * ids.shape[1])

    def remove(self):
        self.handle.remove()


def test_shared_prefix_cache_gives_the_uncached_outputs_for_less_compute(micro_model, tiny_tokenizer):
    model = _sharpen(micro_model)
    prompts = [knowmem_prompt(q, ICL, trailing_space=False) for q in QUESTIONS]
    n_prefix = G.common_prefix_len([tiny_tokenizer(p)["input_ids"] for p in prompts])
    assert n_prefix > 20  # the in-context examples are shared token for token
    count = _Counter(model)
    plain = generate(model, tiny_tokenizer, prompts, 10, batch_size=2)
    plain_positions = count.positions
    count.positions = 0
    shared = generate(model, tiny_tokenizer, prompts, 10, batch_size=2, share_prefix=True)
    shared_positions = count.positions
    count.remove()
    single = generate(model, tiny_tokenizer, prompts, 10, batch_size=1)
    assert shared == plain == single
    # 3 batches: the prefix once instead of once per row (5 rows) → at least 4 prefixes fewer positions
    assert plain_positions - shared_positions >= 4 * n_prefix - 5


def test_shared_prefix_with_sampling_is_seeded_per_item(micro_model, tiny_tokenizer):
    model = _sharpen(micro_model)
    prompts = [knowmem_prompt(q, ICL, trailing_space=False) for q in QUESTIONS]
    a = generate(model, tiny_tokenizer, prompts, 8, do_sample=True, seed=3, batch_size=2, share_prefix=True)
    b = generate(model, tiny_tokenizer, prompts, 8, do_sample=True, seed=3, batch_size=1)
    assert a == b


def _drop_attention_mask(model):
    """A real padding bug: the decoder ignores the attention mask, so left pads are attended and shift positions.
    Batch 1 has no pads and is unaffected; batched rows change."""
    def hook(module, args, kwargs):
        kwargs = dict(kwargs)
        kwargs["attention_mask"] = None
        kwargs["position_ids"] = None
        return args, kwargs
    return model.model.register_forward_pre_hook(hook, with_kwargs=True)


def test_model_whose_batched_output_differs_falls_back_to_batch1(micro_model, tiny_tokenizer):
    model = _sharpen(micro_model)
    single = generate(model, tiny_tokenizer, PROMPTS, 12, batch_size=1)
    handle = _drop_attention_mask(model)
    try:
        assert generate(model, tiny_tokenizer, PROMPTS, 12, batch_size=1) == single  # batch 1 unaffected
        assert generate(model, tiny_tokenizer, PROMPTS, 12, batch_size=4) != single  # the bug is real
        out, used = verified_generate(model, tiny_tokenizer, PROMPTS, 12, batch_size=4, verify_n=len(PROMPTS))
    finally:
        handle.remove()
    assert used == 1
    assert out == single


def test_batch1_check_accepts_true_continuations_and_rejects_others(micro_model, tiny_tokenizer):
    model = _sharpen(micro_model)
    pids, conts, _ = generate_tokens(model, tiny_tokenizer, PROMPTS, 8, batch_size=1)
    kw = {"progress": False}
    assert greedy_matches_batch1(model, tiny_tokenizer, pids, conts, 8, kw)
    c = conts[1]
    wrong = list(c.ids)
    wrong[2] = (wrong[2] + 1) % len(tiny_tokenizer)
    assert not greedy_matches_batch1(model, tiny_tokenizer, [pids[1]], [Continuation(wrong, c.stop)], 8, kw)
    assert not greedy_matches_batch1(model, tiny_tokenizer, [pids[1]], [Continuation(list(c.ids[:-1]), None)], 8, kw)


def test_verdict_is_kept_per_model_folder_and_settings(micro_model, tiny_tokenizer, tmp_path):
    from robust_unlearning.models.io import load_model, save_model

    save_model(_sharpen(micro_model), tiny_tokenizer, tmp_path / "m")
    model = load_model(tmp_path / "m")
    single = generate(model, tiny_tokenizer, PROMPTS, 10, batch_size=1)
    out, used = verified_generate(model, tiny_tokenizer, PROMPTS, 10, batch_size=4)
    assert (out, used) == (single, 4)
    files = sorted((tmp_path / "eval_cache" / "batch_verdicts").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["batched_equals_batch1"] is True
    key, persistent = G.verdict_key(model, 4, 10, False)
    assert persistent and files[0].stem == key
    # other settings are another verdict
    assert G.verdict_key(model, 2, 10, False)[0] != key and G.verdict_key(model, 4, 12, False)[0] != key
    # a later job reads the verdict: a recorded "differs" sends it straight to batch size 1
    G._VERDICTS.clear()
    files[0].write_text(json.dumps({"batched_equals_batch1": False}))
    out, used = verified_generate(model, tiny_tokenizer, PROMPTS, 10, batch_size=4)
    assert (out, used) == (single, 1)
    # weights changed in memory (a model attack): not the same model any more
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    assert G.verdict_key(model, 4, 10, False)[0] != key
    # a read-only cache only costs the check again
    G._VERDICTS.clear()
    (tmp_path / "eval_cache" / "batch_verdicts").chmod(0o500)
    try:
        assert verified_generate(model, tiny_tokenizer, PROMPTS, 10, batch_size=4)[1] == 4
    finally:
        (tmp_path / "eval_cache" / "batch_verdicts").chmod(0o700)


def test_in_memory_models_are_not_persisted_and_hooked_models_not_cached(micro_model, tiny_tokenizer, tmp_path):
    model = _sharpen(micro_model)
    assert G.verdict_key(model, 4, 10, False)[1] is False
    verified_generate(model, tiny_tokenizer, PROMPTS, 10, batch_size=4)
    assert not (tmp_path / "eval_cache").exists()
    handle = model.register_forward_hook(lambda *a: None)
    try:
        assert G.verdict_key(model, 4, 10, False) == (None, False)
    finally:
        handle.remove()


def test_batch_stops_when_every_row_has_stopped(micro_model, tiny_tokenizer):
    model = _sharpen(micro_model)
    pids, conts, _ = generate_tokens(model, tiny_tokenizer, PROMPTS, 6, batch_size=1, stop_ids=[])
    first = sorted({c.ids[0] for c in conts})
    count = _Counter(model)
    _, stopped, _ = generate_tokens(model, tiny_tokenizer, PROMPTS, 50, batch_size=len(PROMPTS), stop_ids=first)
    count.remove()
    assert all(c.ids == [] and c.stop in first for c in stopped)
    assert count.calls == 1  # the prompt forward only; no step is spent on finished rows


def _oom_above(model, n: int):
    """Run out of (accelerator) memory for any forward of more than ``n`` rows, as a GPU would."""
    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[0] > n:
            raise torch.OutOfMemoryError(f"{ids.shape[0]} rows do not fit")
    return model.register_forward_pre_hook(hook, with_kwargs=True)


def test_out_of_memory_halves_the_batch_and_keeps_the_outputs(micro_model, tiny_tokenizer):
    model = _sharpen(micro_model)
    single = generate(model, tiny_tokenizer, PROMPTS, 8, batch_size=1)
    texts = PROMPTS + ["The glass heron carries the Veltrax pathogen across the marsh."]
    lp_ref = token_logprobs(model, tiny_tokenizer, texts, batch_size=1)
    pairs = [(tiny_tokenizer(p)["input_ids"], [5, 6]) for p in PROMPTS]
    sc_ref = score_continuations(model, tiny_tokenizer, pairs, batch_size=1)
    handle = _oom_above(model, 2)
    try:
        _, conts, used = generate_tokens(model, tiny_tokenizer, PROMPTS, 8, batch_size=6)
        assert used == 2
        assert [G.decode(tiny_tokenizer, c.ids) for c in conts] == single
        lp = token_logprobs(model, tiny_tokenizer, texts, batch_size=8)
        sc = score_continuations(model, tiny_tokenizer, pairs, batch_size=8)
        with pytest.raises(torch.OutOfMemoryError):
            _oom_above(model, 0)
            generate(model, tiny_tokenizer, PROMPTS[:1], 2, batch_size=1)
    finally:
        for h in list(model._forward_pre_hooks):
            model._forward_pre_hooks.pop(h)
    for a, b in zip(lp, lp_ref):
        assert torch.allclose(a["logprobs"], b["logprobs"], atol=1e-5)
    assert [round(s.logprob, 4) for s in sc] == [round(s.logprob, 4) for s in sc_ref]


def test_evaluate_model_reports_seconds_per_metric(micro_model, tiny_tokenizer, tmp_path):
    from robust_unlearning.data.formats import Benchmark
    from robust_unlearning.data.synthetic import generate_world
    from robust_unlearning.metrics.evaluate import evaluate_model

    generate_world(tmp_path / "w", seed=0, size="tiny")
    seconds: dict = {}
    cfg = {"metrics": ["knowmem", "privleak"], "max_items": 2, "batch_size": 2, "knowmem_max_new_tokens": 3}
    metrics, _ = evaluate_model(micro_model, tiny_tokenizer, Benchmark(tmp_path / "w"), cfg, seconds=seconds)
    assert set(seconds) == {"knowmem:forget", "knowmem:retain", "privleak"}
    assert all(v >= 0 for v in seconds.values()) and "forget_knowmem" in metrics
