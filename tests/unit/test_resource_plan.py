"""Each paper preset planned by Snakemake with its model's real architecture (docs/cluster.md, "Resources follow the
model"): the published config.json of Llama-2-7B (MUSE-News), ICLM-7B (MUSE-Books) and Ministral-8B-Instruct-2410
(WMDP) sit in a temporary Hugging Face hub cache in the hub's own layout, offline, and ``snakemake -n -p`` plans
each preset in a copy of the workflow. Every job that loads a model must request at least the estimate for that
model (and at least the bytes its weights, gradients and optimizer state need, counted here independently), and
must load it in the precision the preset states for that load: a 7-8B model is never loaded in float32 by
default, only where a preset writes float32."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
import relkit  # noqa: E402

from robust_unlearning import resources as R  # noqa: E402
from robust_unlearning.config import validate_config_cached  # noqa: E402
from robust_unlearning.config.grid import attack_settings, unlearn_runs  # noqa: E402

pytestmark = pytest.mark.slow        # three Snakemake dry runs side by side

FIXTURES = ROOT / "tests" / "fixtures" / "model_configs"
PRESETS = {"muse_news": "llama-2-7b", "muse_books": "iclm-7b", "wmdp_bio": "ministral-8b-instruct-2410"}
MODEL_RULES = {"cache_base_model", "train_probe", "unlearn", "attack_model", "attack_prompt_model", "attack_shared",
               "evaluate", "loss_landscape"}
GPU_RULES = MODEL_RULES - {"cache_base_model", "attack_shared"}
COMMIT = "c0ffee0000000000000000000000000000000000"


def _hub_cache(root: Path) -> None:
    """Each preset's model id → its fixture, as models--org--name/{refs/main, snapshots/<commit>/config.json},
    under the commit the preset pins (model.revision), else under a made-up one that main points to."""
    for name, fixture in PRESETS.items():
        model = yaml.safe_load((ROOT / "workflow" / "presets" / f"{name}.yaml").read_text())["model"]
        commit = model.get("revision") or COMMIT
        folder = root / ("models--" + model["name_or_path"].replace("/", "--"))
        (folder / "refs").mkdir(parents=True)
        (folder / "refs" / "main").write_text(commit)
        (folder / "snapshots" / commit).mkdir(parents=True)
        (folder / "snapshots" / commit / "config.json").write_text((FIXTURES / f"{fixture}.json").read_text())


def parse_jobs(text: str) -> list[dict]:
    """{rule, wildcards, resources, shell} of every job in ``snakemake -n -p`` output."""
    jobs = []
    for block in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?rule )", text):
        head = re.search(r"^(?:local)?rule (\w+):$", block, re.M)
        if not head:
            continue
        job = {"rule": head.group(1), "wildcards": {}, "resources": {}, "shell": ""}
        if m := re.search(r"^\s+wildcards: (.*)$", block, re.M):
            job["wildcards"] = dict(kv.split("=", 1) for kv in m.group(1).split(", "))
        if m := re.search(r"^\s+resources: (.*)$", block, re.M):
            for kv in m.group(1).split(", "):
                key, _, value = kv.partition("=")
                job["resources"][key] = int(value) if value.isdigit() else value
        if m := re.search(r"^Shell command: (.*)$", block, re.M):
            job["shell"] = m.group(1)
        jobs.append(job)
    return jobs


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    """{preset: (validated config, jobs, snakemake output)}: the three dry runs run side by side."""
    top = tmp_path_factory.mktemp("resource_plan")
    _hub_cache(top / "hub")
    env = relkit.snakemake_env({"HF_HUB_CACHE": str(top / "hub"), "HF_HUB_OFFLINE": "1"})
    env.pop("HF_HOME", None)
    procs, cfgs = {}, {}
    for name in PRESETS:
        wd = relkit.copy_workflow(top / name)
        # the deep config validation here, in this process (torch is imported once), leaving the marker the
        # workflow looks for: each dry run then only checks the schema (workflow/rules/common.smk)
        raw = yaml.safe_load((ROOT / "workflow" / "presets" / f"{name}.yaml").read_text())
        cfgs[name] = validate_config_cached(raw, cache_dir=wd / ".snakemake" / "ru_validated")
        cmd = [str(relkit.BIN / "snakemake"), "-n", "-p", "--configfile", f"workflow/presets/{name}.yaml",
               "--cores", "1"]
        procs[name] = subprocess.Popen(cmd, cwd=wd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True)
    out = {}
    for name, proc in procs.items():
        text, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, text[-4000:]
        out[name] = (cfgs[name], parse_jobs(text), text)
    return out


def _job_kwargs(cfg: dict, job: dict) -> dict:
    wc = job["wildcards"]
    kw = {}
    if job["rule"] == "unlearn":
        run = {r.model_id: r for r in unlearn_runs(cfg)}[f"unlearn/{wc['method']}/{wc['params']}/seed~{wc['seed']}"]
        kw.update(method=run.method, method_settings=run.settings)
    if wc.get("attack", "none") != "none":
        setting = {(a.attack, a.params): a for a in attack_settings(cfg)}[(wc["attack"], wc["aparams"])]
        kw.update(attack=wc["attack"], attack_settings=setting.settings)
    return kw


@pytest.mark.parametrize("name", PRESETS)
def test_every_job_requests_at_least_the_estimate_of_its_model(plans, name):
    cfg, jobs, text = plans[name]
    assert "fallback" not in text, "the planner did not find the model's config.json in the hub cache"
    arch = R.Architecture.from_config(json.loads((FIXTURES / f"{PRESETS[name]}.json").read_text()))
    n = arch.n_params
    assert n > 6e9
    model_jobs = [j for j in jobs if j["rule"] in MODEL_RULES]
    assert {j["rule"] for j in model_jobs} >= {"cache_base_model", "train_probe", "unlearn", "attack_model",
                                               "evaluate"}
    rows = {}
    for job in model_jobs:
        rule, res = job["rule"], job["resources"]
        kw = _job_kwargs(cfg, job)
        est = R.estimate_job(rule, cfg, arch, **kw)
        assert res["mem_mb"] >= est.mem_mb and res["runtime"] >= est.runtime, (job, est)
        if rule in GPU_RULES:
            assert res.get("gpu") == 1 and res["gpu_mem_mb"] >= est.gpu_mem_mb, (job, est)
        # independent floors, in bytes: every model job reads the bf16 weights; training holds the weights,
        # their gradients and AdamW's two moments (bf16, as the presets train)
        device = res["gpu_mem_mb"] * 1e6 if rule in GPU_RULES else res["mem_mb"] * 1e6
        if rule == "attack_shared" and kw.get("attack") not in R.SHARED_MODEL_ATTACKS:
            continue                                    # prefill / multi_turn items: tokenizer and data only
        assert res["mem_mb"] * 1e6 >= 2 * n, job
        assert device >= 2 * n, job
        if rule == "unlearn" or (rule == "attack_model" and kw["attack"] == "relearn"):
            assert device >= 4 * 2 * n, job
        label = f"{rule} {kw.get('method') or kw.get('attack') or ''}".strip()
        rows[label] = (res["mem_mb"], res.get("gpu_mem_mb", 0), res["runtime"])
    # shown with -s: the requests of the preset, per rule
    print(f"\n{name} ({PRESETS[name]}, {n:,} parameters)")
    for label, (mem, gpu, runtime) in sorted(rows.items()):
        print(f"  {label:32s} mem_mb {mem:>7}  gpu_mem_mb {gpu:>7}  runtime {runtime:>5} min")


def _load_dtypes(job: dict) -> list[str]:
    """The precision(s) a job's command loads its model in: --dtype, or the dtype of the JSON section the
    subcommand loads with (unlearn: --train, evaluate: --evaluation, cache-model: --model)."""
    argv = shlex.split(job["shell"].split(" > ")[0])
    opts = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}
    sub = argv[1] if argv[0] == "ru" else argv[2]
    if "--dtype" in opts:
        return [opts["--dtype"]]
    section = {"unlearn": "--train", "evaluate": "--evaluation", "cache-model": "--model"}.get(sub)
    return [json.loads(opts[section]).get("dtype", "float32 (unset)")] if section else []


# where each subcommand takes its load precision from (workflow/rules/*.smk, cli/commands.py); every other model
# job gets --dtype model.dtype
DTYPE_KEY = {"unlearn": ("unlearning", "train", "dtype"), "evaluate": ("evaluation", "dtype")}


@pytest.mark.parametrize("name", PRESETS)
def test_every_job_loads_the_model_in_the_precision_the_preset_states(plans, name):
    """Each model-loading command carries the precision its preset states for that load, and the preset states
    it: no job falls back to the schema's float32 default. float32 appears only where a preset writes it."""
    cfg, jobs, _ = plans[name]
    raw = yaml.safe_load((ROOT / "workflow" / "presets" / f"{name}.yaml").read_text())
    checked = set()
    for job in jobs:
        if job["rule"] not in MODEL_RULES:
            continue
        key = DTYPE_KEY.get(job["rule"], ("model", "dtype"))
        node = raw
        for part in key:
            node = (node or {}).get(part)
        assert node is not None, f"{name}: {'.'.join(key)} is not set, so {job['rule']} would load in float32"
        dtypes = _load_dtypes(job)
        assert dtypes, f"{job['rule']}: no precision in its command: {job['shell'][:300]}"
        assert dtypes == [node], (job["rule"], dtypes, ".".join(key), node)
        checked.add(job["rule"])
    # training and the model itself are bf16 in every paper preset (docs/methods.md, "The shared training loop")
    assert cfg["model"]["dtype"] == cfg["unlearning"]["train"]["dtype"] == "bfloat16"
    assert {"unlearn", "evaluate", "train_probe", "attack_model", "cache_base_model"} <= checked


def test_the_parser_reads_a_job_block():
    text = ("[Sat Dec  5 23:09:09 2026]\nrule unlearn:\n    wildcards: method=ga, params=lr~1e-5, seed=0\n"
            "    resources: tmpdir=/tmp, runtime=320, gpu_mem_mb=71000, gpu=1, mem_mb=69000, mem=69 GB\n"
            "Shell command: ru unlearn --method ga --train '{\"dtype\": \"bfloat16\"}' --out x > log 2>&1\n")
    (job,) = parse_jobs(text)
    assert job["rule"] == "unlearn" and job["wildcards"]["params"] == "lr~1e-5"
    assert job["resources"]["gpu_mem_mb"] == 71000 and job["resources"]["mem_mb"] == 69000
    assert _load_dtypes(job) == ["bfloat16"]
