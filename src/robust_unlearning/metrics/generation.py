"""Batched generation and batched log-likelihood scoring (docs/evaluation.md, "MUSE metrics", "Multiple-choice accuracy", general rules).

Why batched and how it stays faithful to the one-item-at-a-time references:
- Generation uses LEFT padding built here (the tokenizer's ``padding_side`` is never touched, so nothing needs
  restoring); ``transformers.generate`` derives ``position_ids`` from the attention mask
  (``attention_mask.cumsum(-1) - 1``), so a left-padded row sees the same positions as the unpadded prompt.
  The continuation is taken by slicing token ids after the padded input width, never by string length.
- Prompts are sorted by token length (longest first, stable) into batches to cut padding (and to hit an
  out-of-memory error on the first batch, not the last); results come back in the caller's order.
- Sampling is seeded per item (docs/evaluation.md general rules): a logits processor adds Gumbel noise drawn from a
  per-row ``torch.Generator`` to the tempered, top-p-filtered log-probabilities and decoding stays greedy.
  argmax(log p + Gumbel) is an exact draw from p, and each row's draws depend only on its own seed, so a
  sampled output does not depend on which other prompts shared its batch.
- Log-likelihood scoring (MCQ, MIA) uses RIGHT padding (positions start at 0 for every row, pads come after the
  scored tokens, so a causal model never attends to them) and one forward per batch.

Speed (docs/evaluation.md, batching):
- ``share_prefix=True`` (KnowMem's in-context examples): the longest token prefix common to every prompt is
  encoded ONCE and its key/value cache copied into each batch; a row is then [prefix][pads][own suffix], and
  positions come from the attention mask as above, so each row still sees the positions of its unpadded prompt.
- A batch stops when every row has met a stop token (transformers' ``generate``), and rows of similar length share
  a batch (length-sorted), so finished or short rows cost little.
- On an accelerator a batch that runs out of memory is split in halves and the smaller size kept for the rest.
- ``verified_generate`` keeps the guarantee "batched greedy output = batch-size-1 output" but checks it cheaply
  (one batch-1 forward per checked item, not one per generated token) and once per model and settings.
"""
from __future__ import annotations

import copy
import hashlib
import inspect
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from transformers import (GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria,
                          StoppingCriteriaList)

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
    holds BOS, so it is tokenised with ``add_special_tokens=False`` (docs/evaluation.md general rules).
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


