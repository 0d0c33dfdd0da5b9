# Stage 5: one job per (model, attack setting). Clean evaluations use attack "none" and params "default".


def eval_inputs(wildcards):
    mid, attack = wildcards.model_id, wildcards.attack
    inputs = {"data": f"{B}/data"}
    if mid.startswith("unlearn/"):
        inputs["run"] = run_dir(mid)
    else:
        inputs["model"] = model_dir(mid)
    if attack != "none":
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
    if "artefact" in input.keys():
        opts += ["--artefact-dir", input.artefact]
    if "reference" in input.keys():
        opts += ["--reference", input.reference]
    if "run" in input.keys():
        opts += ["--run-json", f"{input.run}/run.json"]
    if wildcards.attack != "none":
        opts += ["--attack-settings", as_json(ATTACK_BY_KEY[(wildcards.attack, wildcards.aparams)].settings)]
    return " ".join(shlex.quote(o) for o in opts)


rule evaluate:
    input:
        unpack(eval_inputs),
    output:
        metrics=f"{B}/eval/{{model_id}}/{{attack}}/{{aparams}}/metrics.json",
        records=f"{B}/eval/{{model_id}}/{{attack}}/{{aparams}}/items.jsonl",
    params:
        evaluation=as_json(config["evaluation"]),
        judges=as_json(config["judges"]),
        model=eval_model_dir,
        options=eval_options,
        seed=lambda wc: attack_seed(wc.model_id),
        out=lambda wc, output: os.path.dirname(output.metrics),
    log:
        f"{B}/logs/eval/{{model_id}}/{{attack}}/{{aparams}}.log",
    benchmark:
        f"{B}/benchmarks/eval/{{model_id}}/{{attack}}/{{aparams}}.tsv"
    conda:
        "../../envs/core.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=1,
    shell:
        "ru evaluate --benchmark-name {BENCH:q} --evaluation {params.evaluation:q} --judges {params.judges:q}"
        " --data {input.data:q} --model-id {wildcards.model_id:q} --model-dir {params.model:q}"
        " --attack {wildcards.attack:q} --attack-params {wildcards.aparams:q} {params.options}"
        " --seed {params.seed} --out {params.out:q} --threads {threads} > {log:q} 2>&1"


rule loss_landscape:
    input:
        data=f"{B}/data",
        run=lambda wc: run_dir(wc.model_id) if wc.model_id.startswith("unlearn/") else model_dir(wc.model_id),
    output:
        f"{B}/landscape/{{model_id}}/landscape.json",
    params:
        model=lambda wc: model_dir(wc.model_id),
        points=config["report"]["landscape_points"],
        label=lambda wc: wc.model_id.split("/")[-1] if wc.model_id.startswith("models/")
        else " ".join(wc.model_id.split("/")[1:3]),
    log:
        f"{B}/logs/landscape/{{model_id}}.log",
    benchmark:
        f"{B}/benchmarks/landscape/{{model_id}}.tsv"
    conda:
        "../../envs/core.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "ru landscape --data {input.data:q} --model-dir {params.model:q} --points {params.points}"
        " --label {params.label:q}"
        " --out {output:q} --threads {threads} > {log:q} 2>&1"
