# Stage 3: one job per (method, hyperparameter combination, seed). Checkpoints live OUTSIDE the output folder
# (Snakemake deletes the outputs of failed jobs), so a preempted job resumes from its last step on rerun.


rule unlearn:
    input:
        unpack(unlearn_inputs),
    output:
        directory(f"{B}/unlearn/{{method}}/{{params}}/seed~{{seed}}"),
    params:
        ru=RU,
        settings=unlearn_settings,
        # the shell passes TRAIN_JSON / BENCHMARK_JSON (common.smk, operational keys)
        train=tracked_json("unlearning.train"),
        benchmark=tracked_json("benchmark"),
        probe=lambda wc, input: f"--probe-dir {shlex.quote(input.probe)}" if "probe" in input.keys() else "",
        checkpoint=f"{B}/checkpoints/unlearn/{{method}}/{{params}}/seed~{{seed}}",
    log:
        f"{B}/logs/unlearn/{{method}}/{{params}}/seed~{{seed}}.log",
    benchmark:
        f"{B}/benchmarks/unlearn/{{method}}/{{params}}/seed~{{seed}}.tsv"
    conda:
        "../../envs/core.yaml"
    threads: 1
    resources:
        **model_job_resources("unlearn"),
        gpu=lambda wildcards: job_processes("unlearn", wildcards),
    shell:
        "{params.ru} unlearn --method {wildcards.method:q} --settings {params.settings:q} --train {TRAIN_JSON:q}"
        " --benchmark {BENCHMARK_JSON:q} --data {input.data:q} --model-dir {input.base:q} {params.probe}"
        " --seed {wildcards.seed} --out {output:q} --checkpoint-dir {params.checkpoint:q}"
        " --threads {threads} > {log:q} 2>&1"
