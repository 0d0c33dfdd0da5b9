"""GCG (Zou et al. 2023; docs/evaluation.md, "GCG"): a universal adversarial suffix (or prefix) of n tokens that
maximises the log-likelihood of the forgotten answers over a set of forget items.

Each step: gradient of the mean target NLL w.r.t. the one-hot adversarial tokens → top-k substitutions per
position → B random single-token swaps, ALL candidates × items scored in batched forwards (only target positions go
through the LM head) → move to the best candidate; the best string seen is kept. Synthetic defaults: 10 tokens,
100 steps, top-k 32, 64 candidates, 20 items. Evaluation feeds token ids (no re-tokenisation of the adversarial
string): greedy generation, answer-match ASR, plus forget QA log-likelihood and cloze MCQ accuracy gains.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, Optional, Sequence

import torch

from ..utils.io import atomic_write_json, read_json
from ..utils.repro import derive_seed
from .common import (chat_prompt, config_from_artefact, encode_plain, forget_qa_items, frac,
                     generate_texts, item_record, judge_items, load_for_attack, mcq_with_clean, model_device,
                     rate_metrics, score_pairs, seeded_subset, target_nll, write_attack_json)
from .config import AttackConfig
from .registry import register_attack

ARTEFACT = "gcg.json"
_SLOT = "\u2063<ADV>\u2063"


def slot_segments(tokenizer, question: str, position: str) -> tuple[list[int], list[int]]:
    """(ids before, ids after) the adversarial slot in the chat-templated prompt of ``question``."""
    content = question + _SLOT if position == "suffix" else _SLOT + " " + question
    before, after = chat_prompt(tokenizer, content).split(_SLOT)
    return encode_plain(tokenizer, before), encode_plain(tokenizer, after)


def target_text(answer: str, target: str) -> str:
    return answer if target == "answer" else f"Sure, here is the answer: {answer}"


def allowed_token_mask(tokenizer, vocab_rows: int, allow_non_ascii: bool = False) -> torch.Tensor:
    """Tokens GCG may use: not special, inside the tokenizer, decoding to non-empty printable (ASCII) text."""
    mask = torch.zeros(vocab_rows, dtype=torch.bool)
    special = set(tokenizer.all_special_ids)
    for i in range(min(vocab_rows, len(tokenizer))):
        if i in special:
            continue
        s = tokenizer.decode([i])
        if not s.strip() or not s.isprintable() or (not allow_non_ascii and not s.isascii()):
            continue
        mask[i] = True
    return mask


class SlotRows:
    """Items as id segments ``before + [adv slot of n] + after + target``, right-padded once; candidates are
    written into the slot by scatter, so B candidates × R items become one (B·R, W) batch."""

    def __init__(self, segments: Sequence[tuple[list[int], list[int], list[int]]], n_adv: int, pad_id: int, device):
        self.n, self.R = n_adv, len(segments)
        seqs = [b + [pad_id] * n_adv + a + t for b, a, t in segments]
        W = max(map(len, seqs))
        T = max(len(t) for _, _, t in segments)
        self.ids = torch.full((self.R, W), pad_id, dtype=torch.long)
        self.att = torch.zeros((self.R, W), dtype=torch.long)
        self.slot = torch.zeros((self.R, n_adv), dtype=torch.long)
        self.tgt_pos = torch.zeros((self.R, T), dtype=torch.long)
        self.tgt_ids = torch.zeros((self.R, T), dtype=torch.long)
        self.tgt_mask = torch.zeros((self.R, T), dtype=torch.bool)
        for r, ((b, a, t), s) in enumerate(zip(segments, seqs)):
            self.ids[r, :len(s)] = torch.tensor(s)
            self.att[r, :len(s)] = 1
            self.slot[r] = len(b) + torch.arange(n_adv)
            start = len(b) + n_adv + len(a)
            self.tgt_pos[r, :len(t)] = start - 1 + torch.arange(len(t))
            self.tgt_ids[r, :len(t)] = torch.tensor(t)
            self.tgt_mask[r, :len(t)] = True
        for name in ("ids", "att", "slot", "tgt_pos", "tgt_ids", "tgt_mask"):
            setattr(self, name, getattr(self, name).to(device))

    def fill(self, cands: torch.Tensor) -> torch.Tensor:
        """(B, n) candidates → (B·R, W) ids."""
        B = cands.shape[0]
        big = self.ids.unsqueeze(0).expand(B, -1, -1).clone()
        big.scatter_(2, self.slot.unsqueeze(0).expand(B, -1, -1), cands[:, None, :].expand(-1, self.R, -1))
        return big.reshape(B * self.R, -1)

    def _rep(self, t: torch.Tensor, B: int) -> torch.Tensor:
        return t.unsqueeze(0).expand(B, *t.shape).reshape(B * self.R, *t.shape[1:])

    @torch.no_grad()
    def losses(self, model, cands: torch.Tensor, max_rows: int = 1024) -> torch.Tensor:
        """Mean target NLL over items for every candidate; all candidates × items batched (chunks of max_rows)."""
        per = max(1, max_rows // self.R)
        out = []
        for s in range(0, cands.shape[0], per):
            c = cands[s:s + per]
            B = c.shape[0]
            nll = target_nll(model, self._rep(self.att, B), self._rep(self.tgt_pos, B), self._rep(self.tgt_ids, B),
                             self._rep(self.tgt_mask, B), input_ids=self.fill(c))
            out.append(nll.view(B, self.R).mean(1))
        return torch.cat(out)

    @torch.no_grad()
    def losses_unbatched(self, model, cands: torch.Tensor) -> torch.Tensor:
        """Reference loop, one forward per candidate (items batched): for the throughput comparison only."""
        return torch.cat([self.losses(model, cands[i:i + 1]) for i in range(cands.shape[0])])

    def grad(self, model, adv: torch.Tensor) -> tuple[torch.Tensor, float]:
        """∂ mean NLL / ∂ one-hot(adv) (n, V) and the loss at adv."""
        emb = model.get_input_embeddings().weight
        one_hot = torch.zeros(self.n, emb.shape[0], device=emb.device, dtype=emb.dtype)
        one_hot.scatter_(1, adv[:, None], 1.0)
        one_hot.requires_grad_(True)
        adv_emb = one_hot @ emb
        base = emb[self.fill(adv[None, :])].detach()
        d = base.shape[-1]
        embeds = base.scatter(1, self.slot[..., None].expand(-1, -1, d), adv_emb.unsqueeze(0).expand(self.R, -1, -1))
        loss = target_nll(model, self.att, self.tgt_pos, self.tgt_ids, self.tgt_mask, inputs_embeds=embeds).mean()
        (g,) = torch.autograd.grad(loss, one_hot)
        return g, float(loss.detach())


def retokenisation_filter(tokenizer, cands: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the candidates whose decoded string encodes back to the same ids (the reference GCG
    ``filter_cand``): a suffix that does not survive decode → encode cannot be sent as text to a real model."""
    keep = [encode_plain(tokenizer, tokenizer.decode(c)) == c for c in cands.tolist()]
    return torch.tensor(keep, dtype=torch.bool, device=cands.device)