def _free_accelerator_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_batches(batches: list[list[int]], run: Callable[[list[int]], None], what: str) -> int:
    """``run(batch)`` for every batch; a batch that runs out of accelerator memory is split in halves and retried,
    and later batches are cut to the size that fitted. Returns the largest batch size that ran."""
    cap = max((len(b) for b in batches), default=1)
    queue = [list(b) for b in batches]
    used = 0
    while queue:
        batch = queue.pop(0)
        if len(batch) > cap:
            queue[:0] = [batch[i:i + cap] for i in range(0, len(batch), cap)]
            continue
        try:
            run(batch)
            used = max(used, len(batch))
        except torch.OutOfMemoryError:
            if len(batch) == 1:
                raise
            _free_accelerator_memory()
            cap = max(1, (len(batch) + 1) // 2)
            log.warning("%s: out of memory at batch size %d; continuing at %d", what, len(batch), cap)
            queue.insert(0, batch)
    return used or cap


def common_prefix_len(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by every row."""
    if not rows:
        return 0
    first = rows[0]
    n = min(len(r) for r in rows)
    for r in rows[1:]:
        k = 0
        while k < n and r[k] == first[k]:
            k += 1
        n = k
    return n


def _cache_kwarg(model) -> str:
    """transformers renamed ``generate(past_key_values=...)`` to ``cache=`` within 5.x; use the name it knows."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        params = {}
    return "cache" if "cache" in params else "past_key_values"


def _prefix_cache(model, prefix: list[int], device):
    """Key/value cache of ``prefix`` (batch 1), computed once."""
    out = model(input_ids=torch.tensor([prefix], dtype=torch.long, device=device), use_cache=True)
    cache = getattr(out, "cache", None)  # transformers ≥ 5.25 name; reading the old one there only warns
    return cache if cache is not None else getattr(out, "past_key_values", None)


@dataclass
class Continuation:
    ids: list[int]          # generated token ids, the stop token excluded
    stop: int | None        # the stop token that ended the row (None: a stop string or max_new_tokens ended it)
    by_string: bool = False  # a stop string ended the row: ``ids`` ends with the token that completed it


class StopOnStrings(StoppingCriteria):
    """A row is finished once its decoded new tokens contain one of ``strings``.

    For a caller that keeps only the text before the first such string (KnowMem's cut), the tokens after it
    cannot change the result, so generating them is wasted; rows that stop early also let the batch end early.
    """

    def __init__(self, tokenizer, strings: Sequence[str], start: int):
        self.tokenizer, self.strings, self.start = tokenizer, tuple(strings), int(start)

    def __call__(self, input_ids, scores, **kwargs):
        texts = self.tokenizer.batch_decode(input_ids[:, self.start:].tolist(), skip_special_tokens=True,
                                            clean_up_tokenization_spaces=False)
        return torch.tensor([any(s in t for s in self.strings) for t in texts], dtype=torch.bool,
                            device=input_ids.device)


def _cut_row(tokenizer, toks: list[int], stop_set: set[int], stop_strings: Sequence[str]) -> Continuation:
    """The row as batch 1 would have produced it: up to its first stop token (excluded) or up to the token that
    completes a stop string (included), whichever comes first; the padding generate adds after either is dropped."""
    for j, t in enumerate(toks):
        if t in stop_set:
            return Continuation(toks[:j], t)
        if stop_strings and any(s in decode(tokenizer, toks[:j + 1]) for s in stop_strings):
            return Continuation(toks[:j + 1], None, by_string=True)
    return Continuation(toks, None)


def _prepare_prompt_ids(model, tokenizer, prompts, max_new_tokens, add_special_tokens, chat) -> list[list[int]]:
    ids = encode_prompts(tokenizer, prompts, add_special_tokens=add_special_tokens, chat=chat)
    max_pos = _max_positions(model)
    if max_pos is not None:
        keep = max(1, max_pos - int(max_new_tokens))
        n_cut = sum(len(x) > keep for x in ids)
        if n_cut:
            log.warning("generate: %d prompt(s) left-truncated to %d tokens (context %d)", n_cut, keep, max_pos)
            ids = [x[-keep:] for x in ids]
    return ids


def _stop_list(tokenizer, stop_ids) -> list[int]:
    return [int(t) for t in (stop_ids if stop_ids is not None else stop_token_ids(tokenizer)) if t is not None]


@torch.inference_mode()
def generate_tokens(model, tokenizer, prompts: Sequence, max_new_tokens: int, do_sample: bool = False,
                    temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 32, seed: int = 0,
                    add_special_tokens: bool = True, stop_ids: Sequence[int] | None = None, chat: bool = False,
                    seeds: Sequence[int] | None = None, progress: bool | None = None,
                    share_prefix: bool = False, stop_strings: Sequence[str] | None = None,
                    ) -> tuple[list[list[int]], list[Continuation], int]:
    """(prompt token ids, continuation per prompt, largest batch size that ran); see ``generate``."""
    prompts = list(prompts)
    if not prompts:
        return [], [], int(batch_size)
    if seeds is not None and len(seeds) != len(prompts):
        raise ValueError("seeds must have one entry per prompt")
    ids = _prepare_prompt_ids(model, tokenizer, prompts, max_new_tokens, add_special_tokens, chat)
    stops = _stop_list(tokenizer, stop_ids)
    stop_set = set(stops)
    pad = _pad_id(tokenizer)
    device = model_device(model)
    gen_cfg = GenerationConfig(max_new_tokens=int(max_new_tokens), do_sample=False, num_beams=1,
                               eos_token_id=stops or None, pad_token_id=pad,
                               bos_token_id=getattr(tokenizer, "bos_token_id", None))
    # shared prefix: every row keeps at least one token of its own, so the first step has an input
    n_pre = common_prefix_len(ids) if share_prefix and len(ids) > 1 else 0
    n_pre = min(n_pre, min(len(x) for x in ids) - 1)
    was_training = model.training
    model.eval()
    prefix_cache = _prefix_cache(model, ids[0][:n_pre], device) if n_pre > 0 else None
    cache_kw = _cache_kwarg(model)
    results: list[Continuation | None] = [None] * len(prompts)
    bar = _progress(len(prompts), "generate", progress)

    def run(batch: list[int]) -> None:
        width = max(len(ids[i]) for i in batch)  # prefix + the longest suffix
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        for r, i in enumerate(batch):
            n = len(ids[i])
            input_ids[r, width - n + n_pre:] = torch.tensor(ids[i][n_pre:], dtype=torch.long)
            attn[r, width - n + n_pre:] = 1
            if n_pre:  # [prefix][pads][suffix]: the pads sit between the cached prefix and the row's own tokens
                input_ids[r, :n_pre] = torch.tensor(ids[i][:n_pre], dtype=torch.long)
                attn[r, :n_pre] = 1
        processors = LogitsProcessorList()
        if do_sample:
            row_seeds = [seeds[i] if seeds is not None else derive_seed(seed, i) for i in batch]
            processors.append(SeededGumbelSampler(row_seeds, temperature, top_p))
        extra = {}
        if prefix_cache is not None:  # generate extends the cache in place: each batch gets its own copy
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(batch))
            extra[cache_kw] = cache
        if stop_strings:
            extra["stopping_criteria"] = StoppingCriteriaList([StopOnStrings(tokenizer, stop_strings, width)])
        out = model.generate(input_ids=input_ids.to(device), attention_mask=attn.to(device),
                             generation_config=gen_cfg, logits_processor=processors, **extra)
        new = out[:, width:].tolist()
        for r, i in enumerate(batch):
            results[i] = _cut_row(tokenizer, new[r], stop_set, stop_strings or ())
        bar.update(len(batch))

    try:
        used = run_batches(_length_sorted_batches([len(x) for x in ids], batch_size), run, "generate")
    finally:
        bar.close()
        if was_training:
            model.train()
    return ids, [r if r is not None else Continuation([], None) for r in results], used


def generate(model, tokenizer, prompts: Sequence, max_new_tokens: int, do_sample: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 32, seed: int = 0,
             add_special_tokens: bool = True, stop_ids: Sequence[int] | None = None, chat: bool = False,
             seeds: Sequence[int] | None = None, clean_up_tokenization_spaces: bool = False,
             progress: bool | None = None, share_prefix: bool = False,
             stop_strings: Sequence[str] | None = None) -> list[str]:
    """Generate a continuation for every prompt, batched with left padding; outputs in the prompts' order.

    - stops on ``stop_ids`` (default: EOS and ``<|end|>`` via ``models.tokenizer.stop_token_ids``);
    - decodes the new token ids only, with ``skip_special_tokens=True``;
    - ``do_sample``: per-item seeds ``seeds[i]`` or ``derive_seed(seed, i)`` (i = index in ``prompts``);
    - prompts longer than the model context minus ``max_new_tokens`` are left-truncated (multi-turn rule,
      docs/evaluation.md, "Multi-turn") with a warning;
    - ``share_prefix``: encode the prompts' common token prefix once and reuse its key/value cache;
    - ``stop_strings``: a row also ends with the token that completes one of these strings in its decoded output
      (that token is kept): for callers that cut the output at the first such string, the same result sooner.
    """
    _, conts, _ = generate_tokens(model, tokenizer, prompts, max_new_tokens, do_sample=do_sample,
                                  temperature=temperature, top_p=top_p, batch_size=batch_size, seed=seed,
                                  add_special_tokens=add_special_tokens, stop_ids=stop_ids, chat=chat, seeds=seeds,
                                  progress=progress, share_prefix=share_prefix, stop_strings=stop_strings)
    return [decode(tokenizer, c.ids, clean_up_tokenization_spaces) for c in conts]


# ---------------------------------------------------------------------------------------------------------------
# batched = batch 1, checked once per model and settings
# ---------------------------------------------------------------------------------------------------------------

# A float32 forward of the whole sequence and the step-by-step cached decoding of generate differ by rounding only
# (~1e-5 on logits); a greedy choice whose top-two logit gap exceeds this cannot flip between them. Closer calls
# are settled by a real batch-1 ``generate`` of that item.
NEAR_TIE_GAP = 5e-3
VERDICT_VERSION = 1
_VERDICTS: dict[str, bool] = {}   # this process's verdicts (one job evaluates one model: KnowMem forget = retain)


def _has_hooks(model) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def model_fingerprint(model) -> str | None:
    """What the verdict is about: the weights' folder (its sha256 manifest, when there is one) and the weights in
    memory (a float64 sum per tensor, which any edit after loading changes). None for a model with forward hooks
    (its behaviour is not its weights')."""
    if _has_hooks(model):
        return None
    h = hashlib.sha256()
    path = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    manifest = Path(str(path)) / "weights_manifest.json" if path else None
    if manifest is not None and manifest.is_file():
        h.update(b"folder:" + manifest.read_bytes())
    else:
        h.update(f"memory:{type(model).__name__}".encode())
    with torch.no_grad():
        for name, p in model.named_parameters():
            h.update(f"{name}:{tuple(p.shape)}:{p.dtype}:{float(torch.sum(p, dtype=torch.float64))!r}".encode())
    return h.hexdigest()


def verdict_dir() -> Path:
    """Where verdicts persist between jobs: ``$RU_EVAL_CACHE`` or ``~/.cache/robust_unlearning`` (never the model
    folder: pipeline outputs stay as their job wrote them)."""
    root = os.environ.get("RU_EVAL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "robust_unlearning")
    return Path(root) / "batch_verdicts"


def verdict_key(model, batch_size: int, max_new_tokens: int, share_prefix: bool,
                stop_strings: Sequence[str] | None = None) -> tuple[str | None, bool]:
    """(key, persistent): the key names the model and every setting the verdict depends on; ``persistent`` only
    for a model loaded from a folder with a weights manifest (others are remembered in this process only)."""
    fp = model_fingerprint(model)
    if fp is None:
        return None, False
    import transformers

    dtype = str(next(model.parameters()).dtype) if any(True for _ in model.parameters()) else "none"
    settings = {"model": fp, "dtype": dtype, "device": model_device(model).type, "batch_size": int(batch_size),
                "max_new_tokens": int(max_new_tokens), "padding_side": "left", "share_prefix": bool(share_prefix),
                "torch": torch.__version__, "transformers": transformers.__version__, "version": VERDICT_VERSION}
    if stop_strings:  # only when used, so the verdicts of calls without them keep their keys
        settings["stop_strings"] = list(stop_strings)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]
    path = getattr(model, "name_or_path", None)
    persistent = bool(path) and (Path(str(path)) / "weights_manifest.json").is_file()
    return key, persistent


def _read_verdict(key: str) -> bool | None:
    try:
        doc = json.loads((verdict_dir() / f"{key}.json").read_text())
        return bool(doc["batched_equals_batch1"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_verdict(key: str, ok: bool, info: dict) -> None:
    """Atomic (temp file + rename): concurrent jobs write the same verdict; a read-only cache is only logged."""
    from ..utils.io import atomic_write_json

    try:
        atomic_write_json(verdict_dir() / f"{key}.json", {"batched_equals_batch1": bool(ok), **info})
    except OSError as exc:
        log.info("batch verdict not saved (%s); it will be checked again next time", exc)


@torch.inference_mode()
def greedy_matches_batch1(model, tokenizer, prompt_ids: Sequence[list[int]], conts: Sequence[Continuation],
                          max_new_tokens: int, gen_kw: dict) -> bool:
    """True iff batch-size-1 greedy decoding reproduces every continuation.

    In float32 one batch-1 forward over prompt + continuation checks every step at once: each generated token
    (and the stop token) must be the argmax given the tokens before it, by a margin above rounding. A near tie
    before any clear disagreement, or a model in another dtype, is settled by a real batch-1 ``generate``.
    """
    device = model_device(model)
    fp32 = next(model.parameters()).dtype == torch.float32
    for p, c in zip(prompt_ids, conts):
        full = list(c.ids) + ([c.stop] if c.stop is not None else [])
        # ended by a stop token, a stop string or the length limit; else (padding ended it?) ask generate itself
        complete = c.stop is not None or c.by_string or len(c.ids) == int(max_new_tokens)
        if fp32 and full and complete:
            seq = list(p) + full[:-1]
            logits = model(input_ids=torch.tensor([seq], dtype=torch.long, device=device)).logits[0, len(p) - 1:]
            top = logits.float().topk(2, dim=-1)
            same = (top.indices[:, 0] == torch.tensor(full, device=top.indices.device)).tolist()
            clear = ((top.values[:, 0] - top.values[:, 1]) > NEAR_TIE_GAP).tolist()
            first = next((j for j in range(len(full)) if not (same[j] and clear[j])), None)
            if first is None:
                continue                  # every step is batch 1's clear choice
            if clear[first]:
                return False              # batch 1 clearly picks another token here
        _, ref, _ = generate_tokens(model, tokenizer, [list(p)], max_new_tokens, batch_size=1, **gen_kw)
        if ref[0].ids != list(c.ids) or ref[0].stop != c.stop or ref[0].by_string != c.by_string:
            return False
    return True


def verified_generate(model, tokenizer, prompts: Sequence, max_new_tokens: int, batch_size: int = 32,
                      verify: bool = True, verify_n: int = 8, tag: str = "generate",
                      clean_up_tokenization_spaces: bool = False, share_prefix: bool = False,
                      **kw) -> tuple[list[str], int]:
    """Batched greedy generation, used only where batch size 1 gives the same tokens (docs/evaluation.md, "MUSE metrics",
    [our choice]); otherwise the whole list is generated at batch size 1. Returns (outputs, batch size used).

    The check (``greedy_matches_batch1`` on the first ``verify_n`` items) runs once per model and settings
    (dtype, device, batch size, generation length, padding side, prefix sharing, library versions): its verdict
    is remembered in this process and, for a model loaded from a folder with a weights manifest, in
    ``verdict_dir()``, so later metrics and later jobs on the same model skip it or go straight to batch 1.
    """
    prompts = list(prompts)
    bs = int(batch_size)
    gen_kw = {k: v for k, v in kw.items() if k in ("add_special_tokens", "stop_ids", "chat", "progress",
                                                  "stop_strings")}
    if kw.get("do_sample"):
        return generate(model, tokenizer, prompts, max_new_tokens, batch_size=bs,
                        clean_up_tokenization_spaces=clean_up_tokenization_spaces, share_prefix=share_prefix,
                        **kw), bs
    if bs <= 1 or len(prompts) <= 1 or not verify:
        out = generate(model, tokenizer, prompts, max_new_tokens, batch_size=bs,
                       clean_up_tokenization_spaces=clean_up_tokenization_spaces, share_prefix=share_prefix, **kw)
        return out, bs
    key, persistent = verdict_key(model, bs, max_new_tokens, share_prefix, kw.get("stop_strings"))
    verdict = _VERDICTS.get(key) if key else None
    if verdict is None and key and persistent:
        verdict = _read_verdict(key)
    if verdict is False:
        log.info("%s: batched generation is known to differ from batch size 1 for this model; batch size 1", tag)
    else:
        pids, conts, used = generate_tokens(model, tokenizer, prompts, max_new_tokens, batch_size=bs,
                                            share_prefix=share_prefix, **kw)
        if verdict is None:
            n = min(int(verify_n), len(prompts))
            check_kw = {**gen_kw, "progress": False}
            verdict = greedy_matches_batch1(model, tokenizer, pids[:n], conts[:n], max_new_tokens, check_kw)
            if key:
                _VERDICTS[key] = verdict
                if persistent:
                    _write_verdict(key, verdict, {"tag": tag, "verify_n": n, "batch_size": bs,
                                                  "max_new_tokens": int(max_new_tokens)})
        if verdict:
            return [decode(tokenizer, c.ids, clean_up_tokenization_spaces) for c in conts], used
        log.warning("%s: batched generation differs from batch size 1 on the first %d items; "
                    "regenerating at batch size 1", tag, min(int(verify_n), len(prompts)))
    out = generate(model, tokenizer, prompts, max_new_tokens, batch_size=1,
                   clean_up_tokenization_spaces=clean_up_tokenization_spaces, **kw)
    return out, 1


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
    return encode_pairs(tokenizer, [(context, continuation)], add_bos)[0]


def encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]], add_bos: bool) -> list[tuple[list[int], list[int]]]:
    """:func:`encode_pair` for many pairs, each distinct string tokenised once in one batched call (an MCQ's four
    options share one context; one tokenizer call per string costs more than the model on a tiny model)."""
    moved = []
    for context, continuation in pairs:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        moved.append((context, continuation))
    texts = sorted({t for c, x in moved for t in (c, c + x, x)})
    encoded = dict(zip(texts, tokenizer(texts, add_special_tokens=False)["input_ids"])) if texts else {}
    bos = tokenizer.bos_token_id
    out = []
    for context, continuation in moved:
        whole, ctx = list(encoded[context + continuation]), list(encoded[context])
        if whole[:len(ctx)] != ctx:  # merge across the boundary: fall back to separate encodings
            cont = list(encoded[continuation])
        else:
            cont = whole[len(ctx):]
        if add_bos and bos is not None:
            ctx = [int(bos)] + ctx
        if not ctx:
            start = bos if bos is not None else tokenizer.eos_token_id
            ctx = [int(start)]
        out.append((ctx, cont))
    return out


