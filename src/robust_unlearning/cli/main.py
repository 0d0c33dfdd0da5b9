"""`ru`: one subcommand per pipeline rule. Thin: parse arguments, call the library, write outputs atomically.

Every subcommand can be run by hand outside Snakemake; the rules in workflow/rules/ call exactly these. Each job
log starts with the command that produced it (``# command: ru ...``), so a failed job is rerun by copying that
line into a shell in the directory given on the next line (``# cwd: ...``).
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EXAMPLES = """\
settings arguments (--settings, --train, --benchmark, ...) take inline JSON or the path of a .json/.yaml file:
  ru unlearn --method npo --settings '{"lr": 1e-5, "beta": 0.1}' --train train.yaml ...

examples:
  ru validate-config config/config.yaml
  ru unlearn --help                 the arguments of one subcommand
  ru --plugin my_method.py unlearn --method my_method ...    a method or attack defined outside the package
                                                            (docs/architecture.md, "Adding a method")
"""


def _settings_arg(text: str):
    """Inline JSON, or the path of a JSON/YAML file holding it (argparse ``type``)."""
    from ..utils.io import load_settings

    try:
        return load_settings(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


_json_arg = _settings_arg  # the former name


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Options accepted before and after the subcommand (``ru -v unlearn ...`` = ``ru unlearn -v ...``)."""
    dflt = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    g = parser.add_argument_group("general options")
    g.add_argument("-v", "--verbose", action="count", default=dflt(0),
                   help="more log output (-v: DEBUG from this package; -vv: DEBUG from every library)")
    g.add_argument("-q", "--quiet", action="count", default=dflt(0),
                   help="warnings and errors only (the '# command:' header is still written)")
    g.add_argument("--plugin", action="append", default=dflt([]), metavar="MODULE",
                   help="import MODULE (a dotted module name or a .py file) before running, so that the methods "
                        "and attacks it registers can be named; repeatable; also read from the RU_PLUGINS "
                        "environment variable (comma-separated)")
    g.add_argument("--trust-remote-code", action="store_true", default=dflt(False),
                   help="let models and tokenizers run their own code (config model.trust_remote_code: true); "
                        "refused otherwise")


def _threads(s) -> None:
    s.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: all the job was given; the rules pass their `threads`)")


def _seed(s, required=False, what="seeds everything the job draws at random") -> None:
    s.add_argument("--seed", type=int, default=None if required else 0, required=required, help=what)


def _device(s) -> None:
    s.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda or cuda:N")