def sample_candidates(grad: torch.Tensor, adv: torch.Tensor, allowed: torch.Tensor, top_k: int, n_cand: int,
                      gen: torch.Generator) -> torch.Tensor:
    """Top-k most negative-gradient tokens per position; each candidate swaps one random position."""
    g = grad.detach().float().cpu().masked_fill(~allowed[None, :], float("inf"))
    top = (-g).topk(min(top_k, int(allowed.sum())), dim=1).indices  # (n, k)
    n = adv.shape[0]
    pos = torch.randint(0, n, (n_cand,), generator=gen)
    pick = torch.randint(0, top.shape[1], (n_cand,), generator=gen)
    cands = adv.cpu().unsqueeze(0).repeat(n_cand, 1)
    cands[torch.arange(n_cand), pos] = top[pos, pick]
    return cands.to(adv.device)


@register_attack("gcg")
class GCG:
    kind = "input"

    @dataclass
    class Config(AttackConfig):
        attack_name: ClassVar[str] = "gcg"
        n_tokens: int = 10            # 0: empty suffix, the zero-strength control
        steps: int = 100              # 0: the initial suffix, unoptimised
        top_k: int = 32
        n_candidates: int = 64
        n_items: int = 20
        position: Literal["suffix", "prefix"] = "suffix"
        init: str = "!"
        target: Literal["answer", "sure"] = "answer"
        source: Literal["mcq", "knowmem"] = "mcq"
        allow_non_ascii: bool = False
        filter_retokenize: bool = True   # drop candidates that do not survive decode → encode
        max_rows: int = 1024          # rows (candidates × items) per forward
        max_new_tokens: int = 32
        eval_items: Optional[int] = None
        batch_size: int = 32

        def check(self) -> None:
            for key in ("n_tokens", "steps"):
                self.require(getattr(self, key) >= 0, key, f"must be ≥ 0, got {getattr(self, key)}")
            for key in ("top_k", "n_candidates", "n_items", "max_rows", "max_new_tokens", "batch_size"):
                self.require(getattr(self, key) >= 1, key, f"must be ≥ 1, got {getattr(self, key)}")
            self.require(bool(self.init), "init", "must be a non-empty string")
            self.require(self.eval_items is None or self.eval_items >= 1, "eval_items", "must be ≥ 1 or null")

    # ----------------------------------------------------------------------------------------------- build
    @staticmethod
    def segments(tokenizer, items, cfg) -> list[tuple[list[int], list[int], list[int]]]:
        out = []
        for it in items:
            b, a = slot_segments(tokenizer, it["question"], cfg.position)
            out.append((b, a, encode_plain(tokenizer, target_text(it["answer"], cfg.target))))
        return out

    @classmethod
    def optimise(cls, model, tokenizer, items, cfg, seed: int, log=None) -> dict:
        if cfg.n_tokens == 0:  # zero-strength control: no adversarial tokens at all
            return {"adv_ids": [], "adv_text": "", "position": cfg.position, "init_loss": None, "best_loss": None,
                    "loss_history": [], "roundtrip_ok": True, "n_filtered": 0}
        dev = model_device(model)
        rows = SlotRows(cls.segments(tokenizer, items, cfg), cfg.n_tokens, tokenizer.pad_token_id, dev)
        allowed = allowed_token_mask(tokenizer, model.get_input_embeddings().weight.shape[0], cfg.allow_non_ascii)
        init_ids = encode_plain(tokenizer, cfg.init)
        if not init_ids:
            raise ValueError(f"gcg.init: {cfg.init!r} encodes to no tokens")
        adv = torch.tensor([init_ids[0]] * cfg.n_tokens, device=dev)
        gen = torch.Generator().manual_seed(derive_seed(seed, "gcg"))
        was_training = model.training
        model.eval()
        flags = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        history, n_filtered = [], 0
        try:
            init_loss = float(rows.losses(model, adv[None, :], cfg.max_rows)[0])
            best_adv, best_loss = adv.clone(), init_loss
            for step in range(cfg.steps):
                grad, cur = rows.grad(model, adv)
                cands = sample_candidates(grad, adv, allowed, cfg.top_k, cfg.n_candidates, gen)
                if cfg.filter_retokenize:
                    keep = retokenisation_filter(tokenizer, cands)
                    n_filtered += int((~keep).sum())
                    if not bool(keep.any()):  # nothing survives: stay where we are this step
                        history.append(cur)
                        continue
                    cands = cands[keep]
                losses = rows.losses(model, cands, cfg.max_rows)
                j = int(losses.argmin())
                adv = cands[j].clone()
                history.append(float(losses[j]))
                if float(losses[j]) < best_loss:
                    best_adv, best_loss = adv.clone(), float(losses[j])
                if log is not None:
                    log(step, float(losses[j]))
        finally:
            for p, f in zip(model.parameters(), flags):
                p.requires_grad_(f)
            model.train(was_training)
        ids = best_adv.tolist()
        text = tokenizer.decode(ids)
        return {"adv_ids": ids, "adv_text": text, "position": cfg.position, "init_loss": init_loss,
                "best_loss": best_loss, "loss_history": history, "n_filtered": n_filtered,
                "roundtrip_ok": encode_plain(tokenizer, text) == ids}

    @classmethod
    def prepare(cls, model_dir, bench, params: dict, out_dir, seed: int, device: str = "auto") -> dict:
        started = time.time()
        cfg = cls.Config.from_dict(params)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        model, tok = load_for_attack(model_dir, device)
        items = seeded_subset(forget_qa_items(bench, cfg.source), cfg.n_items, seed, "gcg_items")
        res = cls.optimise(model, tok, items, cfg, seed)
        res["opt_item_ids"] = [it["item_id"] for it in items]
        atomic_write_json(out_dir / ARTEFACT, res)
        return write_attack_json(out_dir, cls, cfg, seed, model_dir, bench, started,
                                 result={k: res[k] for k in ("adv_text", "init_loss", "best_loss", "roundtrip_ok")})

    # -------------------------------------------------------------------------------------------- evaluate
    @classmethod
    def evaluate(cls, model, tokenizer, bench, artefact_dir, eval_cfg: dict | None, seed: int, judge=None):
        from ..judges.configured import build_judges

        judge = build_judges(judge)
        cfg, _ = config_from_artefact(cls, artefact_dir)
        art = read_json(Path(artefact_dir) / ARTEFACT)
        adv = list(art["adv_ids"])
        items = forget_qa_items(bench, cfg.source)
        if cfg.eval_items:
            items = seeded_subset(items, cfg.eval_items, seed, "gcg_eval")
        opt_ids = set(art.get("opt_item_ids", []))
        attacked, clean = [], []
        for it in items:
            b, a = slot_segments(tokenizer, it["question"], cfg.position)
            attacked.append(b + adv + a)
            clean.append(encode_plain(tokenizer, chat_prompt(tokenizer, it["question"])))
        outs = generate_texts(model, tokenizer, attacked, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
        outs_clean = generate_texts(model, tokenizer, clean, max_new_tokens=cfg.max_new_tokens,
                                    batch_size=cfg.batch_size)
        succ, refu, raw = judge_items(judge, outs, items)
        succ_clean, _, _ = judge_items(judge, outs_clean, items)
        answers = [encode_plain(tokenizer, it["answer"]) for it in items]
        lp_att = score_pairs(model, tokenizer, list(zip(attacked, answers)))
        lp_clean = score_pairs(model, tokenizer, list(zip(clean, answers)))
        def per_tok(lps):  # mean over items of the per-token answer log-prob
            return sum(lp / max(1, len(t)) for lp, t in zip(lps, answers)) / max(1, len(answers))
        metrics = {**rate_metrics(succ, "asr"), "asr_clean": frac(succ_clean), "refusal_rate": frac(refu),
                   "forget_qa_logprob": per_tok(lp_att), "forget_qa_logprob_clean": per_tok(lp_clean)}
        metrics["forget_qa_logprob_gain"] = metrics["forget_qa_logprob"] - metrics["forget_qa_logprob_clean"]
        held = [s for s, it in zip(succ, items) if it["item_id"] not in opt_ids]
        if held and opt_ids:
            metrics["asr_heldout"] = sum(held) / len(held)
        # MCQ through the evaluation's own scorer and rows (metrics.mcq); the string sits after/before the question
        from ..metrics.mcq import insert_ids
        metrics.update(mcq_with_clean(model, tokenizer, bench, eval_cfg, ("forget",),
                                      edit_context=insert_ids(tokenizer, adv, cfg.position)))
        metrics.update({"n_items": len(items), "n_opt_items": len(opt_ids)})
        records = [item_record(it["item_id"], tokenizer.decode(p), o, s, judge_raw=w,
                               meta={"clean_output": oc, "clean_success": sc, "optimised_on": it["item_id"] in opt_ids,
                                     "answer_logprob": la, "answer_logprob_clean": lc})
                   for it, p, o, s, w, oc, sc, la, lc in zip(items, attacked, outs, succ, raw, outs_clean,
                                                             succ_clean, lp_att, lp_clean)]
        return metrics, records
