# Stage 2: the base model (trained from scratch, or fetched once), the retrain oracle, PRISM's probe.


rule cache_pretrained_model:
    input:
        data=f"{B}/data",
    output:
        directory(f"{B}/models/pretrained"),
    params:
        ru=RU,
        # without the fine-tune recipe: changing it must not re-fetch / re-convert the pretrained model
        model=as_json({k: v for k, v in config["model"].items() if k not in ("finetune", "train")}),
    log:
        f"{B}/logs/cache_pretrained_model.log",
    benchmark:
        f"{B}/benchmarks/cache_pretrained_model.tsv"
    conda:
        PRETRAINED_SOURCE_ENV
    threads: 2
    resources:
        **model_job_resources("cache_pretrained_model", gpu=False),
    shell:
        "{params.ru} cache-model --model {params.model:q} --data {input.data:q} --role pretrained --out {output:q}"
        " --threads {threads} > {log:q} 2>&1"


rule cache_base_model:
    input:
        unpack(pretrained_inputs),
        data=f"{B}/data",
    output:
        # protected(): read-only once written, so no rule and no --forcerun overwrites the model that every run
        # starts from (Snakemake refuses; delete or `chmod -R u+w` it first to rebuild it on purpose)
        protected(directory(f"{B}/models/base")),
    params:
        ru=RU,
        model=as_json(config["model"]),
    log:
        f"{B}/logs/cache_base_model.log",
    benchmark:
        f"{B}/benchmarks/cache_base_model.tsv"
    conda:
        BASE_SOURCE_ENV
    threads: 2
    resources:
        **model_job_resources("cache_base_model", gpu=False),
    shell:
        "{params.ru} cache-model --model {params.model:q} --data {input.data:q} --role base --out {output:q}"
        " --threads {threads} > {log:q} 2>&1"


rule train_retrain_oracle:
    input:
        unpack(pretrained_inputs),
        data=f"{B}/data",
        base=f"{B}/models/base",
    output:
        directory(f"{B}/models/retrain"),
    params:
        ru=RU,
        model=as_json(config["model"]),
    log:
        f"{B}/logs/train_retrain_oracle.log",
    benchmark:
        f"{B}/benchmarks/train_retrain_oracle.tsv"
    conda:
        "../../envs/core.yaml"
    # One thread, started first (every evaluation waits for its numbers): it runs beside the unlearning jobs,
    # which need only the base model. A second thread makes a model this small 1.4-1.6x faster, not 2x, so two
    # one-thread jobs get more done (docs/findings.md, "Making the default faster (2026-12-05, evening)").
    priority: 10
    threads: 1
    resources:
        **model_job_resources("train_retrain_oracle", gpu=False),
    shell:
        "{params.ru} cache-model --model {params.model:q} --data {input.data:q} --role retrain --base-dir {input.base:q}"
        " --out {output:q} --threads {threads} > {log:q} 2>&1"


rule train_probe:
    input:
        data=f"{B}/data",
        base=f"{B}/models/base",
    output:
        directory(f"{B}/probe/seed~{{seed}}"),
    params:
        ru=RU,
        probe=tracked_json("probe"),
        # the shell passes PROBE_JSON / TRAIN_JSON / BENCHMARK_JSON (common.smk, operational keys)
        train=tracked_json("unlearning.train"),
        benchmark=tracked_json("benchmark"),
    log:
        f"{B}/logs/train_probe/seed~{{seed}}.log",
    benchmark:
        f"{B}/benchmarks/train_probe/seed~{{seed}}.tsv"
    conda:
        "../../envs/core.yaml"
    threads: 1
    resources:
        **model_job_resources("train_probe"),
        gpu=1,
    shell:
        "{params.ru} train-probe --probe {PROBE_JSON:q} --train {TRAIN_JSON:q} --benchmark {BENCHMARK_JSON:q}"
        " --data {input.data:q} --model-dir {input.base:q} --seed {wildcards.seed} --out {output:q}"
        " --threads {threads} --dtype {MODEL_DTYPE} > {log:q} 2>&1"
