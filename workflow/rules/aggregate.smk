# Stage 6: tidy CSV (single source of truth), paper-style tables and figures; `snakemake --report` collects them.


# Every expected cell is an input, so a normal run aggregates only when the whole grid is done. After a
# `--keep-going` run in which some jobs failed, `snakemake --config allow_missing=true` runs this rule alone on
# the evaluations that exist; `--expected` still lists every cell, so each absent one becomes a `missing` (or
# `diverged`) row of the tables instead of a silent hole. A later normal run, once the failures are fixed,
# recomputes the failed jobs and re-aggregates (the input set has changed).
rule aggregate:
    input:
        metrics=lambda wc: existing_only(eval_path(*cell) for cell in expected_cells()),
        runs=lambda wc: existing_only(run_dir(r.model_id) for r in RUNS),
        landscapes=lambda wc: existing_only(landscape_targets()),
    output:
        csv=report(
            f"{B}/tables/metrics.csv",
            caption="../report/metrics_csv.rst",
            category="6. Aggregate",
            subcategory="Tidy metrics",
        ),
        summary=f"{B}/tables/summary.md",
        # mean ± 95 % interval over seeds per cell, and paired method differences with a sign-flip test
        intervals=f"{B}/tables/intervals.csv",
        paired=f"{B}/tables/paired.csv",
        # the report's viewer shows HTML and images (Markdown and CSV only as downloads): every table is also
        # written as a self-contained HTML page, and those are what the report lists
        summary_html=report(
            f"{B}/tables/summary.html",
            caption="../report/summary.rst",
            category="6. Aggregate",
            subcategory="Summary",
        ),
        tables=report(
            directory(f"{B}/tables/paper"),
            patterns=["{name}.html"],
            caption="../report/tables.rst",
            category=report_category,
            subcategory="Paper tables",
        ),
        figures=report(
            directory(f"{B}/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category=report_category,
            subcategory="Figures",
        ),
    params:
        bench=BENCH,
        expected=as_json(expected_cells()),
        bench_dir=lambda wc, output: os.path.dirname(os.path.dirname(output.csv)),
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
        "ru aggregate --benchmark-name {params.bench:q} --bench-dir {params.bench_dir:q} --expected {params.expected:q}"
        " --csv {output.csv:q} --summary {output.summary:q} --tables-dir {output.tables:q}"
        " --figures-dir {output.figures:q} --landscapes {input.landscapes:q} > {log:q} 2>&1"
