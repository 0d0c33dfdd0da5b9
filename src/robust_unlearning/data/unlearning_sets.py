"""Token examples for unlearning, relearning and base training, built from a :class:`Benchmark`.

Sources (docs/benchmarks.md, "Training examples"):
- ``raw``: one example per document (``collate.encode_text``: BOS + text, loss on all tokens);
- ``chunks``: MUSE chunking of ``raw/<split>.txt`` (``collate.chunk_text``);
- ``dialogue``: PRISM dialogues in the model's chat template, prompt masked (``collate.encode_dialogue``), or with
  ``prompt_format: plain`` in the released WMDP code's plain text (``collate.encode_plain_dialogue``);
- ``qa``: the same dialogue pairs as plain ``"Question: …\\nAnswer: …"`` (``collate.encode_qa``).
``split="retain"`` means retain1 for raw/chunks (D_r during unlearning) and ``dialogue/retain.jsonl`` for
dialogue/qa. With ``mask_pad_labels: false`` every example is padded to max_len with the pad id kept in its
labels (the released WMDP code, defect D4); by default padding is added per batch and never labelled.
The benchmark section's keys that choose all this are validated by :class:`ExampleFormat`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any, Sequence

from ..methods.registry import ConfigBase, ConfigError, choice, num
from .collate import (PLAIN_SYSTEM_PROMPTS, chunk_text, encode_dialogue, encode_plain_dialogue, encode_qa, encode_text,
                      pad_to_length, require_chat_template)
from .formats import Benchmark, BenchmarkError, read_jsonl_numbered

SOURCES = ("raw", "chunks", "dialogue", "qa")
SPLITS = ("forget", "retain")
PROMPT_FORMATS = ("chat_template", "plain")


@dataclasses.dataclass
class ExampleFormat(ConfigBase):
    """How the benchmark section turns a split into training examples (docs/benchmarks.md, "Training examples"):
    the sources, ``prompt_format`` of dialogues and whether pad positions are labelled. The same examples feed
    PRISM's probe and the unlearning run, so both stages see one format (defect D18)."""
    forget_source: str = choice("raw", SOURCES)
    retain_source: str = choice("raw", SOURCES)
    prompt_format: str = choice("chat_template", PROMPT_FORMATS)
    mask_pad_labels: bool = True
    static_pad_id: int | None = num(None, ge=0)   # mask_pad_labels: false; null = the tokenizer's pad id

    def check(self) -> None:
        if self.prompt_format != "chat_template" and "dialogue" not in (self.forget_source, self.retain_source):
            raise ConfigError("prompt_format", f"{self.prompt_format!r} formats the 'dialogue' source only, and "
                                               "neither forget_source nor retain_source is dialogue")
        if self.mask_pad_labels:
            self.unused("static_pad_id", "with mask_pad_labels: true (padding is added per batch, label -100)")

    @classmethod
    def from_benchmark(cls, bench_cfg: dict | None) -> "ExampleFormat":
        """The format keys of a config's ``benchmark`` section (its other keys are the data loader's)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls.from_dict({k: v for k, v in (bench_cfg or {}).items() if k in names})


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


def build_examples(bench: Benchmark, tokenizer, split: str, source: str, max_len: int,
                   prompt_format: str = "chat_template", mask_pad_labels: bool = True,
                   static_pad_id: int | None = None) -> list[dict]:
    """Examples ``{"input_ids", "labels"}`` of the forget or retain split from one source (see module doc).

    ``prompt_format`` (``dialogue`` only): ``chat_template`` or ``plain``. ``mask_pad_labels: false``: every
    example right-padded to ``max_len`` with ``static_pad_id`` (default: the tokenizer's pad id, else EOS), the pad
    kept as label and an ``attention_mask`` marking it (``collate.pad_to_length``)."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
    if prompt_format not in PROMPT_FORMATS:
        raise ConfigError("prompt_format", f"must be one of {list(PROMPT_FORMATS)}, got {prompt_format!r}")
    if source == "raw":
        out = [encode_text(tokenizer, t, max_len) for t in bench.raw(_raw_split(split))]
    elif source == "chunks":
        out = chunk_text(tokenizer, bench.raw_text(_raw_split(split)), max_len)
    elif source == "dialogue" and prompt_format == "plain":
        system = PLAIN_SYSTEM_PROMPTS[_dialogue_split(split)]
        out = []
        for r in bench.dialogue(_dialogue_split(split)):
            q, a = _qa_pair(r["messages"])
            out.append(encode_plain_dialogue(tokenizer, q, a, system, max_len))
    elif source == "dialogue":
        require_chat_template(tokenizer, f"the {split} set of {bench.path('dialogue')} (source 'dialogue')")
        out = [encode_dialogue(tokenizer, first_exchange(r["messages"]), max_len)
               for r in bench.dialogue(_dialogue_split(split))]
    else:
        out = [encode_qa(tokenizer, *_qa_pair(r["messages"]), max_len) for r in bench.dialogue(_dialogue_split(split))]
    if not mask_pad_labels:
        pad = static_pad_id if static_pad_id is not None else _tokenizer_pad_id(tokenizer)
        out = [pad_to_length(e, max_len, pad) for e in out]
    return out


def _tokenizer_pad_id(tokenizer) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad if pad is not None else tokenizer.eos_token_id)


def build_run_examples(bench: Benchmark, tokenizer, bench_cfg: dict | None, max_len: int) -> tuple[list, list]:
    """(forget, retain) examples of a run as its ``benchmark`` section says (:class:`ExampleFormat`): what the
    probe and the unlearning job both train on."""
    fmt = ExampleFormat.from_benchmark(bench_cfg)
    kw = {"prompt_format": fmt.prompt_format, "mask_pad_labels": fmt.mask_pad_labels,
          "static_pad_id": fmt.static_pad_id}
    return (build_examples(bench, tokenizer, "forget", fmt.forget_source, max_len, **kw),
            build_examples(bench, tokenizer, "retain", fmt.retain_source, max_len, **kw))


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
