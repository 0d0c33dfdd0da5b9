"""Helpers shared by the attacks: prompts, forget items, judging + Wilson ASR, hooks, batched log-likelihoods.

Conventions (docs/evaluation.md, general rules): chat-templated prompts are tokenised with
``add_special_tokens=False``; sampling is seeded per item with ``derive_seed(run_seed, attack, item_id)``;
continuations are sliced by token ids (done inside ``metrics.generation.generate``).
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from ..metrics.asr import wilson_interval  # one Wilson implementation (docs/evaluation.md, "Attack success, refusal and over-refusal")
from ..utils.io import atomic_write_json, read_json
from ..utils.repro import derive_seed, pick_device, provenance

ATTACK_JSON = "attack.json"


# ----------------------------------------------------------------------------------------------- judging
def rate_metrics(flags: Sequence[bool], name: str = "asr") -> dict[str, float]:
    """``{name, name_ci_low, name_ci_high}`` for a list of booleans. An empty list gives NaN for all three: a rate
    over nothing judged is not a measured 0 (and not a perfect defence); the report shows it as ``missing``."""
    n = len(flags)
    if n == 0:
        return {name: math.nan, f"{name}_ci_low": math.nan, f"{name}_ci_high": math.nan}
    k = int(sum(bool(f) for f in flags))
    lo, hi = wilson_interval(k, n)
    return {name: k / n, f"{name}_ci_low": lo, f"{name}_ci_high": hi}


def answer_match(response: str, aliases: Sequence[str]) -> bool:
    from ..judges import answer_match as _am  # written by the judges part (docs/evaluation.md, "Judges")
    return bool(_am(response, list(aliases)))


def is_refusal(response: str, variant: str = "substring") -> bool:
    from ..judges import keyword_refusal
    return bool(keyword_refusal(response, variant=variant))


def compliance_proxy(response: str, variant: str = "substring") -> bool:
    """Weak judge for items without a known answer (no refusal and ≥ 20 words; docs/evaluation.md, "Judges")."""
    from ..judges import compliance_proxy as _cp
    return bool(_cp(response, variant=variant))


def prompt_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def item_record(item_id: str, prompt: str, output: str, success: bool | None, metric: str = "asr",
                split: str = "forget", judge_raw: Any = None, meta: dict | None = None,
                score: float | None = None) -> dict:
    """One items.jsonl row (docs/architecture.md, "File contracts": item_id, split, metric, prompt_hash, output, success|score, judge_raw, meta)."""
    rec = {"item_id": str(item_id), "split": split, "metric": metric, "prompt_hash": prompt_hash(prompt),
           "output": output, "judge_raw": judge_raw, "meta": meta or {}}
    if success is not None:
        rec["success"] = bool(success)
    if score is not None:
        rec["score"] = float(score)
    return rec


def judge_outputs(judge, outputs: Sequence[str], item_ids: Sequence[str], questions: Sequence[str | None],
                  aliases: Sequence[Sequence[str] | None], refusal_variant: str = "substring"
                  ) -> tuple[list[bool], list[bool], list[dict]]:
    """Success by the evaluation's configured judge (``judges.configured``; None → the offline rules) and keyword
    refusal per output; the third list is each item's ``judge_raw`` record (judge name, its raw output, refusal)."""
    from ..judges.configured import build_judges

    judges = build_judges(judge)
    verdicts = judges.success(outputs, item_ids, questions, aliases)
    refu = judges.refused(outputs, refusal_variant, prompts=questions, item_ids=item_ids)
    raw = [{"judge": v["judge"], "judge_model": v["judge_model"], "raw": v["raw"], "refusal": f}
           for v, f in zip(verdicts, refu)]
    return [bool(v["success"]) for v in verdicts], refu, raw


def judge_items(judge, outputs: Sequence[str], items: Sequence[dict], refusal_variant: str = "substring"
                ) -> tuple[list[bool], list[bool], list[dict]]:
    """``judge_outputs`` for item dicts with ``item_id``, ``question`` (or ``prompt``) and ``aliases``."""
    return judge_outputs(judge, outputs, [it["item_id"] for it in items],
                         [it.get("question", it.get("prompt")) for it in items],
                         [it.get("aliases") for it in items], refusal_variant)


def frac(flags: Sequence[bool]) -> float:
    """Share of true flags; NaN for an empty list (a rate over nothing is not 0)."""
    return sum(bool(f) for f in flags) / len(flags) if flags else math.nan


