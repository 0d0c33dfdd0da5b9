# Stage 1: the benchmark in the one on-disk format.


rule prepare_data:
    output:
        directory(f"{B}/data"),
    params:
        benchmark=tracked_json("benchmark"),  # the shell passes BENCHMARK_JSON (common.smk, operational keys)
    log:
        f"{B}/logs/prepare_data.log",
    benchmark:
        f"{B}/benchmarks/prepare_data.tsv"
    conda:
        "../../envs/core.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "ru prepare-data --benchmark {BENCHMARK_JSON:q} --out {output:q} > {log:q} 2>&1"
