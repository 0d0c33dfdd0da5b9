"""`ru`: one subcommand per pipeline rule. Thin: parse arguments, call the library, write outputs atomically.

Every subcommand can be run by hand outside Snakemake; the rules in workflow/rules/ call exactly these.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _json_arg(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ru", description=__doc__)
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let models and tokenizers run their own code (config model.trust_remote_code: true); "
                        "refused otherwise")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("validate-config", help="validate a config file against the schema and the registries")
    s.add_argument("config")

    s = sub.add_parser("prepare-data", help="materialise a benchmark in the on-disk format")
    s.add_argument("--benchmark", type=_json_arg, required=True, help="the config's benchmark section (JSON)")
    s.add_argument("--out", required=True)

    s = sub.add_parser("cache-model", help="build or fetch the base model (or train the retrain oracle)")
    s.add_argument("--model", type=_json_arg, required=True, help="the config's model section (JSON)")
    s.add_argument("--data", required=True)
    s.add_argument("--role", choices=["base", "retrain", "pretrained"], default="base")
    s.add_argument("--base-dir", help="retrain: the base model dir (tokenizer, epoch count)")
    s.add_argument("--pretrained-dir", help="model.finetune: the pretrained model dir the base / retrain "
                                            "models are fine-tuned from (written by --role pretrained)")
    s.add_argument("--out", required=True)
    s.add_argument("--threads", type=int, default=None)

    s = sub.add_parser("train-probe", help="PRISM stage 1: robust probe on the frozen base model")
    s.add_argument("--probe", type=_json_arg, required=True)
    s.add_argument("--train", type=_json_arg, required=True, help="unlearning.train (max_len, data sources)")
    s.add_argument("--benchmark", type=_json_arg, required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--model-dir", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.add_argument("--threads", type=int, default=None)

    s = sub.add_parser("unlearn", help="run one unlearning method on the base model")
    s.add_argument("--method", required=True)
    s.add_argument("--settings", type=_json_arg, required=True, help="method hyperparameters (JSON)")
    s.add_argument("--train", type=_json_arg, required=True, help="unlearning.train (JSON)")
    s.add_argument("--benchmark", type=_json_arg, required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--model-dir", required=True)
    s.add_argument("--probe-dir", default=None)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--checkpoint-dir", required=True)
    s.add_argument("--device", default="auto")
    s.add_argument("--threads", type=int, default=None)

    s = sub.add_parser("attack", help="run one attack setting against one model")
    s.add_argument("--attack", required=True)
    s.add_argument("--settings", type=_json_arg, required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--model-dir", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.add_argument("--device", default="auto")
    s.add_argument("--threads", type=int, default=None)

    s = sub.add_parser("evaluate", help="evaluate one model, clean or under one attack setting")
    s.add_argument("--benchmark-name", required=True)
    s.add_argument("--evaluation", type=_json_arg, required=True)
    s.add_argument("--judges", type=_json_arg, default={})
    s.add_argument("--data", required=True)
    s.add_argument("--model-id", required=True)
    s.add_argument("--model-dir", required=True, help="the model to load (the attacked model for model attacks)")
    s.add_argument("--attack", default="none")
    s.add_argument("--attack-params", default="default")
    s.add_argument("--attack-settings", type=_json_arg, default={})
    s.add_argument("--artefact-dir", default=None)
    s.add_argument("--reference", default=None, help="clean metrics.json of the retrain oracle (PrivLeak AUC)")
    s.add_argument("--run-json", default=None, help="run.json of the unlearning run (status, cost)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.add_argument("--device", default="auto")
    s.add_argument("--threads", type=int, default=None)

    s = sub.add_parser("aggregate", help="tidy CSV, tables and figures from every metrics.json")
    s.add_argument("--benchmark-name", required=True)
    s.add_argument("--bench-dir", required=True)
    s.add_argument("--expected", type=_json_arg, default=None, help="expected cells [[model_id, attack, params], ...]")
    s.add_argument("--csv", required=True, help="tidy metrics CSV")
    s.add_argument("--summary", required=True, help="summary.md")
    s.add_argument("--tables-dir", required=True, help="paper-style tables (.md, .tex)")
    s.add_argument("--figures-dir", required=True)
    s.add_argument("--landscapes", nargs="*", default=[], help="landscape.json files (loss-landscape figure)")

    s = sub.add_parser("landscape", help="1-D loss-landscape slice of one model along a random direction")
    s.add_argument("--data", required=True)
    s.add_argument("--model-dir", required=True)
    s.add_argument("--points", type=int, default=11)
    s.add_argument("--label", default="model", help="legend label (the rule passes method and params)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.add_argument("--threads", type=int, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..utils import faults
    from . import commands

    handler = getattr(commands, "cmd_" + args.command.replace("-", "_"))
    if args.trust_remote_code:
        from ..models.io import set_trust_remote_code

        set_trust_remote_code(True)
    try:
        faults.maybe_fail(args.command, getattr(args, "out", None) or getattr(args, "tables_dir", None))
        return int(handler(args) or 0)
    except SystemExit as exc:  # e.g. methods.loop.Preempted: say why the job stopped, keep its exit code
        if exc.code not in (0, None):
            print(f"ru {args.command}: stopped: {exc}", file=sys.stderr, flush=True)
        raise
    except Exception as exc:  # noqa: BLE001 - the traceback for debugging, then one line naming the culprit
        import traceback

        traceback.print_exc()
        print(f"ru {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
