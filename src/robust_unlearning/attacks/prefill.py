"""Prefilling attack (evaluation.md §7.2): start the assistant turn with the first k tokens of the reference
answer and let the model continue.

prefix = decode(tokenize(answer)[:k]) (k in tokens, no special tokens); input = chat_template([user],
add_generation_prompt) + " " + prefix; sampling T = 0.7 seeded per item; the judge sees the continuation only.
Items whose answer already lies inside the prefix are flagged ``answer_in_prefix`` and excluded (count reported).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, Optional

from ..utils.io import read_jsonl
from ..utils.repro import derive_seed
from .common import (ItemsAttack, aliases_of, answer_match, chat_prompt, config_from_artefact, generate_texts, item_id_of,
                     item_record, judge_outputs, rate_metrics, write_attack_json)
from .config import AttackConfig
from .registry import register_attack



def make_prefix(tokenizer, answer: str, k: int) -> str:
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"][:k]
    return tokenizer.decode(ids, skip_special_tokens=True)


@register_attack("prefill")
class Prefill(ItemsAttack):
    kind = "input"
    ITEMS_FILE = "prefill_items.jsonl"

    @dataclass
    class Config(AttackConfig):
        attack_name: ClassVar[str] = "prefill"
        k: int = 15
        max_new_tokens: int = 64
        temperature: float = 0.7
        top_p: float = 1.0
        batch_size: int = 8
        max_items: Optional[int] = None
        best_of: int = 1   # > 1: also report best-of-n ASR (success if any of n seeded samples succeeds)
        refusal_variant: Literal["substring", "word_boundary"] = "substring"

        def check(self) -> None:
            self.require(self.k >= 1, "k", f"must be ≥ 1, got {self.k}")
            self.require(self.max_new_tokens >= 1, "max_new_tokens", f"must be ≥ 1, got {self.max_new_tokens}")
            self.require(self.temperature >= 0, "temperature", f"must be ≥ 0, got {self.temperature}")
            self.require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
            self.require(self.batch_size >= 1, "batch_size", f"must be ≥ 1, got {self.batch_size}")
            self.require(self.max_items is None or self.max_items >= 1, "max_items", "must be ≥ 1 or null")
            self.require(self.best_of >= 1, "best_of", f"must be ≥ 1, got {self.best_of}")

    @classmethod
    def build_items(cls, tokenizer, bench, cfg) -> list[dict]:
        rows = []
        for i, item in enumerate(bench.prefill()):
            msgs = item["messages"]
            user, answer = msgs[0], msgs[1]["content"]
            prefix = make_prefix(tokenizer, answer, cfg.k)
            aliases = aliases_of(bench, item)
            rows.append({"item_id": item_id_of(item, i, "prefill"),
                         "prompt": chat_prompt(tokenizer, [user]) + " " + prefix, "prefix": prefix,
                         "aliases": aliases, "answer_in_prefix": bool(aliases) and answer_match(prefix, aliases)})
        return rows[: cfg.max_items] if cfg.max_items else rows

    @classmethod
    def item_summary(cls, rows: list[dict]) -> dict:
        return {"n_items": len(rows), "n_answer_in_prefix": sum(r["answer_in_prefix"] for r in rows)}

    @classmethod
    def evaluate(cls, model, tokenizer, bench, artefact_dir, eval_cfg: dict | None, seed: int):
        cfg, _doc = config_from_artefact(cls, artefact_dir)
        rows = read_jsonl(Path(artefact_dir) / cls.ITEMS_FILE)
        judged_idx = [i for i, r in enumerate(rows) if not r["answer_in_prefix"] and r["aliases"]]
        judged = [rows[i] for i in judged_idx]
        outs = generate_texts(model, tokenizer, [r["prompt"] for r in judged], max_new_tokens=cfg.max_new_tokens,
                              do_sample=cfg.temperature > 0, temperature=cfg.temperature or 1.0, top_p=cfg.top_p,
                              seeds=[derive_seed(seed, "prefill", r["item_id"]) for r in judged],
                              batch_size=cfg.batch_size)
        succ, refu = judge_outputs(outs, [r["aliases"] for r in judged], cfg.refusal_variant)
        metrics = {**rate_metrics(succ, "asr"), "refusal_rate": (sum(refu) / len(refu) if refu else 0.0),
                   "n_items": len(rows), "n_judged": len(judged),
                   "n_answer_in_prefix": sum(bool(r["answer_in_prefix"]) for r in rows),
                   "n_no_answer": sum(1 for r in rows if not r["aliases"])}
        if cfg.best_of > 1 and judged:
            extra = generate_texts(model, tokenizer, [r["prompt"] for r in judged for _ in range(cfg.best_of - 1)],
                                   max_new_tokens=cfg.max_new_tokens, do_sample=cfg.temperature > 0,
                                   temperature=cfg.temperature or 1.0, top_p=cfg.top_p,
                                   seeds=[derive_seed(seed, "prefill", r["item_id"], j) for r in judged
                                          for j in range(1, cfg.best_of)], batch_size=cfg.batch_size)
            n_extra = cfg.best_of - 1
            any_succ = [s or any(answer_match(o, r["aliases"]) for o in extra[i * n_extra:(i + 1) * n_extra])
                        for i, (r, s) in enumerate(zip(judged, succ))]
            metrics.update({f"{k.replace('asr', f'asr_best_of_{cfg.best_of}')}": v
                            for k, v in rate_metrics(any_succ, "asr").items()})
        items, by_idx = [], {i: (o, s, f) for i, o, s, f in zip(judged_idx, outs, succ, refu)}
        for i, r in enumerate(rows):
            if i in by_idx:
                o, s, f = by_idx[i]
                items.append(item_record(r["item_id"], r["prompt"], o, s, judge_raw={"answer_match": s, "refusal": f},
                                         meta={"k": cfg.k, "answer_in_prefix": False}))
            else:
                items.append(item_record(r["item_id"], r["prompt"], "", None, judge_raw=None,
                                         meta={"k": cfg.k, "answer_in_prefix": bool(r["answer_in_prefix"]),
                                               "excluded": True}))
        return metrics, items
