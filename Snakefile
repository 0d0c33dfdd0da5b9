# Robust, balanced LLM unlearning: data -> base model -> (probe) -> unlearn -> attack -> evaluate -> aggregate.
# The embedded default (config.yaml) runs offline on 2 CPU cores; presets live in workflow/presets/.
from snakemake.utils import min_version

min_version("8.0")

# config.yaml is the default; a --configfile given on the command line REPLACES it (no deep merge, so a
# preset's method grid is never mixed with the default one). `--config key=value` overrides either.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/unlearn.smk"
include: "workflow/rules/attack.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/aggregate.smk"


# the warm worker of local runs (workflow/rules/common.smk): started once the DAG is built, stopped at the end
onstart:
    start_warm_worker()


onsuccess:
    stop_warm_worker()


onerror:
    stop_warm_worker()


rule all:
    input:
        all_targets(),
    default_target: True
