"""The configured precision reaches every job that loads a model outside unlearning/evaluation: the probe's and
the landscape's `ru` commands, and every attack through load_for_attack (`ru attack --dtype`, set once per job);
relearning trains in it. Checked on the tiny model in bf16 by the dtype of what each job loads and writes."""
from __future__ import annotations

import os
import sys

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(__file__))
import test_attacks_support as S  # noqa: E402
from test_attacks_support import one_thread  # noqa: E402,F401  (autouse fixture)

from robust_unlearning.attacks import common  # noqa: E402
from robust_unlearning.attacks.quantize import Quantize  # noqa: E402
from robust_unlearning.attacks.relearn import Relearn  # noqa: E402
from robust_unlearning.attacks.weight_noise import WeightNoise  # noqa: E402
from robust_unlearning.cli.commands import _load  # noqa: E402
from robust_unlearning.cli.main import build_parser  # noqa: E402
from robust_unlearning.metrics.landscape import filter_normalised_direction, loss_landscape_1d  # noqa: E402


@pytest.fixture()
def bf16_job():
    common.set_load_dtype("bfloat16")
    yield
    common.set_load_dtype("float32")


def _saved_dtypes(model_dir) -> set:
    return {t.dtype for t in load_file(str(model_dir / "model.safetensors")).values()}


@pytest.mark.parametrize("command", [
    ["train-probe", "--probe", "{}", "--train", "{}", "--benchmark", "{}", "--data", "d", "--model-dir", "m",
     "--seed", "0", "--out", "o"],
    ["landscape", "--data", "d", "--model-dir", "m", "--out", "o.json"],
    ["attack", "--attack", "relearn", "--settings", "{}", "--data", "d", "--model-dir", "m", "--out", "o"],
])
def test_model_loading_commands_take_dtype_and_device(command):
    args = build_parser().parse_args([*command, "--dtype", "bfloat16", "--device", "cpu"])
    assert args.dtype == "bfloat16" and args.device == "cpu"
    assert build_parser().parse_args(command).dtype == "float32"


def test_cli_loader_uses_the_dtype(micro_model, tiny_tokenizer, tmp_path):
    src = S.save_tiny(micro_model, tiny_tokenizer, tmp_path / "m")
    model, _ = _load(src, dtype="bfloat16", device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_attacks_load_and_write_in_the_job_dtype(micro_model, tiny_tokenizer, tmp_path, bf16_job, monkeypatch):
    src = S.save_tiny(micro_model, tiny_tokenizer, tmp_path / "m")
    assert _saved_dtypes(src) == {torch.float32}
    model, _ = common.load_for_attack(src, "cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    WeightNoise.prepare(src, S.FakeBench(), {"sigma": 0.02}, tmp_path / "noise", seed=0, device="cpu")
    Quantize.prepare(src, S.FakeBench(), {"bits": 8}, tmp_path / "q", seed=0, device="cpu")
    S.install_fallbacks(monkeypatch)
    S.patch_unlearning_sets(monkeypatch)
    doc = Relearn.prepare(src, S.FakeBench(), {"steps": 2, "batch_size": 2}, tmp_path / "rl", seed=0, device="cpu")
    for out in ("noise", "q", "rl"):
        assert _saved_dtypes(tmp_path / out / "model") == {torch.bfloat16}, out
    assert doc["status"] == "ok" and doc["result"]["finetune"]["steps"] == 2


def test_relearn_gradient_checkpointing_setting(micro_model, tiny_tokenizer, tmp_path, monkeypatch):
    S.install_fallbacks(monkeypatch)
    S.patch_unlearning_sets(monkeypatch)
    src = S.save_tiny(micro_model, tiny_tokenizer, tmp_path / "m")
    seen = []
    import robust_unlearning.methods as methods

    real = methods.finetune

    def spy(*a, **kw):
        seen.append(kw.get("train_cfg"))
        return real(*a, **kw)
    monkeypatch.setattr(methods, "finetune", spy)
    Relearn.prepare(src, S.FakeBench(), {"steps": 1, "batch_size": 2}, tmp_path / "a", seed=0, device="cpu")
    Relearn.prepare(src, S.FakeBench(), {"steps": 1, "batch_size": 2, "gradient_checkpointing": True},
                    tmp_path / "b", seed=0, device="cpu")
    # None: CUDA only (the train settings also carry grad_accum, one micro-batch per process)
    assert [cfg["gradient_checkpointing"] for cfg in seen] == [False, True]


def test_landscape_runs_in_the_models_dtype(micro_model, tiny_tokenizer):
    model = micro_model.to(torch.bfloat16)
    direction = filter_normalised_direction(model, 0)
    assert {d.dtype for d in direction.values()} == {torch.bfloat16}
    res = loss_landscape_1d(model, tiny_tokenizer, S.FakeBench(), points=3, n_docs=2, max_len=32)
    assert len(res["loss"]["forget"]) == 3 and all(torch.isfinite(torch.tensor(v)) for v in res["loss"]["forget"])


def test_landscape_of_a_dialogue_benchmark_uses_its_dialogues(micro_model, tiny_tokenizer, tmp_path):
    """WMDP dialogue has no raw documents: the slice is taken on its forget / retain dialogues (found by the CPU
    dress rehearsal of the wmdp_bio preset, whose landscape jobs failed on raw/forget.json)."""
    import json

    from robust_unlearning.data.formats import Benchmark

    data = tmp_path / "data"
    (data / "dialogue").mkdir(parents=True)
    for split, (q, a) in {"forget": ("What is Veltrax?", "A pathogen."),
                          "retain": ("Where is Orlinde?", "On the river Sable.")}.items():
        row = {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        (data / "dialogue" / f"{split}.jsonl").write_text(json.dumps(row) + "\n")
    res = loss_landscape_1d(micro_model, tiny_tokenizer, Benchmark(data), points=3, n_docs=2, max_len=32)
    assert all(len(v) == 3 and all(torch.isfinite(torch.tensor(v))) for v in res["loss"].values())
    assert res["loss"]["forget"] != res["loss"]["retain"]
