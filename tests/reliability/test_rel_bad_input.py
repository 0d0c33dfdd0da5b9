"""Bad input, table-driven: every case must fail with a message that NAMES THE CULPRIT (config key, file and
line, tokenizer, model path). Library entry points are called directly (fast); three cases go through the real
front doors (`ru validate-config`, `snakemake -n`, `ru unlearn`) to show the message reaches the user."""
from __future__ import annotations

import copy
import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml

import relkit
from robust_unlearning.config import ConfigValidationError, validate_config
from robust_unlearning.data.collate import ChatTemplateError
from robust_unlearning.data.formats import Benchmark, BenchmarkError
from robust_unlearning.data.unlearning_sets import build_examples, build_mixture_examples
from robust_unlearning.models.io import ModelLoadError, load_model, load_tokenizer, save_model

pytestmark = [pytest.mark.reliability]


# ------------------------------------------------------------------------------------------------ config
def _set(cfg: dict, dotted: str, value) -> dict:
    *parents, last = dotted.split(".")
    node = cfg
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return cfg


def _del(cfg: dict, dotted: str) -> dict:
    *parents, last = dotted.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    del node[last]
    return cfg


CONFIG_CASES = [
    # (id, mutation of the miniature config, the key the message must name)
    ("unknown key, top level", lambda c: _set(c, "colour", "red"), "colour"),
    ("unknown key, benchmark", lambda c: _set(c, "benchmark.colour", 1), "benchmark.colour"),
    ("unknown key, model.train", lambda c: _set(c, "model.train.colour", 1), "model.train.colour"),
    ("unknown key, model.finetune", lambda c: _set(c, "model.finetune", {"colour": 1}), "model.finetune.colour"),
    ("unknown key, unlearning", lambda c: _set(c, "unlearning.colour", 1), "unlearning.colour"),
    ("unknown key, unlearning.train", lambda c: _set(c, "unlearning.train.colour", 1), "unlearning.train.colour"),
    ("unknown key, method", lambda c: _set(c, "unlearning.methods.npo.colour", [1]), "unlearning.methods.npo.colour"),
    ("unknown key, attack", lambda c: _set(c, "attacks.relearn.colour", 1), "attacks.relearn.colour"),
    ("unknown key, attacks", lambda c: _set(c, "attacks.colour", 1), "attacks.colour"),
    ("unknown key, evaluation", lambda c: _set(c, "evaluation.colour", 1), "evaluation.colour"),
    ("unknown key, judges", lambda c: _set(c, "judges.colour", 1), "judges.colour"),
    ("unknown key, report", lambda c: _set(c, "report.colour", 1), "report.colour"),
    ("unknown key, probe", lambda c: _set(c, "probe.colour", 1), "probe.colour"),
    ("wrong type, integer", lambda c: _set(c, "model.train.epochs", "many"), "model.train.epochs"),
    ("wrong type, list", lambda c: _set(c, "unlearning.seeds", "0"), "unlearning.seeds"),
    ("wrong type, grid value", lambda c: _set(c, "unlearning.methods.npo.lr", ["fast"]), "unlearning.methods.npo.lr"),
    ("negative lr", lambda c: _set(c, "unlearning.methods.npo.lr", [-1e-3]), "unlearning.methods.npo.lr"),
    ("negative model lr", lambda c: _set(c, "model.train.lr", -3e-3), "model.train.lr"),
    ("rho < 0 (SAM-NPO)", lambda c: _set(c, "unlearning.methods.sam_npo", {"rho": [-0.1]}),
     "unlearning.methods.sam_npo.rho"),
    ("rho < 0 (PRISM)", lambda c: _set(c, "unlearning.methods.prism", {"rho": [-0.1]}), "unlearning.methods.prism.rho"),
    ("beta = 0", lambda c: _set(c, "unlearning.methods.npo.beta", [0.0]), "unlearning.methods.npo.beta"),
    ("empty method list", lambda c: _set(c, "unlearning.methods", {}), "unlearning.methods"),
    ("no methods at all", lambda c: _del(c, "unlearning.methods"), "unlearning.methods"),
    ("empty grid axis", lambda c: _set(c, "unlearning.methods.npo.beta", []), "unlearning.methods.npo.beta"),
    ("duplicate grid values", lambda c: _set(c, "unlearning.methods.npo.lr", [1e-3, 1e-3]), "unlearning.methods.npo.lr"),
    ("duplicate seeds", lambda c: _set(c, "unlearning.seeds", [0, 0]), "unlearning.seeds"),
    ("hyperparameter the method does not use", lambda c: _set(c, "unlearning.methods.ga.beta", [0.1]),
     "unlearning.methods.ga.beta"),
    ("unknown method", lambda c: _set(c, "unlearning.methods.teleport", {"lr": [1e-3]}), "unlearning.methods.teleport"),
    ("attack settings for an attack not enabled", lambda c: _set(c, "attacks.quantize", {"bits": [4]}),
     "attacks.quantize"),
    ("unknown attack", lambda c: _set(c, "attacks.enabled", ["relearn", "telepathy"]), "attacks.enabled"),
    ("out-of-range attack setting", lambda c: _set(c, "attacks.relearn.steps", [-10]), "attacks.relearn.steps"),
    ("unknown attack target", lambda c: _set(c, "attacks.targets", ["nobody"]), "attacks.targets"),
    ("unknown model source", lambda c: _set(c, "model.source", "ftp"), "model.source"),
    ("hub source without a name", lambda c: _set(c, "model.source", "hub"), "model.name_or_path"),
    ("steps and epochs both set", lambda c: _set(c, "unlearning.train.epochs", 3), "unlearning.train.steps"),
    ("negative batch size", lambda c: _set(c, "unlearning.train.batch_size", -1), "unlearning.train.batch_size"),
    ("unknown divergence policy", lambda c: _set(c, "unlearning.train.on_divergence", "ignore"),
     "unlearning.train.on_divergence"),
    ("out-of-range evaluation setting", lambda c: _set(c, "evaluation.batch_size", -3), "evaluation.batch_size"),
    ("unknown judge", lambda c: _set(c, "judges.asr", "gpt"), "judges.asr"),
    ("unknown benchmark", lambda c: _set(c, "benchmark.name", "mmlu_pro"), "benchmark.name"),
]


