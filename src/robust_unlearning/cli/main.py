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


def _settings(s, flag: str, help: str, required: bool = True, default=None) -> None:
    """A settings argument: inline JSON or the path of a JSON/YAML file."""
    s.add_argument(flag, type=_settings_arg, required=required, default=default, metavar="JSON|FILE", help=help)


def _path(s, flag: str, help: str, metavar: str = "DIR", required: bool = True) -> None:
    s.add_argument(flag, required=required, default=None, metavar=metavar, help=help)


def _data(s) -> None:
    _path(s, "--data", "the benchmark folder written by `ru prepare-data` (results/<benchmark>/data)")


def _train_inputs(s, model_help: str) -> None:
    """The training-set arguments shared by train-probe and unlearn."""
    _settings(s, "--train", "the config's `unlearning.train` section: steps/epochs, batch_size, max_len, dtype, ...")
    _settings(s, "--benchmark", "the config's `benchmark` section (forget_source / retain_source)")
    _data(s)
    _path(s, "--model-dir", model_help)


def _dtype(s) -> None:
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="precision the model is loaded in (the rules pass model.dtype; default: float32)")


def _job_options(s, out_help: str, out_metavar: str = "DIR", seed: bool = True, device: bool = True,
                 seed_help: str = "seeds everything the job draws at random (default: 0)",
                 seed_required: bool = False) -> None:
    """--seed, --out, --device and --threads, in that order."""
    if seed:
        s.add_argument("--seed", type=int, default=None if seed_required else 0, required=seed_required,
                       help=seed_help)
    _path(s, "--out", out_help, metavar=out_metavar)
    if device:
        s.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda or cuda:N")
    s.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: all the job was given; the rules pass their `threads`)")


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
    s.add_argument("config", help="the YAML config file (e.g. config.yaml or a preset in workflow/presets/)")

    s = cmd("prepare-data", "materialise a benchmark in the on-disk format (docs/benchmarks.md)")
    _settings(s, "--benchmark", "the config's `benchmark` section")
    _path(s, "--out", "the benchmark folder to write (results/<benchmark>/data)")

    s = cmd("cache-model", "build or fetch the base model (or train the retrain oracle)")
    _settings(s, "--model", "the config's `model` section")
    _data(s)
    s.add_argument("--role", choices=["base", "retrain", "pretrained"], default="base",
                   help="base: the model to unlearn from; retrain: the oracle trained without the forget set; "
                        "pretrained: the starting point that model.finetune fine-tunes (default: base)")
    _path(s, "--base-dir", "retrain: the base model dir (tokenizer, epoch count)", required=False)
    _path(s, "--pretrained-dir", "model.finetune: the pretrained model dir the base / retrain models are "
                                 "fine-tuned from (written by --role pretrained)", required=False)
    _job_options(s, "the model folder to write (results/<benchmark>/models/<role>)", seed=False, device=False)

    s = cmd("train-probe", "PRISM stage 1: robust probe on the frozen base model")
    _settings(s, "--probe", "the config's `unlearning.methods.prism.probe` section")
    _train_inputs(s, "the base model folder")
    _dtype(s)
    _job_options(s, "the probe folder to write")

    s = cmd("unlearn", "run one unlearning method on the base model")
    s.add_argument("--method", required=True, help="a registered method name (ga, graddiff, npo, simnpo, rmu, "
                                                   "sam_npo, task_vector, prism, or one from a --plugin)")
    _settings(s, "--settings", "the method's hyperparameters, one combination (docs/methods.md)")
    _train_inputs(s, "the base model folder to unlearn from")
    _path(s, "--probe-dir", "PRISM: the probe written by `ru train-probe`", required=False)
    _path(s, "--checkpoint-dir", "resumable state, outside --out; rerunning the same command resumes from it")
    _job_options(s, "the run folder to write (model/, train_log.jsonl, run.json)",
                 seed_help="the run's seed (data order, initialisation of anything random)", seed_required=True)

    s = cmd("attack", "run one attack setting against one model")
    s.add_argument("--attack", required=True, help="a registered attack name (relearn, prefill, gcg, ..., or one "
                                                   "from a --plugin)")
    _settings(s, "--settings", "one setting of the attack (docs/evaluation.md)")
    _data(s)
    _path(s, "--model-dir", "the model to attack (the base model for model-free input attacks)")
    _path(s, "--checkpoint-dir", "relearn: resumable state, outside --out; rerunning the same command resumes "
          "from it", required=False)
    _dtype(s)
    _job_options(s, "the attack folder to write (attack.json, artefacts)")

    s = cmd("evaluate", "evaluate one model, clean or under one attack setting")
    s.add_argument("--benchmark-name", required=True, help="the benchmark's name (recorded in metrics.json)")
    _settings(s, "--evaluation", "the config's `evaluation` section (metrics, limits, dtype, under_attack)")
    _settings(s, "--judges", "the config's `judges` section (default: answer_match and keyword_refusal)",
              required=False, default={})
    _data(s)
    s.add_argument("--model-id", required=True,
                   help="the model's id in the results tree (models/base, unlearn/<method>/<params>/seed~<n>)")
    _path(s, "--model-dir", "the model to load (the attacked model for model attacks)")
    s.add_argument("--attack", default="none", help="the attack the model is evaluated under (default: none)")
    s.add_argument("--attack-params", default="default", help="the attack setting's id (its folder name)")
    _settings(s, "--attack-settings", "the attack setting (recorded in the provenance)", required=False, default={})
    _path(s, "--artefact-dir", "input attacks: the folder written by `ru attack`", required=False)
    _path(s, "--reference", "clean metrics.json of the retrain oracle (PrivLeak AUC)", "FILE", required=False)
    _path(s, "--run-json", "run.json of the unlearning run (a diverged run is recorded, not evaluated)", "FILE",
          required=False)
    _job_options(s, "the folder to write metrics.json and items.jsonl in")

    s = cmd("aggregate", "tidy CSV, tables and figures from every metrics.json")
    s.add_argument("--benchmark-name", required=True, help="the benchmark's name")
    _path(s, "--bench-dir", "results/<benchmark>")
    _settings(s, "--expected", "expected cells [[model_id, attack, params], ...]; a missing one is reported, "
                               "not dropped", required=False)
    _path(s, "--csv", "tidy metrics CSV", "FILE")
    _path(s, "--summary", "summary.md", "FILE")
    _path(s, "--tables-dir", "paper-style tables (.md, .tex)")
    _path(s, "--figures-dir", "figures (.png, .pdf)")
    s.add_argument("--landscapes", nargs="*", default=[], metavar="FILE",
                   help="landscape.json files (loss-landscape figure)")

    s = cmd("landscape", "1-D loss-landscape slice of one model along a random direction")
    _data(s)
    _path(s, "--model-dir", "the model folder")
    s.add_argument("--points", type=int, default=11, help="points on the slice (default: 11)")
    s.add_argument("--label", default="model", help="legend label (the rule passes method and params)")
    _dtype(s)
    _job_options(s, "landscape.json to write", "FILE", seed_help="seeds the random direction (default: 0)")
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
