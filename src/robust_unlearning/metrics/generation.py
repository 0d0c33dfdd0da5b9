"""Batched generation and batched log-likelihood scoring (evaluation.md §1, §2, general rules).

Why batched and how it stays faithful to the one-item-at-a-time references:
- Generation uses LEFT padding built here (the tokenizer's ``padding_side`` is never touched, so nothing needs
  restoring); ``transformers.generate`` derives ``position_ids`` from the attention mask
  (``attention_mask.cumsum(-1) - 1``), so a left-padded row sees the same positions as the unpadded prompt.
  The continuation is taken by slicing token ids after the padded input width, never by string length.
- Prompts are sorted by token length (longest first, stable) into batches to cut padding (and to hit an
  out-of-memory error on the first batch, not the last); results come back in the caller's order.
- Sampling is seeded per item (evaluation.md general rules): a logits processor adds Gumbel noise drawn from a
  per-row ``torch.Generator`` to the tempered, top-p-filtered log-probabilities and decoding stays greedy.
  argmax(log p + Gumbel) is an exact draw from p, and each row's draws depend only on its own seed, so a
  sampled output does not depend on which other prompts shared its batch.
- Log-likelihood scoring (MCQ, MIA) uses RIGHT padding (positions start at 0 for every row, pads come after the
  scored tokens, so a causal model never attends to them) and one forward per batch.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from ..models.tokenizer import stop_token_ids
from ..utils.repro import derive_seed

log = logging.getLogger(__name__)

PROGRESS_MIN_ITEMS = 64  # tqdm only for lists at least this long


def _progress(total: int, desc: str, enabled: bool | None):
    from tqdm.auto import tqdm

    disable = (total < PROGRESS_MIN_ITEMS) if enabled is None else not enabled
    return tqdm(total=total, desc=desc, disable=disable, leave=False)


def model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - parameterless test doubles
        return torch.device("cpu")


def _max_positions(model) -> int | None:
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "max_position_embeddings", None)
    return int(n) if n else None


def _pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    return 0


def encode_prompts(tokenizer, prompts: Sequence, add_special_tokens: bool = True,
                   chat: bool = False) -> list[list[int]]:
    """Token ids per prompt. A prompt is a string, a list of chat messages, or already a list of token ids.

    ``chat=True`` applies the tokenizer's chat template with the generation prompt; the templated text already
    holds BOS, so it is tokenised with ``add_special_tokens=False`` (evaluation.md general rules).
    """
    out: list[list[int]] = []
    for p in prompts:
        if isinstance(p, (list, tuple)) and (len(p) == 0 or isinstance(p[0], int)):
            out.append([int(t) for t in p])
            continue
        if chat:
            from ..data.collate import require_chat_template

            require_chat_template(tokenizer, "a chat prompt (dialogue benchmark or prompt attack)")
            messages = [{"role": "user", "content": p}] if isinstance(p, str) else list(p)
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            out.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
        else:
            if not isinstance(p, str):
                raise TypeError(f"prompt must be a string when chat=False, got {type(p).__name__}")
            out.append(list(tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"]))
    return out


def clean_up_tokenization(text: str) -> str:
    """transformers' classic ``clean_up_tokenization`` (what MUSE's ``decode(..., clean_up_tokenization_spaces=True)``
    did under transformers 4.x). transformers 5 skips it for BPE tokenizers, so it is applied here explicitly."""
    return (text.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",").replace(" ' ", "'")
            .replace(" n't", "n't").replace(" 'm", "'m").replace(" 's", "'s").replace(" 've", "'ve")
            .replace(" 're", "'re"))


def decode(tokenizer, ids: Sequence[int], clean_up_tokenization_spaces: bool = False) -> str:
    """decode(ids, skip_special_tokens=True), with the classic clean-up applied by hand when asked."""
    text = tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return clean_up_tokenization(text) if clean_up_tokenization_spaces else text


def _length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep the caller's order
    return [order[i:i + batch_size] for i in range(0, len(order), max(1, batch_size))]


class SeededGumbelSampler(LogitsProcessor):
    """Turns greedy decoding into per-row seeded sampling with temperature and nucleus (top-p) filtering.

    Top-p keeps the smallest set of most likely tokens whose cumulative probability reaches ``top_p`` (the token
    that crosses the threshold is kept, as in transformers' ``TopPLogitsWarper``).
    """

    def __init__(self, seeds: Sequence[int], temperature: float = 1.0, top_p: float = 1.0):
        if temperature <= 0:
            raise ValueError("temperature must be > 0 when sampling")
        if not 0 < top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.temperature = float(temperature)
        self.top_p = float(top_p)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logp = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_lp, idx = torch.sort(logp, dim=-1, descending=True)
            cum = sorted_lp.exp().cumsum(-1)
            remove_sorted = (cum - sorted_lp.exp()) >= self.top_p  # mass strictly before this token already ≥ p
            remove = torch.zeros_like(remove_sorted).scatter(-1, idx, remove_sorted)
            logp = logp.masked_fill(remove, float("-inf"))
        vocab = logp.shape[-1]
        u = torch.stack([torch.rand(vocab, generator=g) for g in self.generators]).to(logp.device)
        gumbel = -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))
        return logp + gumbel


@torch.inference_mode()
def generate(model, tokenizer, prompts: Sequence, max_new_tokens: int, do_sample: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 32, seed: int = 0,
             add_special_tokens: bool = True, stop_ids: Sequence[int] | None = None, chat: bool = False,
             seeds: Sequence[int] | None = None, clean_up_tokenization_spaces: bool = False,
             progress: bool | None = None) -> list[str]:
    """Generate a continuation for every prompt, batched with left padding; outputs in the prompts' order.

    - stops on ``stop_ids`` (default: EOS and ``<|end|>`` via ``models.tokenizer.stop_token_ids``);
    - decodes the new token ids only, with ``skip_special_tokens=True``;
    - ``do_sample``: per-item seeds ``seeds[i]`` or ``derive_seed(seed, i)`` (i = index in ``prompts``);
    - prompts longer than the model context minus ``max_new_tokens`` are left-truncated (multi-turn rule,
      evaluation.md §7.4) with a warning.
    """
    prompts = list(prompts)
    if not prompts:
        return []
    if seeds is not None and len(seeds) != len(prompts):
        raise ValueError("seeds must have one entry per prompt")
    ids = encode_prompts(tokenizer, prompts, add_special_tokens=add_special_tokens, chat=chat)
    max_pos = _max_positions(model)
    if max_pos is not None:
        keep = max(1, max_pos - int(max_new_tokens))
        n_cut = sum(len(x) > keep for x in ids)
        if n_cut:
            log.warning("generate: %d prompt(s) left-truncated to %d tokens (context %d)", n_cut, keep, max_pos)
            ids = [x[-keep:] for x in ids]
    stops = [int(t) for t in (stop_ids if stop_ids is not None else stop_token_ids(tokenizer)) if t is not None]
    pad = _pad_id(tokenizer)
    device = model_device(model)
    gen_cfg = GenerationConfig(max_new_tokens=int(max_new_tokens), do_sample=False, num_beams=1,
                               eos_token_id=stops or None, pad_token_id=pad,
                               bos_token_id=getattr(tokenizer, "bos_token_id", None))
    was_training = model.training
    model.eval()
    results: list[str | None] = [None] * len(prompts)
    bar = _progress(len(prompts), "generate", progress)
    try:
        for batch in _length_sorted_batches([len(x) for x in ids], batch_size):
            width = max(len(ids[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attn = torch.zeros((len(batch), width), dtype=torch.long)
            for r, i in enumerate(batch):
                n = len(ids[i])
                input_ids[r, width - n:] = torch.tensor(ids[i], dtype=torch.long)
                attn[r, width - n:] = 1
            processors = LogitsProcessorList()
            if do_sample:
                row_seeds = [seeds[i] if seeds is not None else derive_seed(seed, i) for i in batch]
                processors.append(SeededGumbelSampler(row_seeds, temperature, top_p))
            out = model.generate(input_ids=input_ids.to(device), attention_mask=attn.to(device),
                                 generation_config=gen_cfg, logits_processor=processors)
            new = out[:, width:].tolist()
            for r, i in enumerate(batch):
                toks = new[r]
                for j, t in enumerate(toks):
                    if t in stops:
                        toks = toks[:j]
                        break
                results[i] = decode(tokenizer, toks, clean_up_tokenization_spaces)
            bar.update(len(batch))
    finally:
        bar.close()
        if was_training:
            model.train()
    return [r if r is not None else "" for r in results]


# ---------------------------------------------------------------------------------------------------------------
# log-likelihood scoring
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class ContinuationScore:
    logprob: float      # Σ log p(continuation tokens | context)
    n_tokens: int       # continuation length in tokens
    is_greedy: bool     # every continuation token is the argmax (lm-eval's "is_greedy")


def encode_pair(tokenizer, context: str, continuation: str, add_bos: bool) -> tuple[list[int], list[int]]:
    """lm-eval's ``_encode_pair``: trailing context spaces move to the continuation; the continuation ids are the
    tail of the jointly encoded string (so the split follows the tokenizer's merges); BOS only if ``add_bos``.

    An empty context (without BOS) is conditioned on BOS, or EOS when the tokenizer has no BOS (lm-eval uses the
    end-of-text token there).
    """
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = list(tokenizer(context + continuation, add_special_tokens=False)["input_ids"])
    ctx = list(tokenizer(context, add_special_tokens=False)["input_ids"])
    if whole[:len(ctx)] != ctx:  # merge across the boundary: fall back to separate encodings
        cont = list(tokenizer(continuation, add_special_tokens=False)["input_ids"])
    else:
        cont = whole[len(ctx):]
    if add_bos and tokenizer.bos_token_id is not None:
        ctx = [int(tokenizer.bos_token_id)] + ctx
    if not ctx:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ctx = [int(start)]
    return ctx, cont


def _right_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        attn[i, :len(r)] = 1
    return ids, attn


@torch.inference_mode()
def score_continuations(model, tokenizer, pairs: Sequence[tuple[list[int], list[int]]], batch_size: int = 32,
                        progress: bool | None = None) -> list[ContinuationScore]:
    """Σ log p(cont | ctx) for token-id pairs, batched (right padding, one forward per batch).

    Pairs whose continuation is a single token and that share a context are scored from ONE row (the context
    alone): letter MCQ (" A".." D") then costs one forward per question instead of four, as in lm-eval.
    Over-long rows are left-truncated to the model context, keeping the continuation.
    """
    max_pos = _max_positions(model)
    rows: list[list[int]] = []
    # per row: list of (pair index, first logit position, continuation ids)
    row_reqs: list[list[tuple[int, int, list[int]]]] = []
    single_ctx_row: dict[tuple[int, ...], int] = {}
    for k, (ctx, cont) in enumerate(pairs):
        if not cont:
            raise ValueError(f"pair {k}: empty continuation")
        if len(cont) == 1:
            key = tuple(ctx)
            if key in single_ctx_row:
                r = single_ctx_row[key]
                row_reqs[r].append((k, len(rows[r]) - 1, list(cont)))
                continue
        seq = list(ctx) + list(cont[:-1])
        if max_pos is not None and len(seq) > max_pos:
            seq = seq[-max_pos:]
        start = len(seq) - len(cont)  # logits at positions start..start+m-1 predict the continuation tokens
        if start < 0:
            raise ValueError(f"pair {k}: continuation longer than the model context")
        rows.append(seq)
        row_reqs.append([(k, start, list(cont))])
        if len(cont) == 1:
            single_ctx_row[tuple(ctx)] = len(rows) - 1
    out: list[ContinuationScore | None] = [None] * len(pairs)
    device = model_device(model)
    pad = _pad_id(tokenizer)
    was_training = model.training
    model.eval()
    bar = _progress(len(rows), "loglik", progress)
    try:
        for batch in _length_sorted_batches([len(r) for r in rows], batch_size):
            ids, attn = _right_pad([rows[i] for i in batch], pad)
            logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits
            b_idx, p_idx, tgt, owner = [], [], [], []
            for r, i in enumerate(batch):
                for (k, start, cont) in row_reqs[i]:
                    for j, t in enumerate(cont):
                        b_idx.append(r)
                        p_idx.append(start + j)
                        tgt.append(t)
                        owner.append(k)
            sel = logits[torch.tensor(b_idx, device=logits.device), torch.tensor(p_idx, device=logits.device)]
            lp = torch.log_softmax(sel.float(), dim=-1)
            tgt_t = torch.tensor(tgt, device=lp.device)
            tok_lp = lp.gather(-1, tgt_t[:, None])[:, 0].cpu().tolist()
            greedy = (lp.argmax(-1) == tgt_t).cpu().tolist()
            acc: dict[int, list] = {}
            for k, v, g in zip(owner, tok_lp, greedy):
                a = acc.setdefault(k, [0.0, 0, True])
                a[0] += v
                a[1] += 1
                a[2] = a[2] and bool(g)
            for k, (v, n, g) in acc.items():
                out[k] = ContinuationScore(float(v), int(n), bool(g))
            bar.update(len(batch))
    finally:
        bar.close()
        if was_training:
            model.train()
    return out  # type: ignore[return-value]


def sequence_logprobs(model, tokenizer, contexts: Sequence[str], continuations: Sequence[str], batch_size: int = 32,
                      add_bos: bool = False, progress: bool | None = None) -> list[float]:
    """Batched Σ log p(continuation | context) per (context, continuation) string pair (lm-eval encoding)."""
    if len(contexts) != len(continuations):
        raise ValueError("contexts and continuations differ in length")
    pairs = [encode_pair(tokenizer, c, x, add_bos) for c, x in zip(contexts, continuations)]
    return [s.logprob for s in score_continuations(model, tokenizer, pairs, batch_size=batch_size, progress=progress)]


@torch.inference_mode()
def token_logprobs(model, tokenizer, texts: Sequence[str], batch_size: int = 16, add_bos: bool = True,
                   with_stats: bool = False, max_length: int | None = None,
                   progress: bool | None = None) -> list[dict[str, torch.Tensor]]:
    """Per-token log-likelihoods ℓ_t = log p(ids_t | ids_<t), t = 2..n (BOS not scored), per text (§1.3).

    ``with_stats`` adds the next-token distribution moments used by Min-K%++ (§1.4): μ_t = Σ_v p log p and
    σ²_t = Σ_v p (log p)² − μ_t². Texts are truncated at ``max_length`` (default: the model context).
    Returns one dict per text with float64 CPU tensors ``logprobs`` (and ``mu``, ``sigma2``) of length n − 1.
    """
    ids = [list(tokenizer(t, add_special_tokens=add_bos)["input_ids"]) for t in texts]
    limit = max_length or _max_positions(model)
    if limit:
        ids = [x[:limit] for x in ids]
    out: list[dict | None] = [None] * len(ids)
    device = model_device(model)
    pad = _pad_id(tokenizer)
    was_training = model.training
    model.eval()
    bar = _progress(len(ids), "token logprobs", progress)
    try:
        for batch in _length_sorted_batches([len(x) for x in ids], batch_size):
            ids_t, attn = _right_pad([ids[i] for i in batch], pad)
            logits = model(input_ids=ids_t.to(device), attention_mask=attn.to(device)).logits
            for r, i in enumerate(batch):
                n = len(ids[i])
                if n < 2:
                    empty = torch.zeros(0, dtype=torch.float64)
                    out[i] = {"logprobs": empty, **({"mu": empty, "sigma2": empty} if with_stats else {})}
                    continue
                lp = torch.log_softmax(logits[r, : n - 1].float(), dim=-1)
                tgt = ids_t[r, 1:n].to(lp.device)
                rec = {"logprobs": lp.gather(-1, tgt[:, None])[:, 0].double().cpu()}
                if with_stats:
                    p = lp.exp()
                    mu = (p * lp).sum(-1)
                    rec["mu"] = mu.double().cpu()
                    rec["sigma2"] = ((p * lp * lp).sum(-1) - mu * mu).double().cpu()
                out[i] = rec
            bar.update(len(batch))
    finally:
        bar.close()
        if was_training:
            model.train()
    return out  # type: ignore[return-value]


__all__ = ["generate", "decode", "clean_up_tokenization", "sequence_logprobs", "token_logprobs",
           "score_continuations", "encode_pair", "encode_prompts", "ContinuationScore", "SeededGumbelSampler",
           "model_device"]

