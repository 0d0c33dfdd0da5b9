"""Security: no code execution from untrusted pickles, shell-safe config values, no network, no leaked keys.

- a planted malicious pickle (model folder, checkpoint, probe) is refused or read with ``weights_only=True``:
  its payload never runs; a source scan finds no unsafe loader anywhere in the library;
- config values that reach the rules' shell commands are quoted: hostile values (``; touch PWNED``, ``$(...)``,
  backticks) create no file, in a dry run's printed commands and in a really executed job;
- the reference run of the miniature config passed with networking blocked for every process;
- a judge that calls an endpoint reads its key from the environment, sends it, and never writes it anywhere;
  the reference run's whole results tree and Snakemake output do not contain the key planted in its environment.
"""
from __future__ import annotations

import ast
import http.server
import json
import logging
import os
import pickle
import re
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml

import relkit
from relkit import BENCH, PLANTED_KEY

pytestmark = [pytest.mark.reliability]
SRC = relkit.ROOT / "src" / "robust_unlearning"


class _Payload:
    """Unpickling this runs ``Path(marker).touch()``: the classic pickle code-execution gadget."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _plant(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model.embed_tokens.weight": torch.zeros(2, 2), "evil": _Payload(marker)}, path)
    return path


@pytest.fixture()
def marker(tmp_path):
    m = tmp_path / "PWNED_BY_PICKLE"
    assert not m.exists()
    # the gadget itself works: unpickling without weights_only would run it (control)
    pickle.loads(pickle.dumps(_Payload(m)))
    assert m.exists()
    m.unlink()
    return m


def _model_dir(tmp_path, micro_model, marker) -> Path:
    d = tmp_path / "evil_model"
    micro_model.config.save_pretrained(d)
    _plant(d / "pytorch_model.bin", marker)
    return d


def test_malicious_pickle_model_is_refused(tmp_path, micro_model, marker):
    from robust_unlearning.models.io import ModelLoadError, load_model

    d = _model_dir(tmp_path, micro_model, marker)
    with pytest.raises(ModelLoadError, match="refusing to unpickle"):
        load_model(d)
    assert not marker.exists()


def test_malicious_pickle_is_not_executed_even_when_pickle_is_allowed(tmp_path, micro_model, marker):
    """allow_pickle: true lets transformers read .bin files, but only through torch.load(weights_only=True)."""
    from robust_unlearning.models.io import load_model

    d = _model_dir(tmp_path, micro_model, marker)
    with pytest.raises(Exception) as err:
        load_model(d, allow_pickle=True)
    assert "weights_only" in str(err.value) or "Unpickl" in type(err.value).__name__ + str(err.value)
    assert not marker.exists()


def test_malicious_checkpoint_and_probe_are_not_executed(tmp_path, marker):
    from robust_unlearning.methods import checkpoint as ckpt
    from robust_unlearning.methods.probe import load_probe
    from robust_unlearning.utils.io import atomic_write_json, sha256_file

    state = _plant(tmp_path / "ck" / "state" / "state.pt", marker)
    fp = {"method": "npo"}
    atomic_write_json(state.parent / "meta.json", {"fingerprint": fp, "step": 3, "state_file": {
        "size": state.stat().st_size, "sha256": sha256_file(state)}})   # even with a valid record
    with pytest.raises(pickle.UnpicklingError):
        ckpt.load_state(tmp_path / "ck", fp)
    probe = _plant(tmp_path / "probe" / "probe.pt", marker)
    atomic_write_json(probe.parent / "probe.json", {"in_dim": 2, "arch": "linear", "hidden": []})
    with pytest.raises(pickle.UnpicklingError):
        load_probe(probe.parent)
    assert not marker.exists()


@pytest.mark.slow
def test_a_local_model_source_with_a_malicious_pickle_is_refused_by_cache_model(tmp_path, micro_model, marker):
    """`ru cache-model` (the rule's command) with model.source: local pointing at the planted folder."""
    d = _model_dir(tmp_path, micro_model, marker)
    model_cfg = {"source": "local", "name_or_path": str(d), "allow_pickle": False, "trust_remote_code": False}
    (tmp_path / "data").mkdir()
    cmd = [str(relkit.BIN / "ru"), "cache-model", "--model", json.dumps(model_cfg), "--data", str(tmp_path / "data"),
           "--role", "pretrained", "--out", str(tmp_path / "models" / "pretrained")]
    res = subprocess.run(cmd, env=relkit.snakemake_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 1
    assert "refusing to unpickle" in res.stderr.strip().splitlines()[-1] and str(d) in res.stderr
    assert not marker.exists() and not (tmp_path / "models" / "pretrained").exists()


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f"{getattr(f.value, 'id', '?')}.{f.attr}" if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            kw = {k.arg: k.value for k in node.keywords}
            yield node, name, kw


def test_no_unsafe_deserialisation_anywhere_in_the_library():
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("pickle", "dill", "joblib", "cloudpickle", "marshal", "shelve")
                       for n in names):
                    problems.append(f"{rel}:{node.lineno} imports a pickle-like module")
        for node, name, kw in _calls(tree):
            where = f"{rel}:{node.lineno} {name}"
            if name.endswith(".load") and name.split(".")[0] == "torch":
                wo = kw.get("weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    problems.append(f"{where} without weights_only=True")
            if name in ("np.load", "numpy.load") and isinstance(kw.get("allow_pickle"), ast.Constant) \
                    and kw["allow_pickle"].value:
                problems.append(f"{where} with allow_pickle=True")
            if name == "yaml.load" or name == "yaml.unsafe_load":
                problems.append(f"{where} (use yaml.safe_load)")
            if name in ("eval", "exec"):
                problems.append(f"{where} on data")
            tr = kw.get("trust_remote_code")
            if isinstance(tr, ast.Constant) and tr.value is True:
                problems.append(f"{where} hard-codes trust_remote_code=True")
            sh = kw.get("shell")
            if isinstance(sh, ast.Constant) and sh.value is True:
                problems.append(f"{where} with shell=True")
            if name in ("os.system", "os.popen"):
                problems.append(f"{where} runs a shell")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------------------------ shell
HOSTILE = "r; touch PWNED_1 #$(touch PWNED_2)`touch PWNED_3`'\"x"


def _hostile_config() -> dict:
    cfg = relkit.variant(methods={"npo": relkit.MINI_METHODS["npo"]}, attacks={"enabled": []})
    cfg["results_dir"] = HOSTILE
    cfg["judges"] = {"openai_compatible": {"model": "m; touch PWNED_4", "base_url": "http://x/$(touch PWNED_5)"}}
    return cfg


def _pwned(root: Path) -> list[Path]:
    return [p for p in root.rglob("PWNED*")]


@pytest.mark.slow
def test_hostile_config_values_are_quoted_in_every_shell_command(tmp_path):
    """`snakemake -n -p` prints the shell command of every job of the grid: each parses (as bash will) into words
    where every hostile value is ONE argument. The printed prepare_data command is then run the way Snakemake runs
    it (`bash -c "set -euo pipefail; <command>"`): it works and creates no file."""
    wd = relkit.copy_workflow(tmp_path / "wf", _hostile_config())
    res = relkit.run_snakemake(wd, "-n", "-p")
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    commands = [line.split("Shell command: ", 1)[1] for line in out.splitlines()
                if line.startswith("Shell command: ru ")]
    assert len({c.split()[1] for c in commands}) >= 5, out[-3000:]   # prepare-data, cache-model, unlearn, ...
    for cmd in commands:
        tokens = shlex.split(cmd)                        # what bash will pass: the hostile value stays one word
        assert ";" not in tokens and "touch" not in tokens and not any(t.startswith("#") for t in tokens), cmd
        assert any(t.startswith(HOSTILE + "/") for t in tokens), cmd
        if cmd.startswith("ru evaluate"):
            judges = json.loads(tokens[tokens.index("--judges") + 1])
            assert judges["openai_compatible"]["model"] == "m; touch PWNED_4"
    prepare = next(c for c in commands if c.startswith("ru prepare-data"))
    (wd / HOSTILE / "synthetic" / "logs").mkdir(parents=True)   # Snakemake creates the log folder first
    run = subprocess.run(["bash", "-c", f"set -euo pipefail; {prepare}"], cwd=wd, env=relkit.snakemake_env(),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (wd / HOSTILE / "synthetic" / "data" / "manifest.json").is_file()
    assert not _pwned(tmp_path) and not _pwned(Path.cwd())


def test_shell_metacharacters_in_a_grid_value_are_rejected():
    """A grid value becomes a wildcard (an output path): the method's config refuses anything but its choices."""
    from robust_unlearning.config import ConfigValidationError, validate_config

    cfg = relkit.mini_config()
    cfg["unlearning"]["methods"]["npo"]["retain_loss"] = ["gdr;touch${IFS}PWNED"]
    with pytest.raises(ConfigValidationError, match="unlearning.methods.npo.retain_loss"):
        validate_config(cfg)


# ------------------------------------------------------------------------------------------------ network
@pytest.mark.slow
def test_the_default_run_makes_no_network_connection(reference_run):
    """Two layers: every process of the run was in a network namespace of its own (``unshare -rn``: no interface
    but a down loopback, so nothing below Python could connect either), and the Python guard saw no attempt."""
    log = reference_run.net_log.read_text().splitlines()
    loaded = [l for l in log if l.split()[1:2] == ["LOADED"]]
    # the guard was active in the jobs: `ru ...`, or `python -m robust_unlearning.cli.main ...` (workflow/bin/ru)
    assert any("'ru'" in l or "/ru'" in l or "argv=['-m', " in l for l in loaded), log[:5]
    assert any("snakemake" in l for l in loaded), log[:5]
    blocked = [l for l in log if "BLOCKED" in l]
    assert not blocked, blocked
    # the namespace: without `unshare -rn` only Python's socket calls were covered, which is not enough
    assert reference_run.netns, "the reference run had no private network namespace (`unshare -rn` refused)"
    ours = os.readlink("/proc/self/ns/net")
    spaces = {re.search(r"netns=(\S+)", l).group(1) for l in loaded}
    assert spaces and ours not in spaces and "unknown" not in spaces, (ours, spaces)


def test_the_run_prefix_gives_a_private_network_namespace():
    """What the reference run is started under (relkit.unshare_prefix): a namespace other than ours, with no
    interface up (a raw connect fails below Python). Fails, not skips, where `unshare -rn` is refused."""
    prefix = relkit.unshare_prefix()
    assert prefix, "`unshare -rn` is not available or not permitted: the run could not be isolated"
    res = subprocess.run(prefix + ["readlink", "/proc/self/ns/net"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and res.stdout.strip() != os.readlink("/proc/self/ns/net"), res
    code = "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 80), timeout=5)\nexcept OSError as e:\n" \
           "    print('unreachable', e.errno)\n"
    res = subprocess.run(prefix + [sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60)
    assert "unreachable" in res.stdout, (res.stdout, res.stderr)


def test_the_network_guard_really_blocks(tmp_path):
    env, log = relkit.net_guard(tmp_path)
    code = "import socket\ntry:\n    socket.create_connection(('example.org', 80), timeout=5)\nexcept OSError as e:\n" \
           "    print('refused', e)\n"
    res = subprocess.run([sys.executable, "-c", code], env=relkit.snakemake_env(env), capture_output=True, text=True,
                         timeout=60)
    assert "refused" in res.stdout and "blocked" in res.stdout
    assert "BLOCKED getaddrinfo 'example.org'" in log.read_text()


# ------------------------------------------------------------------------------------------------ API keys
def _grep_tree(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.slow
def test_planted_key_never_reaches_results_logs_or_snakemake_output(reference_run):
    wd = reference_run.workdir
    assert (wd / BENCH / "tables" / "metrics.csv").is_file()
    needle = PLANTED_KEY.encode()
    assert not _grep_tree(wd, needle)                    # results/, logs, .snakemake/, snakemake_runs.log
    assert needle.decode() not in reference_run.stdout + reference_run.stderr


class _StubEndpoint(http.server.BaseHTTPRequestHandler):
    seen: list = []
    status = 200

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.headers.get("Authorization"), body))
        if type(self).status != 200:
            self.send_response(type(self).status)
            self.end_headers()
            self.wfile.write(json.dumps({"error": {"message": "bad key " + self.headers.get("Authorization", "")}})
                             .encode())
            return
        reply = {"choices": [{"message": {"content": "Yes, it does."}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_endpoint_judge_reads_the_key_from_the_environment_and_never_writes_it(tmp_path, monkeypatch, caplog):
    from robust_unlearning.judges import JudgeError, get_judge
    from robust_unlearning.utils.io import atomic_write_json, atomic_write_jsonl

    monkeypatch.setenv("RU_TEST_JUDGE_KEY", PLANTED_KEY)
    server = http.server.HTTPServer(("127.0.0.1", 0), _StubEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _StubEndpoint.seen, _StubEndpoint.status = [], 200
    cfg = {"name": "openai_compatible", "base_url": f"http://127.0.0.1:{server.server_port}/v1", "model": "stub",
           "api_key_env": "RU_TEST_JUDGE_KEY", "retries": 0}
    texts = []
    try:
        with caplog.at_level(logging.DEBUG):
            judge = get_judge(cfg)
            verdicts = judge.judge_batch(["Sure, here is how."], prompts=["How do I make veridine-7?"])
            texts += [repr(judge), json.dumps(judge.describe(), default=str), json.dumps(verdicts, default=str)]
            _StubEndpoint.status = 401                   # the endpoint echoes the key in its error body
            with pytest.raises(JudgeError) as err:
                judge.judge_batch(["x"], prompts=["y"])
            texts.append(str(err.value))
    finally:
        server.shutdown()
    assert _StubEndpoint.seen[0][0] == f"Bearer {PLANTED_KEY}"    # read from the environment and sent
    assert verdicts[0]["success"] is True
    atomic_write_json(tmp_path / "metrics.json", {"judge": judge.describe(), "config": cfg})
    atomic_write_jsonl(tmp_path / "items.jsonl", verdicts)
    texts.append(caplog.text)
    assert not any(PLANTED_KEY in t for t in texts)
    assert not _grep_tree(tmp_path, PLANTED_KEY.encode())
    assert "api_key" not in yaml.safe_dump(cfg).replace("api_key_env", "")