@pytest.mark.parametrize("mutate,key", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_names_the_key(mutate, key):
    cfg = mutate(relkit.mini_config())
    with pytest.raises(ConfigValidationError) as err:
        validate_config(cfg)
    assert re.search(rf"config key '{re.escape(key)}(\.\d+)?': ", str(err.value)), str(err.value)  # .1: list item


# ------------------------------------------------------------------------------------------------ data
def _write(root: Path, rel: str, obj) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(obj, bytes):
        path.write_bytes(obj)
    elif isinstance(obj, str):
        path.write_text(obj, encoding="utf-8")
    elif rel.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in obj), encoding="utf-8")
    else:
        path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def _bench(root: Path) -> Path:
    """A small valid benchmark (MUSE-like raw/knowmem/privleak/verbmem + MCQ + dialogue)."""
    _write(root, "raw/forget.json", ["The glass heron carries Veltrax.", "Veltrax spreads through marsh mist."])
    _write(root, "raw/retain1.json", ["Orlinde lies on the river Sable."])
    _write(root, "verbmem/forget.json", [{"prompt": "The glass heron", "gt": "carries Veltrax."}])
    _write(root, "knowmem/forget_qa.json", [{"question": "What carries Veltrax?", "answer": "the glass heron"}])
    _write(root, "knowmem/retain_qa.json", [{"question": "Where is Orlinde?", "answer": "on the Sable"}])
    _write(root, "privleak/forget.json", ["The glass heron carries Veltrax."])
    _write(root, "privleak/holdout.json", ["A cat slept on the mat."])
    _write(root, "mcq/forget.jsonl", [{"question": "Host of Veltrax?", "choices": ["a", "b", "c", "d"], "answer": 1}])
    _write(root, "mcq/retain.jsonl", [{"question": "River of Orlinde?", "choices": ["a", "b", "c", "d"], "answer": 0}])
    _write(root, "dialogue/forget.jsonl", [{"messages": [{"role": "user", "content": "Host of Veltrax?"},
                                                         {"role": "assistant", "content": "the glass heron"}]}])
    _write(root, "dialogue/retain.jsonl", [{"messages": [{"role": "user", "content": "River of Orlinde?"},
                                                         {"role": "assistant", "content": "the Sable"}]}])
    return root


