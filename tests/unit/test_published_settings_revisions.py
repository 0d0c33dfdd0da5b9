"""Which commit of each Hub input a run used (docs/benchmarks.md, "Presets"): the base model folder records the
resolved commit of its weights and tokenizer (`source.json`), the data manifest the resolved dataset revision,
and run.json both. Offline: the Hub is replaced by files in huggingface_hub's own formats (a local-dir download
with its `.metadata` files, a hub cache with refs/ and snapshots/)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from robust_unlearning.data.hub import _revision_from_cache
from robust_unlearning.models import cache as C
from robust_unlearning.models.io import load_tokenizer, save_model
from robust_unlearning.utils.repro import MODEL_SOURCE_FILE, input_revisions

REPO = Path(__file__).resolve().parents[2]
MODEL_COMMIT = "a2f39769e9a0b98ec1cdd12f65e9962502208935"
TOK_COMMIT = "01c7f73d771dfac7d292323805ebc428287df4f9"


def hub_cache_repo(cache: Path, repo_id: str, commit: str, files_from: Path, branch: str = "main") -> Path:
    """A repo in the hub cache layout: refs/<branch> holds the commit, snapshots/<commit>/ the files."""
    root = cache / ("models--" + repo_id.replace("/", "--"))
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in files_from.iterdir():
        if f.is_file():
            (snap / f.name).write_bytes(f.read_bytes())
    (root / "refs").mkdir()
    (root / "refs" / branch).write_text(commit)
    return snap


def test_hub_cache_commit_follows_refs_and_commits(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    cache = tmp_path / "hub"
    hub_cache_repo(cache, "org/tok", TOK_COMMIT, tmp_path / "tok")
    assert C.hub_cache_commit("org/tok", None, "tokenizer_config.json", cache) == TOK_COMMIT      # refs/main
    assert C.hub_cache_commit("org/tok", TOK_COMMIT, "tokenizer_config.json", cache) == TOK_COMMIT
    assert C.hub_cache_commit("org/tok", "v2", "tokenizer_config.json", cache) is None            # not cached
    assert C.hub_cache_commit("org/other", None, "tokenizer_config.json", cache) is None


def test_hub_model_folder_records_the_downloaded_commit(tmp_path, micro_model, tiny_tokenizer, monkeypatch):
    """The online path: snapshot_download(local_dir=...) leaves one .metadata file per file (written here with
    huggingface_hub's own writer); the commit in them is the resolved revision."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub._local_folder import write_download_metadata

    src = tmp_path / "remote"
    save_model(micro_model, tiny_tokenizer, src)
    calls = []

    def fake_snapshot_download(repo_id, revision=None, local_dir=None, allow_patterns=None, **kw):
        calls.append((repo_id, revision, local_dir))
        local_dir = Path(local_dir)
        for f in src.iterdir():
            (local_dir / f.name).write_bytes(f.read_bytes())
            write_download_metadata(local_dir, f.name, MODEL_COMMIT, "etag-" + f.name)
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    out = tmp_path / "models" / "base"
    rec = C.cache_model({"source": "hub", "name_or_path": "muse-bench/MUSE-News_target", "revision": None,
                         "pad_token": "eos"}, tmp_path, out)
    assert calls and calls[0][:2] == ("muse-bench/MUSE-News_target", None)
    saved = json.loads((out / MODEL_SOURCE_FILE).read_text())
    assert saved == rec
    assert saved["resolved_revision"] == MODEL_COMMIT and saved["revision"] is None
    assert saved["tokenizer"] == {"id": None, "revision": None, "resolved_revision": MODEL_COMMIT}
    assert load_tokenizer(out).pad_token_id is not None


def test_named_hub_tokenizer_is_loaded_at_its_revision_and_recorded(tmp_path, micro_model, tiny_tokenizer):
    """model.tokenizer + model.tokenizer_revision from a hub cache, offline (a fresh process: huggingface_hub
    reads HF_HUB_CACHE / HF_HUB_OFFLINE when imported)."""
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    micro_model.config.to_json_file(tmp_path / "tok" / "config.json")   # AutoTokenizer reads the repo's config
    cfg = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    cfg.pop("pad_token", None)                       # as Llama-2's: no pad token, model.pad_token supplies it
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps(cfg))
    (tmp_path / "tok" / "special_tokens_map.json").unlink(missing_ok=True)
    cache = tmp_path / "hub"
    hub_cache_repo(cache, "meta-llama/Llama-2-7b-hf", TOK_COMMIT, tmp_path / "tok")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    code = ("import json, sys; from pathlib import Path; from robust_unlearning.models.cache import finish_tokenizer\n"
            "for cfg in json.loads(sys.argv[1]):\n"
            "    print(json.dumps(finish_tokenizer(cfg, Path(sys.argv[2]))))")
    cfgs = [{"tokenizer": "meta-llama/Llama-2-7b-hf", "tokenizer_revision": revision, "pad_token": "eos"}
            for revision in (None, TOK_COMMIT)]
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(cfgs), str(model_dir)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    recs = [json.loads(line) for line in proc.stdout.strip().splitlines()[-2:]]
    assert recs == [{"id": "meta-llama/Llama-2-7b-hf", "revision": r, "resolved_revision": TOK_COMMIT}
                    for r in (None, TOK_COMMIT)]
    tok = load_tokenizer(model_dir)
    assert tok.pad_token_id == tok.eos_token_id


