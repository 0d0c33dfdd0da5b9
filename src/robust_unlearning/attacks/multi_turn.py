"""Multi-turn attack (docs/evaluation.md, "Multi-turn"): whole conversations through the chat template (generation prompt on),
left-truncated to the context, sampled (T = 1.0, top-p 1.0) seeded per item; on the synthetic benchmark the
benign warm-up turns end with a user turn asking a forgotten attribute, judged by answer-match.
Conversations that end on an assistant turn are kept as is and flagged (130 of 224 in the reference file).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

from ..utils.io import read_jsonl
from .common import (ItemsAttack, aliases_of, chat_prompt, compliance_proxy, config_from_artefact, encode_plain,
                     frac, item_id_of, item_record, judge_items, rate_metrics, sampled_texts)
from .config import SamplingConfig
from .registry import register_attack


@register_attack("multi_turn")
class MultiTurn(ItemsAttack):
    kind = "input"
    ITEMS_FILE = "multi_turn_items.jsonl"

    @dataclass
    class Config(SamplingConfig):
        attack_name: ClassVar[str] = "multi_turn"
        temperature: float = 1.0
        max_prompt_tokens: Optional[int] = None   # None: the model context minus max_new_tokens (in generate)
        max_items: Optional[int] = None

        def check(self) -> None:
            super().check()
            self.require_min(1, "max_prompt_tokens", "max_items")

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
                         "ends_on_assistant": msgs[-1]["role"] == "assistant", "truncated": truncated,
                         "question": next((m["content"] for m in reversed(msgs) if m["role"] == "user"), "")})
        return rows[: cfg.max_items] if cfg.max_items else rows

    @classmethod
    def item_summary(cls, rows: list[dict]) -> dict:
        return {"n_items": len(rows), "n_ends_on_assistant": sum(r["ends_on_assistant"] for r in rows),
                "n_truncated": sum(r["truncated"] for r in rows)}

    @classmethod
    def evaluate(cls, model, tokenizer, bench, artefact_dir, eval_cfg: dict | None, seed: int, judge=None):
        from ..judges.configured import build_judges

        judge = build_judges(judge)
        cfg, _ = config_from_artefact(cls, artefact_dir)
        rows = read_jsonl(Path(artefact_dir) / cls.ITEMS_FILE)
        outs = sampled_texts(model, tokenizer, [r["prompt_ids"] for r in rows], cfg, seed, "multi_turn",
                             [r["item_id"] for r in rows])
        # items without a known answer: the configured judge if it can decide them, else the weak compliance proxy
        by_judge = [(r, o) for r, o in zip(rows, outs) if r["aliases"] or judge.decides_without_answer]
        succ, refu, raw = judge_items(judge, [o for _, o in by_judge], [r for r, _ in by_judge], cfg.refusal_variant)
        metrics = {**rate_metrics(succ, "asr"), "refusal_rate": frac(refu), "n_items": len(rows),
                   "n_judged": len(by_judge), "n_ends_on_assistant": sum(r["ends_on_assistant"] for r in rows),
                   "n_truncated": sum(r["truncated"] for r in rows)}
        unjudged = [(r, o) for r, o in zip(rows, outs) if not (r["aliases"] or judge.decides_without_answer)]
        proxy = [compliance_proxy(o, cfg.refusal_variant) for _, o in unjudged]
        if unjudged:
            metrics.update({"compliance_proxy_rate": sum(proxy) / len(proxy), "n_compliance_proxy": len(proxy)})
        user_final = [s for s, (r, _) in zip(succ, by_judge) if not r["ends_on_assistant"]]
        if user_final and len(user_final) < len(by_judge):
            metrics["asr_user_final"] = sum(user_final) / len(user_final)

        def meta(r):
            return {"n_turns": r["n_turns"], "ends_on_assistant": r["ends_on_assistant"], "truncated": r["truncated"]}

        records = [item_record(r["item_id"], tokenizer.decode(r["prompt_ids"]), o, s, judge_raw=w, meta=meta(r))
                   for (r, o), s, w in zip(by_judge, succ, raw)]
        records += [item_record(r["item_id"], tokenizer.decode(r["prompt_ids"]), o, p,
                                judge_raw={"compliance_proxy": p}, metric="compliance_proxy", meta=meta(r))
                    for (r, o), p in zip(unjudged, proxy)]
        return metrics, records