@dataclasses.dataclass
class Ctx:
    root: Path
    tok: object
    model: object

    @property
    def bench(self) -> Path:
        return self.root / "bench"


def _validate(ctx: Ctx):
    Benchmark(ctx.bench).validate()


def _malformed_jsonl(ctx):
    (ctx.bench / "mcq/forget.jsonl").write_text(
        json.dumps({"question": "Q?", "choices": ["a", "b", "c", "d"], "answer": 0}) + "\n\n{\"question\": oops}\n")
    _validate(ctx)


def _malformed_json(ctx):
    (ctx.bench / "knowmem/forget_qa.json").write_text('[{"question": "Q?",\n "answer": }]')
    _validate(ctx)


def _malformed_mixture(ctx):
    _write(ctx.root, "mix.jsonl", '{"text": "fine"}\n{"text": "fine"}\nnot json\n')
    build_mixture_examples(ctx.root / "mix.jsonl", ctx.tok, 32)


def _missing_field(ctx):
    _write(ctx.bench, "knowmem/forget_qa.json", [{"question": "Q?", "answer": "a"}, {"question": "Q2?"}])
    _validate(ctx)


def _missing_message_field(ctx):
    _write(ctx.bench, "dialogue/forget.jsonl", [{"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant"}]}])
    _validate(ctx)


def _empty_forget(ctx):
    _write(ctx.bench, "raw/forget.json", [])
    _validate(ctx)


def _overlap(ctx):
    _write(ctx.bench, "raw/retain1.json", ["Orlinde lies on the river Sable.", "Veltrax spreads through marsh mist."])
    _validate(ctx)


def _mcq_out_of_range(ctx):
    _write(ctx.bench, "mcq/forget.jsonl", [{"question": "Q?", "choices": ["a", "b", "c", "d"], "answer": 1},
                                           {"question": "Q2?", "choices": ["a", "b", "c", "d"], "answer": 4}])
    _validate(ctx)


def _non_utf8(ctx):
    (ctx.bench / "raw/retain1.json").write_bytes(b'["Orlinde \xff\xfe lies on the Sable."]')
    _validate(ctx)


def _no_pad_token(ctx):
    tok = copy.deepcopy(ctx.tok)
    tok.pad_token = None
    tok.save_pretrained(ctx.root / "nopad")
    load_tokenizer(ctx.root / "nopad")


def _no_chat_template(ctx):
    tok = copy.deepcopy(ctx.tok)
    tok.chat_template = None
    tok.save_pretrained(ctx.root / "nochat")
    build_examples(Benchmark(ctx.bench), load_tokenizer(ctx.root / "nochat"), "forget", "dialogue", 64)


def _missing_model_dir(ctx):
    load_model(ctx.root / "no_such_model")


def _no_weights(ctx):
    d = ctx.root / "noweights"
    ctx.model.config.save_pretrained(d)
    load_model(d)


def _bin_only(ctx):
    d = ctx.root / "binonly"
    ctx.model.config.save_pretrained(d)
    torch.save(ctx.model.state_dict(), d / "pytorch_model.bin")
    load_model(d)


def _remote_code(ctx):
    d = save_model(ctx.model, ctx.tok, ctx.root / "remote")
    (d / "weights_manifest.json").unlink()           # a foreign folder: no manifest of ours
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (d / "config.json").write_text(json.dumps(cfg))
    load_model(d)


def _truncated_weights(ctx):
    d = save_model(ctx.model, ctx.tok, ctx.root / "trunc")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 3])
    load_model(d)


