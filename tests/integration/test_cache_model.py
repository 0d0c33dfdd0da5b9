"""`ru cache-model` for a local pretrained model folder: copied once, tokenizer given a pad token, loadable offline."""
from __future__ import annotations

import json

import pytest

from robust_unlearning.cli.main import main
from robust_unlearning.models.io import ModelLoadError, load_model, load_tokenizer, save_model


def test_local_model_is_cached_with_a_pad_token(tmp_path, micro_model, tiny_tokenizer, capsys):
    src = tmp_path / "pretrained"
    save_model(micro_model, tiny_tokenizer, src)
    # a hub-style checkpoint whose tokenizer has no pad token (as Llama-2's), and no manifest of ours
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    cfg.pop("pad_token", None)
    (src / "tokenizer_config.json").write_text(json.dumps(cfg))
    (src / "special_tokens_map.json").unlink(missing_ok=True)
    (src / "weights_manifest.json").unlink()
    out = tmp_path / "base"
    model_cfg = {"source": "local", "name_or_path": str(src), "pad_token": None}
    assert main(["cache-model", "--model", json.dumps(model_cfg), "--data", str(tmp_path), "--out", str(out)]) == 1
    assert "model.pad_token" in capsys.readouterr().err
    assert not out.exists(), "a failed cache must leave nothing behind"
    model_cfg["pad_token"] = "eos"
    assert main(["cache-model", "--model", json.dumps(model_cfg), "--data", str(tmp_path), "--out", str(out)]) == 0
    tok = load_tokenizer(out)
    assert tok.pad_token_id == tok.eos_token_id
    model = load_model(out)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in micro_model.parameters())


def test_missing_local_model_names_the_path(tmp_path):
    with pytest.raises(ModelLoadError, match="nowhere"):
        from robust_unlearning.models.cache import cache_model
        cache_model({"source": "local", "name_or_path": str(tmp_path / "nowhere")}, tmp_path, tmp_path / "out")



def test_a_hub_model_in_the_hf_cache_is_cached_offline(tmp_path):
    """`model.source: hub` with HF_HUB_OFFLINE=1 and the repo already in the Hugging Face cache (fetched on a login
    node, or the rehearsal's fixture cache): snapshot_download(local_dir=<empty folder>) refused offline, so a cached
    model could never be used; the cached snapshot at the pinned commit is copied instead. A real `ru` process, the
    cache in the hub's own layout (tests/fixtures/make_hub_models.py)."""
    import os
    import subprocess
    import sys

    from fixtures.make_hub_models import build

    repo, commit = "mistralai/Ministral-8B-Instruct-2410", "2f494a194c5b980dfb9772cb92d26cbb671fce5a"
    build(tmp_path / "hf", {repo: [commit]})
    out = tmp_path / "base"
    model_cfg = {"source": "hub", "name_or_path": repo, "revision": commit, "pad_token": "eos"}
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "robust_unlearning.cli.main", "cache-model", "--model",
                          json.dumps(model_cfg), "--data", str(tmp_path), "--out", str(out)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    model, tok = load_model(out), load_tokenizer(out)
    assert type(model).__name__ == "MistralForCausalLM"
    assert tok.pad_token_id == tok.eos_token_id and "[INST]" in tok.chat_template
    assert json.loads((out / "source.json").read_text())["resolved_revision"] == commit
