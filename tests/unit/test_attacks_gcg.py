"""GCG: batched candidate scoring equals the per-candidate loop; the optimised string beats random ones."""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import test_attacks_support as S  # noqa: E402
from test_attacks_support import one_thread  # noqa: E402,F401  (autouse fixture)

from robust_unlearning.attacks import gcg as G  # noqa: E402
from robust_unlearning.attacks.common import forget_qa_items  # noqa: E402
from robust_unlearning.utils.io import read_json  # noqa: E402


def _rows(model, tok, n_adv=3):
    cfg = G.GCG.Config.from_dict({"n_tokens": n_adv})
    items = forget_qa_items(S.FakeBench(), "mcq")
    return G.SlotRows(G.GCG.segments(tok, items, cfg), n_adv, tok.pad_token_id, "cpu"), items


def test_slot_rows_match_plain_forward(micro_model, tiny_tokenizer):
    rows, items = _rows(micro_model, tiny_tokenizer)
    adv = torch.tensor([5, 6, 7])
    cands = torch.tensor([[5, 6, 7], [9, 9, 9], [11, 12, 13]])
    batched = rows.losses(micro_model, cands, max_rows=5)          # forces several chunks
    assert torch.allclose(batched, rows.losses_unbatched(micro_model, cands), atol=1e-5)
    # hand check of item 0 / candidate 0 against an unpadded forward
    b, a = G.slot_segments(tiny_tokenizer, items[0]["question"], "suffix")
    t = tiny_tokenizer(items[0]["answer"], add_special_tokens=False)["input_ids"]
    seq = torch.tensor([b + adv.tolist() + a + t])
    with torch.no_grad():
        logp = torch.log_softmax(micro_model(input_ids=seq).logits[0], -1)
    start = len(b) + 3 + len(a)
    nll0 = -torch.stack([logp[start - 1 + j, tok] for j, tok in enumerate(t)]).mean()
    per_item = G.target_nll(micro_model, rows.att, rows.tgt_pos, rows.tgt_ids, rows.tgt_mask,
                            input_ids=rows.fill(adv[None, :]))
    assert torch.allclose(per_item[0], nll0, atol=1e-5)
    g, loss = rows.grad(micro_model, adv)
    assert g.shape == (3, micro_model.get_input_embeddings().weight.shape[0])
    assert abs(loss - float(per_item.detach().mean())) < 1e-5


def test_gcg_beats_random_prefix(micro_model, tiny_tokenizer, tmp_path, monkeypatch):
    S.install_fallbacks(monkeypatch)
    src = S.save_tiny(micro_model, tiny_tokenizer, tmp_path / "m")
    params = {"n_tokens": 4, "steps": 12, "top_k": 16, "n_candidates": 32, "n_items": 3, "max_new_tokens": 4}
    G.GCG.prepare(src, S.FakeBench(), params, tmp_path / "a", seed=0, device="cpu")
    art = read_json(tmp_path / "a" / G.ARTEFACT)
    assert len(art["adv_ids"]) == 4 and art["best_loss"] < art["init_loss"]
    cfg = G.GCG.Config.from_dict(params)
    items = [it for it in forget_qa_items(S.FakeBench(), "mcq") if it["item_id"] in art["opt_item_ids"]]
    rows = G.SlotRows(G.GCG.segments(tiny_tokenizer, items, cfg), 4, tiny_tokenizer.pad_token_id, "cpu")
    allowed = G.allowed_token_mask(tiny_tokenizer, micro_model.get_input_embeddings().weight.shape[0])
    ids = allowed.nonzero()[:, 0]
    gen = torch.Generator().manual_seed(1)
    rand = ids[torch.randint(0, len(ids), (16, 4), generator=gen)]
    rand_loss = rows.losses(micro_model, rand)
    best = rows.losses(micro_model, torch.tensor([art["adv_ids"]]))[0]
    assert abs(float(best) - art["best_loss"]) < 1e-4
    assert best < rand_loss.min()                                   # higher target log-likelihood than any random one
    m, items_out = G.GCG.evaluate(micro_model, tiny_tokenizer, S.FakeBench(), tmp_path / "a", {}, seed=0)
    assert {"asr", "asr_ci_low", "asr_ci_high", "refusal_rate", "forget_qa_logprob_gain", "forget_mcq_acc",
            "forget_mcq_acc_clean"} <= set(m)
    assert m["n_items"] == 4 and len(items_out) == 4
