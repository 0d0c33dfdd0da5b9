# Stage 5: one job per (model, attack setting). Clean evaluations use attack "none" and params "default".


rule evaluate:
    input:
        unpack(eval_inputs),
    output:
        metrics=f"{B}/eval/{{model_id}}/{{attack}}/{{aparams}}/metrics.json",
        records=f"{B}/eval/{{model_id}}/{{attack}}/{{aparams}}/items.jsonl",
    params:
        ru=RU,
        bench=BENCH,
        evaluation=tracked_json("evaluation"),  # the shell passes EVALUATION_JSON (common.smk, operational keys)
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
        **model_job_resources("evaluate"),
        gpu=1,
    shell:
        "{params.ru} evaluate --benchmark-name {params.bench:q} --evaluation {EVALUATION_JSON:q} --judges {params.judges:q}"
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
        ru=RU,
        model=lambda wc: model_dir(wc.model_id),
        points=config["report"]["landscape_points"],
        label=landscape_label,
    log:
        f"{B}/logs/landscape/{{model_id}}.log",
    benchmark:
        f"{B}/benchmarks/landscape/{{model_id}}.tsv"
    conda:
        "../../envs/core.yaml"
    threads: 1
    resources:
        **model_job_resources("loss_landscape"),
        gpu=1,
    shell:
        "{params.ru} landscape --data {input.data:q} --model-dir {params.model:q} --points {params.points}"
        " --label {params.label:q}"
        " --out {output:q} --threads {threads} --dtype {MODEL_DTYPE} > {log:q} 2>&1"
