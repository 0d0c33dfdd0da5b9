# Helpers shared by every rule: validated config, grid, paths. No science here.
import json
import shlex

from robust_unlearning.config import validate_config
from robust_unlearning.config.grid import attack_settings, has_retrain, unlearn_runs

try:
    config = validate_config(config)
except ValueError as exc:  # ConfigValidationError: message names the key
    raise WorkflowError(str(exc))

RESULTS = config["results_dir"]
BENCH = config["benchmark"]["name"]
B = f"{RESULTS}/{BENCH}"
RUNS = unlearn_runs(config)
RUN_BY_ID = {r.model_id: r for r in RUNS}
ATTACKS = attack_settings(config)
ATTACK_BY_KEY = {(a.attack, a.params): a for a in ATTACKS}
MODEL_ATTACKS = {"relearn", "quantize", "weight_noise"}
# input attacks whose artefact is optimised against the attacked model (per model); the others are model-free
PER_MODEL_INPUT_ATTACKS = {"gcg", "jailbreak_templates"}
NEEDS_PROBE = any(r.method == "prism" for r in RUNS)

wildcard_constraints:
    bench=r"[a-z_]+",
    method=r"[a-z_]+",
    params=r"[^/]+",
    seed=r"\d+",
    attack=r"none|relearn|prefill|jailbreak_templates|multi_turn|gcg|latent|direction|quantize|weight_noise",
    aparams=r"[^/]+",
    model_id=r"models/base|models/retrain|unlearn/[a-z_]+/[^/]+/seed~\d+",


def as_json(obj):
    """A JSON string for a shell argument; rules always quote it with {params.x:q}."""
    return json.dumps(obj, sort_keys=True)


def model_dir(model_id):
    return f"{B}/{model_id}" if model_id.startswith("models/") else f"{B}/{model_id}/model"


def run_dir(model_id):
    return f"{B}/{model_id}"


def attacked_model_ids():
    targets = set(config["attacks"]["targets"])
    ids = []
    if "base" in targets:
        ids.append("models/base")
    if "retrain" in targets and has_retrain(config):
        ids.append("models/retrain")
    ids += [r.model_id for r in RUNS if "unlearned" in targets or r.method in targets]
    return ids


def clean_eval_ids():
    ids = ["models/base"] + (["models/retrain"] if has_retrain(config) else [])
    return ids + [r.model_id for r in RUNS]


def expected_cells():
    """Every (model id, attack, params) the grid asks for: the aggregate marks absent ones as missing."""
    cells = [[m, "none", "default"] for m in clean_eval_ids()]
    for m in attacked_model_ids():
        cells += [[m, a.attack, a.params] for a in ATTACKS]
    return cells


def eval_path(model_id, attack="none", aparams="default"):
    return f"{B}/eval/{model_id}/{attack}/{aparams}/metrics.json"


def all_targets():
    targets = [eval_path(*cell) for cell in expected_cells()]
    targets += [f"{B}/tables/metrics.csv", f"{B}/tables/summary.md"]
    return targets


def attack_out(attack, aparams, model_id):
    """Where an attack's output lives: per model, or shared for model-free input artefacts."""
    if attack in MODEL_ATTACKS or attack in PER_MODEL_INPUT_ATTACKS:
        return f"{B}/attack/{attack}/{aparams}/{model_id}"
    return f"{B}/attack/{attack}/{aparams}/shared"


def landscape_targets():
    if not config["report"]["loss_landscape"]:
        return []
    return [f"{B}/landscape/{m}/landscape.json" for m in clean_eval_ids()]
