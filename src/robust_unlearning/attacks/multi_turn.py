"""Multi-turn attack (evaluation.md §7.4): whole conversations through the chat template (generation prompt on),
left-truncated to the context, sampled (T = 1.0, top-p 1.0) seeded per item; on the synthetic benchmark the
benign warm-up turns end with a user turn asking a forgotten attribute, judged by answer-match.
Conversations that end on an assistant turn are kept as is and flagged (130 of 224 in the reference file).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, Optional

from ..utils.io import read_jsonl
from ..utils.repro import derive_seed
from .common import (ItemsAttack, aliases_of, chat_prompt, compliance_proxy, config_from_artefact, encode_plain, generate_texts,
                     item_id_of, item_record, judge_outputs, rate_metrics, write_attack_json)
from .config import AttackConfig
from .registry import register_attack



@register_attack("multi_turn")
class MultiTurn(ItemsAttack):
    kind = "input"
    ITEMS_FILE = "multi_turn_items.jsonl"

    @dataclass
    class Config(AttackConfig):
        attack_name: ClassVar[str] = "multi_turn"
        temperature: float = 1.0
        top_p: float = 1.0
        max_new_tokens: int = 64
        max_prompt_tokens: Optional[int] = None   # None: the model context minus max_new_tokens (in generate)
        batch_size: int = 8
        max_items: Optional[int] = None
        refusal_variant: Literal["substring", "word_boundary"] = "substring"

        def check(self) -> None:
            self.require(self.temperature >= 0, "temperature", f"must be ≥ 0, got {self.temperature}")
            self.require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
            self.require(self.max_new_tokens >= 1, "max_new_tokens", "must be ≥ 1")
            self.require(self.max_prompt_tokens is None or self.max_prompt_tokens >= 1, "max_prompt_tokens",
                         "must be ≥ 1 or null")
            self.require(self.batch_size >= 1, "batch_size", "must be ≥ 1")
            self.require(self.max_items is None or self.max_items >= 1, "max_items", "must be ≥ 1 or null")

    @classmethod
    def build_items(cls, tokenizer, bench, cfg) -> list[dict]:
        rows = []
        for i, conv in enumerate(bench.multi_turn()):
            msgs = conv["conversation"]
            ids = encode_plain(tokenizer, chat_prompt(tokenizer, msgs))
            truncated = bool(cfg.max_prompt_tokens and len(ids) > cfg.max_prompt_tokens)
            if truncated:
                ids = ids[-cfg.max_prompt_tokens:]
            rows.append({"item_id": item_id_of(conv, i, "multi_turn"), "prompt_ids": ids,
                         # answers only from meta: without one, Benchmark.aliases would fall back to a warm-up reply
                         "aliases": aliases_of(bench, {"meta": conv.get("meta")}), "n_turns": len(msgs),
                         "ends_on_assistant": msgs[-1]["role"] == "assistant", "truncated": truncated})
        return rows[: cfg.max_items] if cfg.max_items else rows

    @classmethod
    def item_summary(cls, rows: list[dict]) -> dict:
        return {"n_items": len(rows), "n_ends_on_assistant": sum(r["ends_on_assistant"] for r in rows),
                "n_truncated": sum(r["truncated"] for r in rows)}

    @classmethod
    def evaluate(cls, model, tokenizer, bench, artefact_dir, eval_cfg: dict | None, seed: int):
        cfg, _ = config_from_artefact(cls, artefact_dir)
        rows = read_jsonl(Path(artefact_dir) / cls.ITEMS_FILE)
        outs = generate_texts(model, tokenizer, [r["prompt_ids"] for r in rows], max_new_tokens=cfg.max_new_tokens,
                              do_sample=cfg.temperature > 0, temperature=cfg.temperature or 1.0, top_p=cfg.top_p,
                              seeds=[derive_seed(seed, "multi_turn", r["item_id"]) for r in rows],
                              batch_size=cfg.batch_size)
        judged = [(r, o) for r, o in zip(rows, outs) if r["aliases"]]
        succ, refu = judge_outputs([o for _, o in judged], [r["aliases"] for r, _ in judged], cfg.refusal_variant)
        n = max(1, len(judged))
        metrics = {**rate_metrics(succ, "asr"), "refusal_rate": sum(refu) / n, "n_items": len(rows),
                   "n_judged": len(judged), "n_ends_on_assistant": sum(r["ends_on_assistant"] for r in rows),
                   "n_truncated": sum(r["truncated"] for r in rows)}
        # items without a known answer (real multi-turn data): weak compliance proxy, reported separately
        unjudged = [(r, o) for r, o in zip(rows, outs) if not r["aliases"]]
        proxy = [compliance_proxy(o, cfg.refusal_variant) for _, o in unjudged]
        if unjudged:
            metrics.update({"compliance_proxy_rate": sum(proxy) / len(proxy), "n_compliance_proxy": len(proxy)})
        user_final = [s for s, (r, _) in zip(succ, judged) if not r["ends_on_assistant"]]
        if user_final and len(user_final) < len(judged):
            metrics["asr_user_final"] = sum(user_final) / len(user_final)
        records = [item_record(r["item_id"], tokenizer.decode(r["prompt_ids"]), o, s,
                               judge_raw={"answer_match": s, "refusal": f},
                               meta={"n_turns": r["n_turns"], "ends_on_assistant": r["ends_on_assistant"],
                                     "truncated": r["truncated"]})
                   for (r, o), s, f in zip(judged, succ, refu)]
        records += [item_record(r["item_id"], tokenizer.decode(r["prompt_ids"]), o, p,
                                judge_raw={"compliance_proxy": p}, metric="compliance_proxy",
                                meta={"n_turns": r["n_turns"], "ends_on_assistant": r["ends_on_assistant"],
                                      "truncated": r["truncated"]})
                    for (r, o), p in zip(unjudged, proxy)]
        return metrics, records
