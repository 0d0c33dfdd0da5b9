"""Token examples for unlearning, relearning and base training, built from a :class:`Benchmark`.

Sources (docs/benchmarks.md, "Training examples"):
- ``raw``: one example per document (``collate.encode_text``: BOS + text, loss on all tokens);
- ``chunks``: MUSE chunking of ``raw/<split>.txt`` (``collate.chunk_text``);
- ``dialogue``: PRISM dialogues in the model's chat template, prompt masked (``collate.encode_dialogue``);
- ``qa``: the same dialogue pairs as plain ``"Question: …\\nAnswer: …"`` (``collate.encode_qa``).
``split="retain"`` means retain1 for raw/chunks (D_r during unlearning) and ``dialogue/retain.jsonl`` for
dialogue/qa.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any, Sequence

from .collate import chunk_text, encode_dialogue, encode_qa, encode_text, require_chat_template
from .formats import Benchmark, BenchmarkError, read_jsonl_numbered

SOURCES = ("raw", "chunks", "dialogue", "qa")
SPLITS = ("forget", "retain")


def _raw_split(split: str) -> str:
    """forget → forget, retain → retain1; explicit raw split names (retain1/retain2/holdout) pass through."""
    if split == "retain":
        return "retain1"
    if split in ("forget", "retain1", "retain2", "holdout"):
        return split
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS} (or retain1/retain2/holdout for raw)")


def _dialogue_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown dialogue split {split!r}; expected one of {SPLITS}")
    return split


def first_exchange(messages: Sequence[dict]) -> list[dict]:
    """Messages up to and including the first assistant reply after the first user turn (PRISM uses the
    first [user, assistant] pair; a leading system message is kept)."""
    out = []
    seen_user = False
    for m in messages:
        out.append({"role": m["role"], "content": m["content"]})
        seen_user = seen_user or m["role"] == "user"
        if seen_user and m["role"] == "assistant":
            return out
    raise BenchmarkError(f"dialogue without a user→assistant exchange: {list(messages)[:2]!r}")


def _qa_pair(messages: Sequence[dict]) -> tuple[str, str]:
    ex = first_exchange(messages)
    question = next(m["content"] for m in ex if m["role"] == "user")
    return question, ex[-1]["content"]


def split_texts(bench: Benchmark, split: str, source: str) -> list[str]:
    """The texts that ``build_examples`` encodes for (split, source), in order (what the fingerprint hashes)."""
    if source in ("raw", "chunks"):
        if source == "chunks":
            return [bench.raw_text(_raw_split(split))]
        return list(bench.raw(_raw_split(split)))
    if source in ("dialogue", "qa"):
        rows = bench.dialogue(_dialogue_split(split))
        return [json.dumps(first_exchange(r["messages"]), sort_keys=True, ensure_ascii=False) for r in rows]
    raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")


def build_examples(bench: Benchmark, tokenizer, split: str, source: str, max_len: int) -> list[dict]:
    """Examples ``{"input_ids", "labels"}`` of the forget or retain split from one source (see module doc)."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
    if source == "raw":
        return [encode_text(tokenizer, t, max_len) for t in bench.raw(_raw_split(split))]
    if source == "chunks":
        return chunk_text(tokenizer, bench.raw_text(_raw_split(split)), max_len)
    rows = bench.dialogue(_dialogue_split(split))
    if source == "dialogue":
        require_chat_template(tokenizer, f"the {split} set of {bench.path('dialogue')} (source 'dialogue')")
        return [encode_dialogue(tokenizer, first_exchange(r["messages"]), max_len) for r in rows]
    out = []
    for r in rows:
        q, a = _qa_pair(r["messages"])
        out.append(encode_qa(tokenizer, q, a, max_len))
    return out


def build_mixture_examples(path: str | os.PathLike, tokenizer, max_len: int) -> list[dict]:
    """Base-training rows of ``train/*_mix.jsonl`` (docs/benchmarks.md, "Base-training mixtures"):
    ``{"text"}`` → ``encode_text`` + EOS; ``{"messages"}`` → chat template with loss on all non-pad tokens
    (``mask_prompt=False``)."""
    path = Path(path)
    out = []
    for lineno, row in read_jsonl_numbered(path):
        if isinstance(row, dict) and isinstance(row.get("text"), str):
            out.append(encode_text(tokenizer, row["text"], max_len, add_eos=True))
        elif isinstance(row, dict) and isinstance(row.get("messages"), list) and row["messages"]:
            msgs = row["messages"]
            if not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                       for m in msgs):
                raise BenchmarkError(f"{path}: line {lineno}: field 'messages' must hold {{role, content}} strings")
            out.append(encode_dialogue(tokenizer, [{"role": m["role"], "content": m["content"]} for m in msgs],
                                       max_len, mask_prompt=False))
        else:
            raise BenchmarkError(f"{path}: line {lineno}: expected a 'text' string or a 'messages' list")
    if not out:
        raise BenchmarkError(f"{path}: no training rows")
    return out


def relearn_subset(examples: Sequence[Any], fraction: float, seed: int) -> list[Any]:
    """A seeded subset of ``round(fraction·N)`` examples (≥ 1), in original order; nested across fractions for
    the same seed (the 25% subset ⊂ the 50% subset), as the Relearn-25%/50% variants (docs/evaluation.md,
    "Relearning")."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    n = len(examples)
    if n == 0:
        raise ValueError("cannot take a relearn subset of an empty example list")
    k = max(1, int(round(fraction * n)))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [examples[i] for i in sorted(order[:k])]


def texts_fingerprint(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        data = t.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def forget_fingerprint(bench: Benchmark, split: str = "forget", source: str = "raw") -> str:
    """sha256 of the texts of a split (default: the forget documents). The relearning attack compares the
    fingerprint of its data with ``forget_fingerprint(bench)``: relearning must use forget data, not retain data
    (docs/evaluation.md, "Relearning")."""
    return texts_fingerprint(split_texts(bench, split, source))