def clean_vs_attacked(judge, outs: Sequence[str], outs_clean: Sequence[str], items: Sequence[dict]
                      ) -> tuple[dict, list[bool], list[bool], list[dict], list[bool]]:
    """ASR of the attacked and the clean (same prompts, no attack) generations by one judge:
    (metrics, success, refusal, judge_raw, clean success)."""
    succ, refu, raw = judge_items(judge, outs, items)
    succ_clean, refu_clean, _ = judge_items(judge, outs_clean, items)
    metrics = {**rate_metrics(succ, "asr"), "asr_clean": frac(succ_clean), "refusal_rate": frac(refu),
               "refusal_rate_clean": frac(refu_clean), "n_items": len(items)}
    return metrics, succ, refu, raw, succ_clean


# --------------------------------------------------------------------------------------------- bench items
def item_id_of(item: Any, index: int, prefix: str) -> str:
    """The row's own ``item_id``/``id``/``id_v2`` (top level or in ``meta``), else ``prefix#index``
    (same rule as ``metrics.registry.item_id`` so attack and clean records join on item ids)."""
    if isinstance(item, dict):
        meta = item.get("meta") if isinstance(item.get("meta"), dict) else {}
        for src in (item, meta):
            for key in ("item_id", "id", "id_v2"):
                if src.get(key) not in (None, ""):
                    return str(src[key])
    return f"{prefix}#{index}"


def aliases_of(bench, item: dict) -> list[str]:
    """Forgotten answer + aliases of an item, from its ``meta`` via ``bench.aliases`` (data part); [] if none."""
    return [a for a in (bench.aliases(item) or []) if isinstance(a, str) and a.strip()]


def forget_qa_items(bench, source: str = "mcq", split: str = "forget") -> list[dict]:
    """Questions with a known answer, normalised to
    ``{item_id, question, answer, aliases, choices, answer_idx, raw}``.

    source "mcq": ``bench.mcq(split)`` rows (question, choices, answer index) — every (entity, attribute)
    pair with an eval-template stem; source "knowmem": ``bench.knowmem(f"{split}_qa")`` (no choices).
    """
    out = []
    if source == "mcq":
        for i, row in enumerate(bench.mcq(split)):
            ans = row["choices"][int(row["answer"])]
            al = aliases_of(bench, row) or [ans]
            out.append({"item_id": item_id_of(row, i, f"mcq-{split}"), "question": row["question"], "answer": ans,
                        "aliases": al, "choices": list(row["choices"]), "answer_idx": int(row["answer"]),
                        "raw": row})
    elif source == "knowmem":
        for i, row in enumerate(bench.knowmem(f"{split}_qa")):
            al = aliases_of(bench, row) or [row["answer"]]
            out.append({"item_id": item_id_of(row, i, f"knowmem-{split}"), "question": row["question"],
                        "answer": row["answer"], "aliases": al, "choices": None, "answer_idx": None, "raw": row})
    else:
        raise ValueError(f"unknown question source {source!r} (mcq | knowmem)")
    return out


def seeded_subset(items: Sequence[Any], n: int | None, seed: int, tag: str) -> list[Any]:
    """A seeded sample of n items kept in their original order (all items when n is None/0 or ≥ len)."""
    import random
    if not n or n >= len(items):
        return list(items)
    order = list(range(len(items)))
    random.Random(derive_seed(seed, tag)).shuffle(order)
    return [items[i] for i in sorted(order[:n])]