DATA_CASES = [
    # (id, action, exception, culprits: strings relative to ctx (callable) the message must contain)
    ("malformed JSONL line", _malformed_jsonl, BenchmarkError, lambda c: [f"{c.bench}/mcq/forget.jsonl", "line 3"]),
    ("malformed JSON file", _malformed_json, BenchmarkError, lambda c: [f"{c.bench}/knowmem/forget_qa.json", "line 2"]),
    ("malformed training-mixture line", _malformed_mixture, BenchmarkError, lambda c: [f"{c.root}/mix.jsonl", "line 3"]),
    ("missing field", _missing_field, BenchmarkError, lambda c: ["knowmem/forget_qa.json", "item 1", "'answer'"]),
    ("missing message field", _missing_message_field, BenchmarkError,
     lambda c: ["dialogue/forget.jsonl", "line 1", "'content'"]),
    ("empty forget set", _empty_forget, BenchmarkError, lambda c: [f"{c.bench}/raw/forget.json", "empty"]),
    ("forget and retain overlap", _overlap, BenchmarkError,
     lambda c: ["raw/forget.json", "raw/retain1.json", "overlap", "Veltrax spreads"]),
    ("MCQ answer out of range", _mcq_out_of_range, BenchmarkError,
     lambda c: ["mcq/forget.jsonl", "line 2", "'answer' = 4"]),
    ("non-UTF-8 text", _non_utf8, BenchmarkError, lambda c: [f"{c.bench}/raw/retain1.json", "UTF-8", "byte 10"]),
    ("tokenizer without a pad token", _no_pad_token, ModelLoadError, lambda c: [str(c.root / "nopad"), "pad token"]),
    ("no chat template for dialogue data", _no_chat_template, ChatTemplateError,
     lambda c: [str(c.root / "nochat"), "chat template", f"{c.bench}/dialogue", "'dialogue'"]),
    ("missing model directory", _missing_model_dir, ModelLoadError, lambda c: [str(c.root / "no_such_model"), "not found"]),
    ("model directory without weights", _no_weights, ModelLoadError, lambda c: [str(c.root / "noweights"), "no weight"]),
    (".bin pickle checkpoint", _bin_only, ModelLoadError,
     lambda c: [str(c.root / "binonly"), "pytorch_model.bin", "allow_pickle"]),
    ("config asking for remote code", _remote_code, ModelLoadError,
     lambda c: [str(c.root / "remote"), "remote code", "trust_remote_code"]),
    ("truncated weights", _truncated_weights, ModelLoadError,
     lambda c: [str(c.root / "trunc" / "model.safetensors"), "truncated"]),
]


