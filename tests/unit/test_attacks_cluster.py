"""Model attacks on a cluster: attack.json records the files of the (temporary) attacked copy."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import test_attacks_support as S  # noqa: E402
from test_attacks_support import one_thread  # noqa: E402,F401  (autouse fixture)

from robust_unlearning.attacks.weight_noise import WeightNoise  # noqa: E402
from robust_unlearning.utils.io import read_json, sha256_file  # noqa: E402


def test_attack_json_lists_the_attacked_copys_files(micro_model, tiny_tokenizer, tmp_path):
    src = S.save_tiny(micro_model, tiny_tokenizer, tmp_path / "base")
    WeightNoise.prepare(src, S.FakeBench(), {"sigma": 0.02}, tmp_path / "a", seed=0, device="cpu")
    files = read_json(tmp_path / "a" / "attack.json")["model_files"]
    weights = tmp_path / "a" / "model" / "model.safetensors"
    assert files["model.safetensors"] == {"size": weights.stat().st_size, "sha256": sha256_file(weights)}
    assert "config.json" in files
