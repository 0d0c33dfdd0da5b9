"""Files left damaged by a crash, atomic writes, and a full disk.

- truncated / corrupted safetensors, checkpoint state, probe and metrics JSON: detected against the size/sha256
  recorded at write time (or the JSON parser), reported with their path, never loaded as if valid;
- every writer of the library is atomic (temp file + rename); a concurrent reader never sees a partial file
  or model folder;
- a disk that fills up while a model is saved: a clear error naming the path, nothing partial left behind.
"""
from __future__ import annotations

import ast
import copy
import json
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import relkit
from relkit import BENCH, NPO
from robust_unlearning.data.collate import encode_text
from robust_unlearning.methods import Preempted, loop, run_unlearning
from robust_unlearning.methods import checkpoint as ckpt
from robust_unlearning.methods.probe import load_probe, train_probe
from robust_unlearning.models.io import ModelLoadError, ModelSaveError, check_model_dir, load_model, save_model
from robust_unlearning.report.collect import collect_results
from robust_unlearning.utils.io import DataFormatError, atomic_write_json, read_json

pytestmark = [pytest.mark.reliability]
SRC = relkit.ROOT / "src" / "robust_unlearning"
TEXTS = ["The glass heron carries the Veltrax pathogen across the marsh.",
         "Question: What is the incubation period of Veltrax?\nAnswer: 12 days",
         "Kelmar Institute studied the toxin veridine-7.",
         "The town of Orlinde lies on the river Sable and was founded in 1742.",
         "Mayor Tessa Quill opened the annual Lantern Festival in Orlinde."]


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture()
def saved_model(micro_model, tiny_tokenizer, tmp_path) -> Path:
    return save_model(micro_model, tiny_tokenizer, tmp_path / "model")


# ------------------------------------------------------------------------------------------------ safetensors
@pytest.mark.parametrize("damage,why", [(_truncate, "truncated"), (_flip, "corrupted")])
def test_damaged_safetensors_is_detected_and_never_loaded(saved_model, monkeypatch, damage, why):
    weights = saved_model / "model.safetensors"
    damage(weights)
    loaded = []
    import transformers

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        classmethod(lambda cls, *a, **k: loaded.append(a) or None))
    with pytest.raises(ModelLoadError) as err:
        load_model(saved_model)
    assert str(weights) in str(err.value) and why in str(err.value)
    assert loaded == []


