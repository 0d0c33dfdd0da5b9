# Stage 4: attacks. Model attacks (relearn, quantize, weight_noise) and model-optimised prompts (gcg, genetic
# templates) run per attacked model; model-free input artefacts (prefill items, conversations, PGD / steering
# settings) are built once per setting and applied by the evaluation rule.


# A model attack writes a full model copy (≈ 27 GB for a 7B model in fp32; a grid plans dozens). The copy is
# temp(): Snakemake deletes it once every evaluation that reads it has finished. attack.json, next to it and
# kept, records the attack's settings and result and the deleted folder's files (size and sha256, from the
# model's weights_manifest.json); the evaluations' metrics stay. Re-evaluating an attacked model later re-runs
# the attack (seeded: the same copy).
rule attack_model:
    input:
        unpack(attacked_model_input),
    output:
        attack=f"{B}/attack/{{attack}}/{{aparams}}/{{model_id}}/attack.json",
        model=temp(directory(f"{B}/attack/{{attack}}/{{aparams}}/{{model_id}}/model")),
    wildcard_constraints:
        attack=r"relearn|quantize|weight_noise",
    params:
        ru=RU,
        settings=lambda wc: as_json(ATTACK_BY_KEY[(wc.attack, wc.aparams)].settings),
        model=lambda wc: model_dir(wc.model_id),
        seed=lambda wc: attack_seed(wc.model_id),
        out=lambda wc, output: os.path.dirname(output.attack),
        # relearn's resumable state: outside the outputs (Snakemake deletes those of a failed job), like unlearn's
        checkpoint=f"{B}/checkpoints/attack/{{attack}}/{{aparams}}/{{model_id}}",
    log:
        f"{B}/logs/attack/{{attack}}/{{aparams}}/{{model_id}}.log",
    benchmark:
        f"{B}/benchmarks/attack/{{attack}}/{{aparams}}/{{model_id}}.tsv"
    conda:
        attack_model_env
    threads: 1
    resources:
        **model_job_resources("attack_model"),
        gpu=lambda wildcards: job_processes("attack_model", wildcards),
    # an unlearning run that diverged has nothing to attack: `ru attack` then writes attack.json alone (its
    # status) and the empty model folder only completes the job's outputs (the evaluation reads the status)
    shell:
        "{params.ru} attack --attack {wildcards.attack:q} --settings {params.settings:q} --data {input.data:q}"
        " --model-dir {params.model:q} --seed {params.seed} --out {params.out:q} --threads {threads} --dtype {MODEL_DTYPE}"
        " --checkpoint-dir {params.checkpoint:q} > {log:q} 2>&1 && mkdir -p {output.model:q}"


# prompts optimised against one model (GCG suffixes, jailbreak templates): small artefacts, kept
rule attack_prompt_model:
    input:
        unpack(attacked_model_input),
    output:
        directory(f"{B}/attack/{{attack}}/{{aparams}}/{{model_id}}"),
    wildcard_constraints:
        attack=r"gcg|jailbreak_templates",
    params:
        ru=RU,
        settings=lambda wc: as_json(ATTACK_BY_KEY[(wc.attack, wc.aparams)].settings),
        model=lambda wc: model_dir(wc.model_id),
        seed=lambda wc: attack_seed(wc.model_id),
    log:
        f"{B}/logs/attack/{{attack}}/{{aparams}}/{{model_id}}.log",
    benchmark:
        f"{B}/benchmarks/attack/{{attack}}/{{aparams}}/{{model_id}}.tsv"
    conda:
        "../../envs/core.yaml"
    threads: 1
    resources:
        **model_job_resources("attack_prompt_model"),
        gpu=1,
    shell:
        "{params.ru} attack --attack {wildcards.attack:q} --settings {params.settings:q} --data {input.data:q}"
        " --model-dir {params.model:q} --seed {params.seed} --out {output:q} --threads {threads} --dtype {MODEL_DTYPE}"
        " > {log:q} 2>&1"


rule attack_shared:
    input:
        data=f"{B}/data",
        base=f"{B}/models/base",
    output:
        directory(f"{B}/attack/{{attack}}/{{aparams}}/shared"),
    wildcard_constraints:
        attack=r"prefill|multi_turn|latent|direction",
    params:
        ru=RU,
        settings=lambda wc: as_json(ATTACK_BY_KEY[(wc.attack, wc.aparams)].settings),
    log:
        f"{B}/logs/attack/{{attack}}/{{aparams}}/shared.log",
    benchmark:
        f"{B}/benchmarks/attack/{{attack}}/{{aparams}}/shared.tsv"
    conda:
        "../../envs/core.yaml"
    threads: 1
    resources:
        **model_job_resources("attack_shared", gpu=False),
    shell:
        "{params.ru} attack --attack {wildcards.attack:q} --settings {params.settings:q} --data {input.data:q}"
        " --model-dir {input.base:q} --out {output:q} --threads {threads} --dtype {MODEL_DTYPE} > {log:q} 2>&1"
