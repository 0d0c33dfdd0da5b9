# Stage 6: tidy CSV (single source of truth), paper-style tables and figures.


rule aggregate:
    input:
        metrics=lambda wc: [eval_path(*cell) for cell in expected_cells()],
        runs=[run_dir(r.model_id) for r in RUNS],
        landscapes=lambda wc: landscape_targets(),
    output:
        csv=f"{B}/tables/metrics.csv",
        summary=f"{B}/tables/summary.md",
        figures=directory(f"{B}/figures"),
    params:
        expected=as_json(expected_cells()),
        bench_dir=B,
        tables=f"{B}/tables",
    log:
        f"{B}/logs/aggregate.log",
    benchmark:
        f"{B}/benchmarks/aggregate.tsv"
    conda:
        "../../envs/core.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    shell:
        "ru aggregate --benchmark-name {BENCH:q} --bench-dir {params.bench_dir:q} --expected {params.expected:q}"
        " --tables-dir {params.tables:q} --figures-dir {output.figures:q} --landscapes {input.landscapes:q}"
        " > {log:q} 2>&1"