def _data(s) -> None:
    s.add_argument("--data", required=True, metavar="DIR",
                   help="the benchmark folder written by `ru prepare-data` (results/<benchmark>/data)")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = argparse.ArgumentParser(prog="ru", description=__doc__, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"ru (robust-unlearning) {__version__}")
    _global_options(p, suppress=False)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help, description=help)
        _global_options(s, suppress=True)
        return s

    s = cmd("validate-config", "validate a config file against the schema and the registries")
    s.add_argument("config", help="the YAML config file (e.g. config/config.yaml or a preset in workflow/presets/)")

    s = cmd("prepare-data", "materialise a benchmark in the on-disk format (docs/benchmarks.md)")
    s.add_argument("--benchmark", type=_settings_arg, required=True, metavar="JSON|FILE",
                   help="the config's `benchmark` section")
    s.add_argument("--out", required=True, metavar="DIR", help="the benchmark folder to write (results/<benchmark>/data)")

    s = cmd("cache-model", "build or fetch the base model (or train the retrain oracle)")
    s.add_argument("--model", type=_settings_arg, required=True, metavar="JSON|FILE",
                   help="the config's `model` section")
    _data(s)
    s.add_argument("--role", choices=["base", "retrain", "pretrained"], default="base",
                   help="base: the model to unlearn from; retrain: the oracle trained without the forget set; "
                        "pretrained: the starting point that model.finetune fine-tunes (default: base)")
    s.add_argument("--base-dir", metavar="DIR", help="retrain: the base model dir (tokenizer, epoch count)")
    s.add_argument("--pretrained-dir", metavar="DIR",
                   help="model.finetune: the pretrained model dir the base / retrain models are fine-tuned from "
                        "(written by --role pretrained)")
    s.add_argument("--out", required=True, metavar="DIR", help="the model folder to write (results/<benchmark>/models/<role>)")
    _threads(s)

    s = cmd("train-probe", "PRISM stage 1: robust probe on the frozen base model")
    s.add_argument("--probe", type=_settings_arg, required=True, metavar="JSON|FILE",
                   help="the config's `unlearning.methods.prism.probe` section")
    s.add_argument("--train", type=_settings_arg, required=True, metavar="JSON|FILE",
                   help="the config's `unlearning.train` section (max_len is used)")
    s.add_argument("--benchmark", type=_settings_arg, required=True, metavar="JSON|FILE",
                   help="the config's `benchmark` section (forget_source / retain_source)")
    _data(s)
    s.add_argument("--model-dir", required=True, metavar="DIR", help="the base model folder")
    _seed(s)
    s.add_argument("--out", required=True, metavar="DIR", help="the probe folder to write")
    _threads(s)

    s = cmd("unlearn", "run one unlearning method on the base model")
    s.add_argument("--method", required=True, help="a registered method name (ga, graddiff, npo, simnpo, rmu, "
                                                   "sam_npo, task_vector, prism, or one from a --plugin)")
    s.add_argument("--settings", type=_settings_arg, required=True, metavar="JSON|FILE",
                   help="the method's hyperparameters, one combination (docs/methods.md)")
    s.add_argument("--train", type=_settings_arg, required=True, metavar="JSON|FILE",
                   help="the config's `unlearning.train` section: steps/epochs, batch_size, max_len, dtype, ...")
    s.add_argument("--benchmark", type=_settings_arg, required=True, metavar="JSON|FILE",
                   help="the config's `benchmark` section (forget_source / retain_source)")
    _data(s)
    s.add_argument("--model-dir", required=True, metavar="DIR", help="the base model folder to unlearn from")
    s.add_argument("--probe-dir", default=None, metavar="DIR", help="PRISM: the probe written by `ru train-probe`")
    _seed(s, required=True, what="the run's seed (data order, initialisation of anything random)")
    s.add_argument("--out", required=True, metavar="DIR",
                   help="the run folder to write (model/, train_log.jsonl, run.json)")
    s.add_argument("--checkpoint-dir", required=True, metavar="DIR",
                   help="resumable state, outside --out; rerunning the same command resumes from it")
    _device(s)
    _threads(s)

    s = cmd("attack", "run one attack setting against one model")
    s.add_argument("--attack", required=True, help="a registered attack name (relearn, prefill, gcg, ..., or one "
                                                   "from a --plugin)")
    s.add_argument("--settings", type=_settings_arg, required=True, metavar="JSON|FILE",
                   help="one setting of the attack (docs/evaluation.md)")
    _data(s)
    s.add_argument("--model-dir", required=True, metavar="DIR",
                   help="the model to attack (the base model for model-free input attacks)")
    _seed(s)
    s.add_argument("--out", required=True, metavar="DIR", help="the attack folder to write (attack.json, artefacts)")
    _device(s)
    _threads(s)

    s = cmd("evaluate", "evaluate one model, clean or under one attack setting")
    s.add_argument("--benchmark-name", required=True, help="the benchmark's name (recorded in metrics.json)")
    s.add_argument("--evaluation", type=_settings_arg, required=True, metavar="JSON|FILE",
                   help="the config's `evaluation` section (metrics, limits, dtype, under_attack)")
    s.add_argument("--judges", type=_settings_arg, default={}, metavar="JSON|FILE",
                   help="the config's `judges` section (default: answer_match and keyword_refusal)")
    _data(s)
    s.add_argument("--model-id", required=True,
                   help="the model's id in the results tree (models/base, unlearn/<method>/<params>/seed~<n>)")
    s.add_argument("--model-dir", required=True, metavar="DIR",
                   help="the model to load (the attacked model for model attacks)")
    s.add_argument("--attack", default="none", help="the attack the model is evaluated under (default: none)")
    s.add_argument("--attack-params", default="default", help="the attack setting's id (its folder name)")
    s.add_argument("--attack-settings", type=_settings_arg, default={}, metavar="JSON|FILE",
                   help="the attack setting (recorded in the provenance)")
    s.add_argument("--artefact-dir", default=None, metavar="DIR",
                   help="input attacks: the folder written by `ru attack`")
    s.add_argument("--reference", default=None, metavar="FILE",
                   help="clean metrics.json of the retrain oracle (PrivLeak AUC)")
    s.add_argument("--run-json", default=None, metavar="FILE",
                   help="run.json of the unlearning run (a diverged run is recorded, not evaluated)")
    _seed(s)
    s.add_argument("--out", required=True, metavar="DIR", help="the folder to write metrics.json and items.jsonl in")
    _device(s)
    _threads(s)

    s = cmd("aggregate", "tidy CSV, tables and figures from every metrics.json")
    s.add_argument("--benchmark-name", required=True, help="the benchmark's name")
    s.add_argument("--bench-dir", required=True, metavar="DIR", help="results/<benchmark>")
    s.add_argument("--expected", type=_settings_arg, default=None, metavar="JSON|FILE",
                   help="expected cells [[model_id, attack, params], ...]; a missing one is reported, not dropped")
    s.add_argument("--csv", required=True, metavar="FILE", help="tidy metrics CSV")
    s.add_argument("--summary", required=True, metavar="FILE", help="summary.md")
    s.add_argument("--tables-dir", required=True, metavar="DIR", help="paper-style tables (.md, .tex)")
    s.add_argument("--figures-dir", required=True, metavar="DIR", help="figures (.png, .pdf)")
    s.add_argument("--landscapes", nargs="*", default=[], metavar="FILE",
                   help="landscape.json files (loss-landscape figure)")

    s = cmd("landscape", "1-D loss-landscape slice of one model along a random direction")
    _data(s)
    s.add_argument("--model-dir", required=True, metavar="DIR", help="the model folder")
    s.add_argument("--points", type=int, default=11, help="points on the slice (default: 11)")
    s.add_argument("--label", default="model", help="legend label (the rule passes method and params)")
    _seed(s, what="seeds the random direction")
    s.add_argument("--out", required=True, metavar="FILE", help="landscape.json to write")
    _threads(s)
    return p