# ------------------------------------------------------------------------------------------------- prompts
def chat_prompt(tokenizer, messages: Sequence[dict] | str) -> str:
    """The chat-templated prompt with the generation prompt opened (tokenise with add_special_tokens=False)."""
    from ..data.collate import require_chat_template

    require_chat_template(tokenizer, "a chat prompt of a prompt attack")
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def encode_plain(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------------------------------------- generation
def generate_texts(model, tokenizer, prompts: Sequence, *, max_new_tokens: int, do_sample: bool = False,
                   temperature: float = 1.0, top_p: float = 1.0, seeds: Sequence[int] | None = None,
                   batch_size: int = 32, add_special_tokens: bool = False) -> list[str]:
    """Batched generation through ``metrics.generation.generate``; prompts are strings (chat-templated:
    ``add_special_tokens=False``) or token-id lists. Sampling is seeded per item via ``seeds`` (one per prompt),
    so a prompt's sample does not depend on which other prompts share its batch."""
    from ..metrics.generation import generate
    from ..models.tokenizer import stop_token_ids

    if not prompts:
        return []
    kwargs = {}
    if do_sample:
        kwargs = {"temperature": temperature, "top_p": top_p,
                  "seeds": [int(s) for s in seeds] if seeds is not None else None}
    return list(generate(model, tokenizer, list(prompts), max_new_tokens, do_sample=do_sample, batch_size=batch_size,
                         add_special_tokens=add_special_tokens, stop_ids=stop_token_ids(tokenizer), **kwargs))


def sampled_texts(model, tokenizer, prompts: Sequence, cfg, seed: int, tag: str, item_ids: Sequence[str],
                  *extra_seed) -> list[str]:
    """Generation with a ``SamplingConfig`` (temperature 0 = greedy), seeded per item by
    ``derive_seed(seed, tag, item_id, *extra_seed)``."""
    return generate_texts(model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens,
                          do_sample=cfg.temperature > 0, temperature=cfg.temperature or 1.0, top_p=cfg.top_p,
                          seeds=[derive_seed(seed, tag, i, *extra_seed) for i in item_ids],
                          batch_size=cfg.batch_size)


# ------------------------------------------------------------------------------------------------- hooks
def decoder_blocks(model) -> torch.nn.ModuleList:
    """The transformer blocks (Llama/Mistral: ``model.model.layers``)."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "layers"):
        return inner.layers
    raise TypeError(f"{type(model).__name__}: cannot find decoder blocks (expected model.model.layers)")


def resolve_layer(model, layer: int | None, default: str = "last") -> int:
    """Block index; None → the ``default`` block ("last" or "middle" = n // 2); negative counts from the end."""
    n = len(decoder_blocks(model))
    if layer is None:
        return n // 2 if default == "middle" else n - 1
    idx = layer if layer >= 0 else n + layer
    if not 0 <= idx < n:
        raise ValueError(f"layer {layer} out of range for a model with {n} blocks")
    return idx


@contextlib.contextmanager
def block_output_hook(model, layer: int, fn: Callable[[torch.Tensor], torch.Tensor]):
    """Replace block ``layer``'s output h by fn(h) while the context is open (tuple outputs handled)."""

    def hook(_mod, _inp, out):
        if isinstance(out, tuple):
            return (fn(out[0]),) + tuple(out[1:])
        return fn(out)

    handle = decoder_blocks(model)[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def capture_block_output(model, layer: int):
    """Record block ``layer``'s output tensor of the next forward in ``store["h"]``."""
    store: dict[str, torch.Tensor] = {}

    def fn(h):
        store["h"] = h
        return h

    with block_output_hook(model, layer, fn):
        yield store


# ------------------------------------------------------------------------------------- log-likelihoods
def model_device(model) -> torch.device:
    return next(model.parameters()).device


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        att[i, : len(r)] = 1
    return ids.to(device), att.to(device)


def target_nll(model, attention_mask: torch.Tensor, tgt_pos: torch.Tensor, tgt_ids: torch.Tensor,
               tgt_mask: torch.Tensor, input_ids: torch.Tensor | None = None,
               inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row mean NLL of target tokens (teacher forcing), right-padded rows.

    ``tgt_pos[r, j]`` is the position whose logits predict ``tgt_ids[r, j]``; ``tgt_mask`` marks real targets.
    Only those positions go through the LM head (a (R, T, V) tensor instead of (R, W, V)), which is what makes
    scoring hundreds of GCG candidates × items in one forward affordable.
    """
    base = model.base_model
    h = base(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state
    sel = h.gather(1, tgt_pos[..., None].expand(-1, -1, h.size(-1)))
    logp = torch.log_softmax(model.get_output_embeddings()(sel).float(), dim=-1)
    lp = logp.gather(-1, tgt_ids[..., None])[..., 0]
    m = tgt_mask.to(lp.dtype)
    return -(lp * m).sum(1) / m.sum(1).clamp(min=1.0)


def score_pairs(model, tokenizer, pairs: Sequence[tuple[list[int], list[int]]], batch_size: int = 64) -> list[float]:
    """Σ log p(cont | ctx) per token-id pair (``metrics.generation.score_continuations``, batched)."""
    from ..metrics.generation import score_continuations
    return [s.logprob for s in score_continuations(model, tokenizer, list(pairs), batch_size=batch_size)]


def mcq_with_clean(model, tokenizer, bench, eval_cfg: dict | None, splits: Sequence[str] = ("forget",),
                   edit_context: Callable | None = None, hooks: Callable | None = None) -> dict[str, float]:
    """The evaluation's own MCQ metrics (``metrics.mcq.mcq_under_attack``: the one scorer, with the evaluation's
    rows, norm and BOS) under the attack — ``edit_context`` changes every context, ``hooks()`` opens the
    attack's forward hooks — and clean; adds ``<name>_clean`` and the gain (``forget_mcq_gain``,
    ``forget_mcq_letter_gain``) for each primary accuracy. At zero strength the attacked value equals the clean
    evaluation's exactly."""
    from ..metrics.mcq import mcq_under_attack

    with (hooks() if hooks is not None else contextlib.nullcontext()):
        att, _ = mcq_under_attack(model, tokenizer, bench, eval_cfg, splits, edit_context)
    clean, _ = mcq_under_attack(model, tokenizer, bench, eval_cfg, splits)
    out = dict(att)
    for split in splits:
        for name, gain in ((f"{split}_mcq_acc", f"{split}_mcq_gain"),
                           (f"{split}_mcq_acc_letter", f"{split}_mcq_letter_gain")):
            if name in att and name in clean:
                out[f"{name}_clean"] = clean[name]
                out[gain] = att[name] - clean[name]
    return out


# -------------------------------------------------------------------------------------------- prepare I/O
# the precision every attack loads its model in: `ru attack --dtype` (the rules pass model.dtype) sets it once per
# job, so each attack's prepare (built-in or plugin) needs no dtype argument of its own
_LOAD_DTYPE = "float32"


def set_load_dtype(dtype: str) -> None:
    global _LOAD_DTYPE
    _LOAD_DTYPE = str(dtype)


def load_dtype() -> str:
    return _LOAD_DTYPE


def load_for_attack(model_dir, device: str = "auto", dtype: str | None = None):
    """The model (eval mode) and tokenizer; ``dtype`` None: the job's precision (:func:`set_load_dtype`)."""
    from ..models.io import load_model, load_tokenizer
    dev = pick_device(device)
    model = load_model(model_dir, dtype=dtype or _LOAD_DTYPE, device=dev)
    model.eval()
    return model, load_tokenizer(model_dir)


def bench_location(bench) -> str | None:
    for attr in ("root", "data_dir", "dir", "path_root"):
        val = getattr(bench, attr, None)
        if isinstance(val, (str, Path)):
            return str(val)
    return None


def begin_prepare(attack_cls, params: dict, out_dir) -> tuple[float, Any, Path]:
    """(start time, validated Config, created output folder): the first lines of every ``prepare``."""
    started = time.time()
    cfg = attack_cls.Config.from_dict(params)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return started, cfg, out_dir


def write_attack_json(out_dir, attack_cls, cfg, seed: int, model_dir, bench, started: float,
                      result: dict | None = None, **extra: Any) -> dict:
    """``out_dir/attack.json``: status, settings, provenance, timing (written last: its presence marks completion).
    ``extra`` may override ``status`` (e.g. "diverged" when relearning blew up; the CLI skips evaluation then)."""
    # a model attack's copy (out_dir/model) is temporary in the workflow (deleted once evaluated): its file list
    # (size, sha256) stays here, so what was deleted remains on record
    manifest = Path(out_dir) / "model" / "weights_manifest.json"
    if manifest.is_file() and "model_files" not in extra:
        extra["model_files"] = read_json(manifest).get("files", {})
    doc = {"attack": attack_cls.name, "kind": attack_cls.kind, "status": "ok", "params": cfg.to_dict(),
           "seed": int(seed),
           "model_dir": str(model_dir) if model_dir is not None else None, "benchmark": bench_location(bench),
           "timing": {"prepare_s": round(time.time() - started, 3)}, "result": result or {},
           "provenance": provenance(cfg.to_dict(), seed, attack=attack_cls.name), **extra}
    atomic_write_json(Path(out_dir) / ATTACK_JSON, doc)
    return doc


def read_attack_json(artefact_dir) -> dict:
    path = Path(artefact_dir) / ATTACK_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no attack.json (run the attack's prepare step first)")
    return read_json(path)


def config_from_artefact(attack_cls, artefact_dir):
    doc = read_attack_json(artefact_dir)
    if doc.get("attack") != attack_cls.name:
        raise ValueError(f"{artefact_dir}: attack.json is for {doc.get('attack')!r}, not {attack_cls.name!r}")
    return attack_cls.Config.from_dict(doc["params"]), doc


def eval_int(eval_cfg: dict | None, key: str, default: int) -> int:
    v = (eval_cfg or {}).get(key, default)
    return int(default if v is None else v)


def chunks(seq: Sequence[Any], n: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


class ItemsAttack:
    """Base of input attacks whose artefact is a JSONL of prompt items built from the benchmark and the
    tokenizer only (prefill, multi-turn): ``prepare`` builds and writes them once; subclasses define
    ``ITEMS_FILE``, ``build_items(tokenizer, bench, cfg)`` and ``item_summary(rows)``."""

    kind: str = "input"
    ITEMS_FILE: str = "items.jsonl"

    @classmethod
    def item_summary(cls, rows: list[dict]) -> dict:
        return {"n_items": len(rows)}

    @classmethod
    def prepare(cls, model_dir, bench, params: dict, out_dir, seed: int, device: str = "auto") -> dict:
        from ..models.io import load_tokenizer
        from ..utils.io import atomic_write_jsonl

        started, cfg, out_dir = begin_prepare(cls, params, out_dir)
        rows = cls.build_items(load_tokenizer(model_dir), bench, cfg)
        atomic_write_jsonl(out_dir / cls.ITEMS_FILE, rows)
        return write_attack_json(out_dir, cls, cfg, seed, model_dir, bench, started, result=cls.item_summary(rows))