def _right_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        attn[i, :len(r)] = 1
    return ids, attn


def accepts_logits_to_keep(model) -> bool:
    """Whether ``model.forward`` takes ``logits_to_keep`` (transformers' causal LMs do): the output layer, a vocabulary
    wide matrix product that is half the compute of a tiny model, then runs only at the positions asked for."""
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@torch.inference_mode()
def score_continuations(model, tokenizer, pairs: Sequence[tuple[list[int], list[int]]], batch_size: int = 32,
                        progress: bool | None = None) -> list[ContinuationScore]:
    """Σ log p(cont | ctx) for token-id pairs, batched (right padding, one forward per batch).

    Pairs whose continuation is a single token and that share a context are scored from ONE row (the context
    alone): letter MCQ (" A".." D") then costs one forward per question instead of four, as in lm-eval.
    Over-long rows are left-truncated to the model context, keeping the continuation. The output layer runs only at
    the positions that predict a continuation token (``logits_to_keep``), with the same values to float rounding.
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
    keep_positions = accepts_logits_to_keep(model)
    was_training = model.training
    model.eval()
    bar = _progress(len(rows), "loglik", progress)

    def run(batch: list[int]) -> None:
        """One batch (split in halves by ``run_batches`` if it runs out of accelerator memory)."""
        ids, attn = _right_pad([rows[i] for i in batch], pad)
        b_idx, p_idx, tgt, owner = [], [], [], []
        for r, i in enumerate(batch):
            for (k, start, cont) in row_reqs[i]:
                for j, t in enumerate(cont):
                    b_idx.append(r)
                    p_idx.append(start + j)
                    tgt.append(t)
                    owner.append(k)
        if keep_positions:  # the output layer only where a continuation token is predicted (the model's own head)
            positions = sorted(set(p_idx))
            column = {p: c for c, p in enumerate(positions)}
            logits = model(input_ids=ids.to(device), attention_mask=attn.to(device),
                           logits_to_keep=torch.tensor(positions, device=device)).logits
            p_idx = [column[p] for p in p_idx]
        else:
            logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits
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

    try:
        run_batches(_length_sorted_batches([len(r) for r in rows], batch_size), run, "loglik")
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
    pairs = encode_pairs(tokenizer, list(zip(contexts, continuations)), add_bos)
    return [s.logprob for s in score_continuations(model, tokenizer, pairs, batch_size=batch_size, progress=progress)]


@torch.inference_mode()
def token_logprobs(model, tokenizer, texts: Sequence[str], batch_size: int = 16, add_bos: bool = True,
                   with_stats: bool = False, max_length: int | None = None,
                   progress: bool | None = None) -> list[dict[str, torch.Tensor]]:
    """Per-token log-likelihoods ℓ_t = log p(ids_t | ids_<t), t = 2..n (BOS not scored), per text (docs/evaluation.md, "PrivLeak").

    ``with_stats`` adds the next-token distribution moments used by Min-K%++ (docs/evaluation.md, "Min-K%++"): μ_t = Σ_v p log p and
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

    def run(batch: list[int]) -> None:
        """One batch (split in halves by ``run_batches`` if it runs out of accelerator memory)."""
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
                plp = lp.exp() * lp  # p·log p, computed once for both moments (same operations, same bits)
                mu = plp.sum(-1)
                rec["mu"] = mu.double().cpu()
                rec["sigma2"] = ((plp * lp).sum(-1) - mu * mu).double().cpu()
            out[i] = rec
        bar.update(len(batch))

    try:
        run_batches(_length_sorted_batches([len(x) for x in ids], batch_size), run, "token logprobs")
    finally:
        bar.close()
        if was_training:
            model.train()
    return out  # type: ignore[return-value]


__all__ = ["generate", "generate_tokens", "verified_generate", "greedy_matches_batch1", "Continuation",
           "common_prefix_len", "run_batches", "decode", "clean_up_tokenization", "sequence_logprobs", "token_logprobs",
           "score_continuations", "encode_pair", "encode_prompts", "ContinuationScore", "SeededGumbelSampler",
           "model_device"]