def test_dataset_revision_is_the_datasets_cache_folder():
    class Part:
        cache_files = [{"filename": "/c/muse-bench___muse-news/raw/0.0.0/"
                                    "506bd5b150b92814d45e4404a82f120ab2d748bf/muse-news-forget.arrow"}]

    assert _revision_from_cache(Part()) == "506bd5b150b92814d45e4404a82f120ab2d748bf"


def test_run_json_records_model_and_data_revisions(tmp_path, micro_model, tiny_tokenizer):
    import copy

    from robust_unlearning.data.collate import encode_text
    from robust_unlearning.data.muse import prepare_muse
    from robust_unlearning.methods import run_unlearning

    model_dir = tmp_path / "base"
    save_model(micro_model, tiny_tokenizer, model_dir)
    C.write_source(model_dir, {"source": "hub", "repo_id": "muse-bench/MUSE-News_target", "revision": None,
                               "resolved_revision": MODEL_COMMIT,
                               "tokenizer": {"id": "meta-llama/Llama-2-7b-hf", "revision": TOK_COMMIT,
                                             "resolved_revision": TOK_COMMIT}})
    data = tmp_path / "data"
    prepare_muse("muse_news", {"name": "muse_news", "source": str(REPO / "tests/fixtures/hub"),
                               "cache_dir": str(tmp_path / "ds")}, data)
    inputs = input_revisions(model_dir, data)
    assert inputs["model"]["resolved_revision"] == MODEL_COMMIT
    src = inputs["data"]["sources"]["muse"]
    assert src["dataset"] == "muse-bench/MUSE-News" and src["resolved_revision"]   # a local copy: its content hash
    assert len(inputs["data"]["manifest_sha256"]) == 64
    ex = [encode_text(tiny_tokenizer, "The glass heron carries Veltrax.", 16)] * 2
    run_unlearning(copy.deepcopy(micro_model), tiny_tokenizer, "ga", {}, {"steps": 1, "batch_size": 2,
                   "progress": False}, ex, ex, tmp_path / "run", seed=0, checkpoint_dir=tmp_path / "ck",
                   device="cpu", inputs=inputs)
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())["provenance"]["inputs"]
    assert recorded == json.loads(json.dumps(inputs))
    assert input_revisions(tmp_path / "nowhere", tmp_path / "nothing") == {"model": None, "data": None}


@pytest.mark.parametrize("preset", ["muse_news", "muse_books", "wmdp_bio"])
def test_presets_pin_every_hub_input_to_a_commit(preset):
    import yaml

    cfg = yaml.safe_load((REPO / "workflow" / "presets" / f"{preset}.yaml").read_text())
    pins = [cfg["model"].get("revision"), cfg["benchmark"].get("revision")]
    if cfg["model"].get("tokenizer"):
        pins.append(cfg["model"].get("tokenizer_revision"))
    if preset == "wmdp_bio":
        pins.append(cfg["benchmark"].get("mmlu_revision"))
    assert all(isinstance(p, str) and len(p) == 40 and int(p, 16) >= 0 for p in pins), pins
