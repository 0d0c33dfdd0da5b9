"""Turn on-disk items into token examples and padded batches.

An *example* is ``{"input_ids": list[int], "labels": list[int]}`` (labels −100 where no loss is taken), with an
optional ``"attention_mask"`` when the example carries its own padding (``pad_to_length``: the released WMDP
code's fixed-length padding, kept in the labels, for ``mask_pad_labels: false``).
A *batch* is ``{"input_ids", "attention_mask", "labels"}`` LongTensors, right-padded to the longest row; the
padding added here always gets label −100 and attention 0 (no loss on pads, unlike defect D4 of the reference).
"""
from __future__ import annotations

import random
from typing import Iterable, Sequence

import torch

IGNORE_INDEX = -100


def encode_text(tokenizer, text: str, max_len: int, add_eos: bool = False) -> dict:
    """Raw text with BOS; loss on every token (MUSE / document style). ``add_eos`` closes a self-contained row
    (base-training mixtures), so that the model learns where an answer or a document ends and greedy decoding
    stops there instead of running on to the token limit."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if add_eos:
        ids = ids + [tokenizer.eos_token_id]
    ids = ids[:max_len]
    return {"input_ids": ids, "labels": list(ids)}


class ChatTemplateError(ValueError):
    """A dialogue needs the tokenizer's chat template and the tokenizer has none; the message names it."""


def require_chat_template(tokenizer, what: str = "dialogue data") -> None:
    """Fail early, naming the tokenizer, when ``what`` needs a chat template the tokenizer lacks (transformers'
    own error does not say which tokenizer or which data asked for it)."""
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ChatTemplateError(f"tokenizer {name}: no chat template, but {what} is formatted with it; use a chat "
                                "model (or save a chat_template with the tokenizer) or a non-dialogue source")


def encode_dialogue(tokenizer, messages: Sequence[dict], max_len: int, mask_prompt: bool = True) -> dict:
    """A [user, assistant] dialogue in the model's chat template; prompt tokens masked by default.

    The templated prompt already holds BOS, so it is tokenised with ``add_special_tokens=False``.
    """
    require_chat_template(tokenizer)
    prompt = tokenizer.apply_chat_template(list(messages[:-1]), tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(list(messages), tokenize=False)
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    f_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    if f_ids[: len(p_ids)] != p_ids:  # tokenisation merged across the boundary; fall back to concatenation
        f_ids = p_ids + tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    f_ids = f_ids[:max_len]
    labels = list(f_ids)
    if mask_prompt:
        n = min(len(p_ids), len(labels))
        labels[:n] = [IGNORE_INDEX] * n
    return {"input_ids": f_ids, "labels": labels}


#: The released PRISM WMDP code's system prompts (``prompt_format: plain``; docs/benchmarks.md, "Training examples").
PLAIN_SYSTEM_PROMPTS = {
    "forget": "You are a helpful assistant. The following are questions (with answers) about biology or something "
              "I want you to answer.",
    "retain": "You are a helpful assistant.",
}


def encode_plain_dialogue(tokenizer, user: str, assistant: str, system: str, max_len: int) -> dict:
    """A [user, assistant] pair as the released PRISM WMDP code feeds it (defect D12): the text
    ``"{system}\\n{user}\\n{assistant}"`` (both turns stripped) with the tokenizer's own special tokens (BOS), no
    chat template, no EOS; the first ``len(tokenise("{system}\\n{user}"))`` labels are −100, as there (the prompt
    is tokenised on its own, so a merge across the boundary is not corrected either)."""
    prompt = f"{system}\n{user.strip()}"
    full = f"{prompt}\n{assistant.strip()}"
    ids = tokenizer(full, add_special_tokens=True)["input_ids"][:max_len]
    n_prompt = len(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    labels = list(ids)
    labels[: min(n_prompt, len(labels))] = [IGNORE_INDEX] * min(n_prompt, len(labels))
    return {"input_ids": ids, "labels": labels}


def pad_to_length(example: dict, length: int, pad_id: int) -> dict:
    """Right-pad one example to ``length`` as the released WMDP code does (``mask_pad_labels: false``, defect D4):
    the pad positions keep ``pad_id`` as their LABEL (so CE and NPO include predicting it) and get attention 0.
    The padding travels with the example (``attention_mask``), so its loss terms do not depend on which examples
    share a micro-batch."""
    ids = list(example["input_ids"])[:length]
    labels = list(example.get("labels", example["input_ids"]))[:length]
    own = list(example.get("attention_mask", [1] * len(ids)))[:length]
    pad = length - len(ids)
    return {**example, "input_ids": ids + [pad_id] * pad, "labels": labels + [pad_id] * pad,
            "attention_mask": own + [0] * pad}


def encode_qa(tokenizer, question: str, answer: str, max_len: int, mask_prompt: bool = True) -> dict:
    """Plain "Question: …\\nAnswer: …" with BOS; loss on the answer only by default."""
    prompt = f"Question: {question}\nAnswer:"
    p_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    a_ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
    ids = (p_ids + a_ids)[:max_len]
    labels = list(ids)
    if mask_prompt:
        labels[: min(len(p_ids), len(labels))] = [IGNORE_INDEX] * min(len(p_ids), len(labels))
    return {"input_ids": ids, "labels": labels}


def chunk_text(tokenizer, text: str, max_len: int) -> list[dict]:
    """MUSE chunking (docs/benchmarks.md, "Training examples"): pieces of max_len−1 tokens, BOS prepended, last
    chunk wrapped."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    body = max_len - 1
    chunks = [[bos] + ids[i:i + body] for i in range(0, len(ids), body)]
    if len(chunks) > 1 and len(chunks[-1]) < max_len:
        chunks[-1] = (chunks[-1] + chunks[0])[:max_len]
    return [{"input_ids": c, "labels": list(c)} for c in chunks]


def pad_batch(examples: Sequence[dict], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    width = max(len(e["input_ids"]) for e in examples)
    ids, att, lab = [], [], []
    for e in examples:
        n = len(e["input_ids"])
        pad = width - n
        labels = e.get("labels", e["input_ids"])
        own = list(e["attention_mask"]) if "attention_mask" in e else [1] * n
        if padding_side == "right":
            ids.append(list(e["input_ids"]) + [pad_id] * pad)
            att.append(own + [0] * pad)
            lab.append(list(labels) + [IGNORE_INDEX] * pad)
        else:
            ids.append([pad_id] * pad + list(e["input_ids"]))
            att.append([0] * pad + own)
            lab.append([IGNORE_INDEX] * pad + list(labels))
    return {"input_ids": torch.tensor(ids, dtype=torch.long), "attention_mask": torch.tensor(att, dtype=torch.long),
            "labels": torch.tensor(lab, dtype=torch.long)}


def batches(examples: Sequence[dict], batch_size: int, seed: int, shuffle: bool = True) -> Iterable[list[dict]]:
    """One epoch of batches in a seeded order (the last short batch is kept)."""
    order = list(range(len(examples)))
    if shuffle:
        random.Random(seed).shuffle(order)
    for i in range(0, len(order), batch_size):
        yield [examples[j] for j in order[i:i + batch_size]]