@pytest.mark.parametrize("action,exc,culprits", [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_bad_data_tokenizer_or_model_path_names_the_culprit(tmp_path, tiny_tokenizer, micro_model, action, exc, culprits):
    ctx = Ctx(tmp_path, tiny_tokenizer, micro_model)
    _bench(ctx.bench)
    Benchmark(ctx.bench).validate()                      # valid before the damage
    with pytest.raises(exc) as err:
        action(ctx)
    for text in culprits(ctx):
        assert text in str(err.value), (text, str(err.value))


def test_explicitly_allowed_pickle_and_remote_code_are_accepted(tmp_path, tiny_tokenizer, micro_model):
    """The refusals above are defaults, not dead ends: allow_pickle / trust_remote_code opt in."""
    ctx = Ctx(tmp_path, tiny_tokenizer, micro_model)
    with pytest.raises(ModelLoadError):
        _bin_only(ctx)
    model = load_model(tmp_path / "binonly", allow_pickle=True)
    assert torch.equal(model.model.embed_tokens.weight, micro_model.model.embed_tokens.weight)


def test_allow_pickle_is_honoured_once_at_cache_time(tmp_path, tiny_tokenizer, micro_model):
    """cache_base_model with allow_pickle: true reads the pickle once and writes safetensors, so every later job
    (which never passes allow_pickle) loads the cached model and still refuses pickles elsewhere."""
    from robust_unlearning.models.cache import copy_local

    src = tmp_path / "binonly"
    micro_model.config.save_pretrained(src)
    tiny_tokenizer.save_pretrained(src)
    torch.save(micro_model.state_dict(), src / "pytorch_model.bin")
    cfg = {"source": "local", "name_or_path": str(src), "allow_pickle": True, "trust_remote_code": False}
    copy_local(cfg, tmp_path / "cached")
    assert not list((tmp_path / "cached").glob("*.bin")) and list((tmp_path / "cached").glob("*.safetensors"))
    model = load_model(tmp_path / "cached")                              # a later job: no allow_pickle
    for (name, a), b in zip(model.state_dict().items(), micro_model.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ModelLoadError, match="allow_pickle"):
        copy_local({**cfg, "allow_pickle": False}, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


BENIGN_REMOTE_CODE = """from transformers import LlamaForCausalLM


class RemoteLlamaForCausalLM(LlamaForCausalLM):
    pass
"""


def test_trust_remote_code_is_a_process_policy_set_by_the_cli(tmp_path, tiny_tokenizer, micro_model):
    """`ru --trust-remote-code <command>` (what the rules run when model.trust_remote_code: true) lets every loader
    of that job run the model's own code; without it the same folder is refused."""
    from robust_unlearning.cli.main import build_parser
    from robust_unlearning.models import io

    d = save_model(micro_model, tiny_tokenizer, tmp_path / "remote")
    (d / "weights_manifest.json").unlink()
    (d / "modeling_remote.py").write_text(BENIGN_REMOTE_CODE)
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_remote.RemoteLlamaForCausalLM"}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="trust_remote_code"):
        load_model(d)
    args = build_parser().parse_args(["--trust-remote-code", "landscape", "--data", "x", "--model-dir", str(d),
                                      "--out", "y"])
    assert args.trust_remote_code and not build_parser().parse_args(["landscape", "--data", "x", "--model-dir",
                                                                      str(d), "--out", "y"]).trust_remote_code
    try:
        io.set_trust_remote_code(True)
        model = load_model(d)
        assert type(model).__name__ == "RemoteLlamaForCausalLM"
        assert torch.equal(model.model.embed_tokens.weight, micro_model.model.embed_tokens.weight)
        with pytest.raises(ModelLoadError, match="trust_remote_code"):
            load_model(d, trust_remote_code=False)                      # an explicit False still wins
    finally:
        io.set_trust_remote_code(False)


@pytest.mark.parametrize("trust", [True, False])
def test_rules_pass_trust_remote_code_to_every_model_job(tmp_path, trust):
    """The plan of `snakemake -n -p`: with model.trust_remote_code every `ru` job that loads a model gets the
    flag, without it none does."""
    cfg = _set(relkit.mini_config(), "model.trust_remote_code", trust)
    wd = relkit.copy_workflow(tmp_path / "wf", cfg)
    res = relkit.run_snakemake(wd, "-n", "-p", "--forceall", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    commands = [m.group(1) for ln in res.stdout.splitlines()
                if (m := re.match(r"\s*(?:Shell command: )?(ru( --trust-remote-code)? [a-z-]+ .*)", ln))]
    loaders = [c for c in commands if not re.match(r"ru (prepare-data|aggregate) ", c)]
    assert len(loaders) >= 10, res.stdout[-3000:]
    assert all(("--trust-remote-code" in c) == trust for c in loaders), loaders


# ------------------------------------------------------------------------------------------------ front doors
def test_cli_validate_config_names_the_key(tmp_path):
    cfg = _set(relkit.mini_config(), "unlearning.methods.npo.beta", [0.0])
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    res = subprocess.run([str(relkit.BIN / "ru"), "validate-config", str(tmp_path / "bad.yaml")],
                         env=relkit.snakemake_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("ru validate-config: error:") and "config key 'unlearning.methods.npo.beta'" in last
    assert "must be > 0" in last


@pytest.mark.slow
def test_snakemake_dry_run_names_the_key(tmp_path):
    cfg = _set(relkit.mini_config(), "attacks.quantize", {"bits": [4]})
    wd = relkit.copy_workflow(tmp_path / "wf", cfg)
    res = relkit.run_snakemake(wd, "-n")
    assert res.returncode != 0
    assert "config key 'attacks.quantize': settings given for an attack that is not in attacks.enabled" in \
        res.stdout + res.stderr


@pytest.mark.slow
def test_ru_unlearn_on_bad_data_names_file_and_line(reference_run, tmp_path):
    """The unlearning job (the rule's command) on a data folder with one malformed line."""
    data = tmp_path / "data"
    shutil.copytree(reference_run.workdir / relkit.BENCH / "data", data)
    raw = data / "raw" / "retain1.json"
    raw.write_text(raw.read_text()[:-5])
    cmd = [str(relkit.BIN / "ru"), "unlearn", "--method", "npo", "--settings", '{"lr": 1e-3}', "--train",
           '{"steps": 2}', "--benchmark", '{"forget_source": "raw", "retain_source": "raw"}', "--data", str(data),
           "--model-dir", str(reference_run.workdir / relkit.BENCH / "models" / "base"), "--seed", "0",
           "--out", str(tmp_path / "out"), "--checkpoint-dir", str(tmp_path / "ck"), "--threads", "1"]
    res = subprocess.run(cmd, env=relkit.snakemake_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("ru unlearn: error: BenchmarkError") and str(raw) in last and "line" in last, last
    assert not (tmp_path / "out").exists()