def command_line(argv: list[str], plugins: list[str]) -> str:
    """The shell line that reruns this job: ``ru`` + the arguments, shell-quoted. Plugins that came from the
    environment are written as ``--plugin`` options, so the line needs no environment to repeat the job."""
    extra = [a for m in plugins if m not in _given_plugins(argv) for a in ("--plugin", m)]
    return shlex.join(["ru", *extra, *argv])


def _given_plugins(argv: list[str]) -> list[str]:
    """The ``--plugin`` values in ``argv`` (read before parsing, for the header)."""
    out = []
    for i, a in enumerate(argv):
        if a == "--plugin" and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif a.startswith("--plugin="):
            out.append(a.split("=", 1)[1])
    return out


def configure_logging(verbose: int = 0, quiet: int = 0) -> None:
    """Library log records (per-metric timings, skipped figures, ...) go to stderr, i.e. into the job log."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=logging.WARNING if verbose < 2 else logging.DEBUG, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("robust_unlearning").setLevel(level)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from ..plugins import load_plugins, plugin_names

    if not {"-h", "--help", "--version"} & set(argv):
        # first, before parsing: even a job whose arguments are refused can be rerun from its log
        print(f"# command: {command_line(argv, plugin_names(_given_plugins(argv)))}", file=sys.stderr, flush=True)
        print(f"# cwd: {shlex.quote(os.getcwd())}", file=sys.stderr, flush=True)
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose, args.quiet)
    log = logging.getLogger("robust_unlearning.cli")
    from ..utils import faults
    from . import commands

    handler = getattr(commands, "cmd_" + args.command.replace("-", "_"))
    if args.trust_remote_code:
        from ..models.io import set_trust_remote_code

        set_trust_remote_code(True)
    t0 = time.perf_counter()
    try:
        load_plugins(args.plugin)
        faults.maybe_fail(args.command, getattr(args, "out", None) or getattr(args, "tables_dir", None))
        rc = int(handler(args) or 0)
        log.info("ru %s: done in %.1f s", args.command, time.perf_counter() - t0)
        return rc
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