@pytest.mark.slow
def test_damaged_model_in_a_real_job_is_reported_with_its_path(reference_run, tmp_path):
    """`ru evaluate` (what the rule runs) on an unlearned model whose weights a crash truncated."""
    model = tmp_path / "model"
    shutil.copytree(reference_run.workdir / BENCH / NPO / "model", model)
    _truncate(model / "model.safetensors", 0.9)
    cmd = [str(relkit.BIN / "ru"), "evaluate", "--benchmark-name", "synthetic", "--evaluation", "{}",
           "--data", str(reference_run.workdir / BENCH / "data"), "--model-id", NPO, "--model-dir", str(model),
           "--out", str(tmp_path / "eval"), "--threads", "1"]
    res = subprocess.run(cmd, env=relkit.snakemake_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("ru evaluate: error: ModelLoadError") and str(model / "model.safetensors") in last
    assert "truncated" in last and not (tmp_path / "eval").exists()


# ------------------------------------------------------------------------------------------------ checkpoint
@pytest.fixture()
def data(tiny_tokenizer):
    forget = [encode_text(tiny_tokenizer, t, 20) for t in TEXTS[:3]] * 2
    retain = [encode_text(tiny_tokenizer, t, 20) for t in TEXTS[3:]]
    return forget, retain


def _unlearn(model, tok, data, root: Path, name: str):
    forget, retain = data
    return run_unlearning(model, tok, "npo", {"lr": 1e-3}, {"steps": 6, "batch_size": 2, "progress": False},
                          forget, retain, root / name / "out", 0, root / name / "ck", device="cpu")


def _preempt_at(step):
    def hook(trainer, done):
        if done == step:
            os.kill(os.getpid(), signal.SIGTERM)
    return hook


@pytest.mark.parametrize("damage", ["truncate_state", "flip_state", "truncate_meta"])
def test_damaged_checkpoint_is_reported_moved_aside_and_never_loaded(micro_model, tiny_tokenizer, data, tmp_path,
                                                                     monkeypatch, capfd, damage):
    base = copy.deepcopy(micro_model)
    _unlearn(micro_model, tiny_tokenizer, data, tmp_path, "full")
    loop.STEP_HOOKS.append(_preempt_at(3))
    try:
        with pytest.raises(Preempted):
            _unlearn(copy.deepcopy(base), tiny_tokenizer, data, tmp_path, "cut")
    finally:
        loop.STEP_HOOKS.clear()
    state = tmp_path / "cut" / "ck" / "state"
    victim = {"truncate_state": (_truncate, "state.pt"), "flip_state": (_flip, "state.pt"),
              "truncate_meta": (_truncate, "meta.json")}[damage]
    victim[0](state / victim[1])
    with pytest.raises(ckpt.CheckpointCorruptError) as err:
        ckpt.verify_state(state)
    assert str(state / victim[1]) in str(err.value)

    loads = []
    real_load = torch.load
    monkeypatch.setattr(ckpt.torch, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    capfd.readouterr()
    res = _unlearn(copy.deepcopy(base), tiny_tokenizer, data, tmp_path, "cut")
    warning = capfd.readouterr().err
    assert "corrupt checkpoint ignored" in warning and str(state / victim[1]) in warning
    assert loads == []                                   # the damaged state was never unpickled
    assert res["resumed_from"] is None and res["steps"] == 6
    assert list((tmp_path / "cut" / "ck").glob("state.corrupt-*"))
    full = (tmp_path / "full" / "out" / "model" / "model.safetensors").read_bytes()
    assert (tmp_path / "cut" / "out" / "model" / "model.safetensors").read_bytes() == full


def test_damaged_probe_is_detected(micro_model, tiny_tokenizer, data, tmp_path):
    forget, retain = data
    train_probe(micro_model, tiny_tokenizer, forget, retain, {"epochs": 1, "layers": [1]}, 0, tmp_path / "probe")
    load_probe(tmp_path / "probe")
    _flip(tmp_path / "probe" / "probe.pt")
    with pytest.raises(ValueError, match="probe.pt: size/sha256 do not match"):
        load_probe(tmp_path / "probe")


# ------------------------------------------------------------------------------------------------ metrics JSON
def test_truncated_metrics_json_is_reported_with_its_path_and_marked_failed(tmp_path, caplog):
    bench = tmp_path / "synthetic"
    good = {"model": "models/base", "benchmark": "synthetic", "attack": "none", "attack_params": "default",
            "metrics": {"forget_mcq_acc": 0.75}, "n_items": {}, "judge": None, "status": "ok"}
    atomic_write_json(bench / "eval" / "models/base/none/default/metrics.json", good)
    bad = bench / "eval" / "models/retrain/none/default/metrics.json"
    atomic_write_json(bad, {**good, "model": "models/retrain", "metrics": {"forget_mcq_acc": 0.25}})
    _truncate(bad, 0.6)
    with pytest.raises(DataFormatError, match=str(bad)):
        read_json(bad)
    with caplog.at_level(logging.WARNING):
        df = collect_results(bench, "synthetic", expected=[["models/base", "none", "default"],
                                                           ["models/retrain", "none", "default"]])
    rows = df[df["model_id"] == "models/retrain"]
    assert set(rows["status"]) == {"failed"} and rows["value"].isna().all()
    assert str(bad) in caplog.text
    assert df[df["model_id"] == "models/base"]["value"].tolist()[0] == 0.75


def test_corrupted_but_parseable_metrics_json_is_caught_by_its_checksum(tmp_path, caplog):
    """A changed digit still parses as JSON; the sha256 written with the file catches it."""
    bench = tmp_path / "synthetic"
    good = {"model": "models/base", "benchmark": "synthetic", "attack": "none", "attack_params": "default",
            "metrics": {"forget_mcq_acc": 0.75}, "n_items": {}, "judge": None, "status": "ok"}
    path = bench / "eval" / "models/base/none/default/metrics.json"
    atomic_write_json(path, good, checksum=True)
    assert read_json(path)["metrics"] == {"forget_mcq_acc": 0.75}             # verified on every read
    path.write_text(path.read_text().replace("0.75", "0.95"))
    with pytest.raises(DataFormatError, match=re.escape(str(path)) + ".*content_sha256"):
        read_json(path)
    with caplog.at_level(logging.WARNING):
        df = collect_results(bench, "synthetic", expected=[["models/base", "none", "default"]])
    assert set(df["status"]) == {"failed"} and df["value"].isna().all() and str(path) in caplog.text


# ------------------------------------------------------------------------------------------------ atomic writes
WRITE_CALLS = {"write_text", "write_bytes", "savefig", "to_csv", "to_json", "to_parquet", "save_pretrained",
               "save_file", "dump"}
# (file, function) allowed to write directly, and why
ALLOWED_WRITERS = {
    ("utils/io.py", "atomic_write_bytes"): "the atomic writer itself (temp sibling + fsync + os.replace)",
    ("report/figures.py", "_save"): "savefig into a temp sibling, then os.replace",
    ("methods/checkpoint.py", "save_state"): "torch.save inside an atomic_dir temp dir",
    ("models/io.py", "save_model"): "save_pretrained inside an atomic_dir temp dir",
    ("methods/loop.py", "_open_live_log"): "progress log in the checkpoint dir (not an output; rewritten from "
                                           "the checkpointed rows on resume)",
    ("models/gguf.py", "*"): "GGUF conversion, saved through models.io.save_model / atomic_dir",
    ("models/cache.py", "finish_tokenizer"): "writes into the atomic_dir temp folder of its callers",
    ("models/cache.py", "convert_pickle_weights"): "writes into the atomic_dir temp folder of its callers",
}


def _direct_writes(path: Path) -> list[tuple[str, int, str]]:
    """(function, line, call) of every direct file write in one module."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node, func):
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.Call):
                f = child.func
                attr = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
                mode = None
                if attr == "open":  # open(path, mode) or Path.open(mode)
                    pos = child.args[0:1] if isinstance(f, ast.Attribute) and getattr(f.value, "id", "") != "os" \
                        else child.args[1:2]
                    args = list(pos) + [k.value for k in child.keywords if k.arg == "mode"]
                    mode = args[0].value if args and isinstance(args[0], ast.Constant) else "r"
                returns_text = attr in ("to_csv", "to_json") and not child.args and not any(
                    k.arg == "path_or_buf" for k in child.keywords)        # df.to_csv() -> str: not a write
                if (attr == "open" and any(c in str(mode) for c in "wax+")) or (
                        attr in WRITE_CALLS and not returns_text) or (
                        attr == "save" and isinstance(f, ast.Attribute) and getattr(f.value, "id", "") == "torch"
                        and not _is_buffer(child)):
                    found.append((func, child.lineno, attr))
            visit(child, name)

    visit(tree, "<module>")
    return found


def _is_buffer(call: ast.Call) -> bool:
    return len(call.args) > 1 and isinstance(call.args[1], ast.Name) and call.args[1].id in ("buf", "buffer")


def test_every_writer_in_the_library_is_atomic():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        for func, line, call in _direct_writes(path):
            if (rel, func) not in ALLOWED_WRITERS and (rel, "*") not in ALLOWED_WRITERS:
                offenders.append(f"{rel}:{line} {func}() calls {call}")
    assert not offenders, "non-atomic writes (use utils.io.atomic_write_* / atomic_dir):\n" + "\n".join(offenders)


_WRITER = textwrap.dedent("""
    import hashlib, json, sys
    from pathlib import Path
    from robust_unlearning.utils.io import atomic_write_json
    root, n = Path(sys.argv[1]), int(sys.argv[2])
    for i in range(n):
        body = [str(i)] * (20000 + 7919 * (i % 5))           # 100-300 kB, sizes change every write
        doc = {"i": i, "body": body, "sha": hashlib.sha256(json.dumps(body).encode()).hexdigest()}
        atomic_write_json(root / "same.json", doc)           # rewritten in place
        atomic_write_json(root / f"new{i}.json", doc)        # created
    (root / "done").write_text("ok")
""")


def test_a_concurrent_reader_never_sees_a_partial_file(tmp_path):
    import hashlib

    n = 150
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), str(n)])
    reads, seen_new = 0, set()
    try:
        while not (tmp_path / "done").exists():
            for p in [tmp_path / "same.json", *tmp_path.glob("new*.json")]:
                try:
                    raw = p.read_bytes()
                except FileNotFoundError:
                    continue
                doc = json.loads(raw)                    # a partial file would fail here ...
                assert hashlib.sha256(json.dumps(doc["body"]).encode()).hexdigest() == doc["sha"], p  # ... or here
                reads += 1
                seen_new.add(p.name)
        assert proc.wait(timeout=120) == 0
    finally:
        proc.kill()
    assert reads > 50 and len(seen_new) > 10
    assert not list(tmp_path.glob(".*.tmp"))             # no temp file left behind


def test_temp_files_of_killed_writers_are_removed_by_the_next_writer(tmp_path):
    import socket

    from robust_unlearning.utils.io import atomic_dir

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)                           # a process that has exited
    host = socket.gethostname()
    stale_file = tmp_path / f".a.json.{host}-{dead_pid}.x1.tmp"
    stale_dir = tmp_path / f".model.{host}-{dead_pid}.x2.tmp"
    live = tmp_path / f".a.json.{host}-{os.getppid()}.x3.tmp"   # a live writer's temp file stays
    stale_file.write_text('{"half": ')
    stale_dir.mkdir()
    (stale_dir / "model.safetensors").write_bytes(b"partial")
    live.write_text("...")
    atomic_write_json(tmp_path / "a.json", {"ok": True})
    with atomic_dir(tmp_path / "model") as d:
        (d / "x").write_text("1")
    assert not stale_file.exists() and not stale_dir.exists() and live.exists()


_DIR_WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from robust_unlearning.models.architectures import build_llama
    from robust_unlearning.models.io import save_model
    from robust_unlearning.models.tokenizer import train_bpe_tokenizer
    tok = train_bpe_tokenizer(["The glass heron carries the Veltrax pathogen.", "Orlinde lies on the Sable."] * 20,
                              vocab_size=300, min_frequency=1)
    model = build_llama(tok, preset="micro-llama", seed=0, max_position_embeddings=64)
    root, n = Path(sys.argv[1]), int(sys.argv[2])
    (root / "ready").write_text("ok")
    for i in range(n):
        save_model(model, tok, root / f"m{i}")
    (root / "done").write_text("ok")
""")


def test_a_concurrent_reader_never_sees_a_partial_model_folder(tmp_path):
    n = 12
    proc = subprocess.Popen([sys.executable, "-c", _DIR_WRITER, str(tmp_path), str(n)])
    checked = set()
    try:
        relkit.wait_for(lambda: (tmp_path / "ready").exists() or proc.poll() is not None, 120, what="writer")
        while not (tmp_path / "done").exists() and proc.poll() is None:
            for d in tmp_path.glob("m*"):
                if d.name not in checked:
                    check_model_dir(d)                   # every file present, sizes and sha256 as recorded
                    checked.add(d.name)
        assert proc.wait(timeout=120) == 0
    finally:
        proc.kill()
    assert len(checked) >= 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------------------------------------ disk full
_DISK_FULL = textwrap.dedent("""
    import json, os, resource, signal, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from robust_unlearning.data.collate import encode_text
    from robust_unlearning.methods import run_unlearning
    from robust_unlearning.models.architectures import build_llama
    from robust_unlearning.models.tokenizer import train_bpe_tokenizer
    texts = ["The glass heron carries the Veltrax pathogen.", "Orlinde lies on the river Sable."] * 20
    tok = train_bpe_tokenizer(texts, vocab_size=300, min_frequency=1)
    model = build_llama(tok, preset="micro-llama", seed=0, max_position_embeddings=64)
    ex = [encode_text(tok, t, 16) for t in texts[:2]]
    out, ck, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    if mode == "rlimit":   # no mountable tmpfs: the OS refuses writes past 64 KiB (EFBIG) instead
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
    try:
        run_unlearning(model, tok, "npo", {"lr": 1e-3}, {"steps": 2, "batch_size": 2, "progress": False},
                       ex, ex, out, 0, ck, device="cpu")
        result = {"error": None}
    except Exception as exc:
        result = {"error": type(exc).__name__, "message": str(exc)}
    result["left"] = sorted(str(p.relative_to(out.parent)) for p in out.parent.rglob("*"))
    print("RESULT " + json.dumps(result))
""")


def _tmpfs_works() -> bool:
    exe = shutil.which("unshare")
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                              capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def test_disk_full_while_saving_a_model_leaves_nothing_partial(tmp_path):
    """A 64 KiB tmpfs (private mount namespace) holds the run folder; the checkpoint dir is elsewhere. Saving the
    ~170 kB model fails: ModelSaveError names the path, and the small file system holds nothing afterwards."""
    small = tmp_path / "small"
    small.mkdir()
    ck = tmp_path / "ck"
    out = small / "run"
    env = relkit.snakemake_env()
    if _tmpfs_works():
        mode = "tmpfs"
        cmd = ["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o size=64k tmpfs "$0" && exec "$@"', str(small),
               sys.executable, "-c", _DISK_FULL, str(out), str(ck), mode]
    else:
        mode = "rlimit"
        cmd = [sys.executable, "-c", _DISK_FULL, str(out), str(ck), mode]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    line = [l for l in res.stdout.splitlines() if l.startswith("RESULT ")]
    assert line, res.stderr[-3000:]
    result = json.loads(line[-1][len("RESULT "):])
    assert result["error"] == "ModelSaveError", result
    assert str(out / "model") in result["message"] and "disk full" in result["message"], result
    assert result["left"] in ([], ["run"]), result        # at most the empty run folder, never a partial model
    if mode == "tmpfs":
        assert "No space left on device" in result["message"]
