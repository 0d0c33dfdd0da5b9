"""Implementations of the `ru` subcommands (one per rule). Heavy imports (torch and everything that pulls it in,
such as ``utils.repro``) stay inside the functions, so that `ru --help` and `ru validate-config` start quickly."""
from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path

from ..utils.io import atomic_write_json, atomic_write_jsonl, read_json

log = logging.getLogger("robust_unlearning.cli")


def _log(msg: str) -> None:
    """A job's summary line; reaches the job log through the logging set up by ``ru`` (silenced by -q)."""
    log.info("%s", msg)


def cmd_validate_config(args) -> int:
    from ..config import load_config, validate_config

    cfg = validate_config(load_config(args.config))
    from ..config.grid import attack_settings, unlearn_runs

    print(f"{args.config}: valid ({len(unlearn_runs(cfg))} unlearning runs, {len(attack_settings(cfg))} attack settings)")
    return 0


def cmd_prepare_data(args) -> int:
    from ..data.prepare import prepare_benchmark

    manifest = prepare_benchmark(args.benchmark, Path(args.out))
    _log(f"prepared {args.benchmark['name']} in {args.out} ({len(manifest.get('files', {}))} files)")
    return 0


def cmd_cache_model(args) -> int:
    from ..models.cache import cache_model
    from ..utils.repro import configure_threads

    configure_threads(args.threads)
    summary = cache_model(args.model, Path(args.data), Path(args.out), role=args.role,
                          base_dir=Path(args.base_dir) if args.base_dir else None,
                          pretrained_dir=Path(args.pretrained_dir) if getattr(args, "pretrained_dir", None) else None)
    _log(json.dumps({k: v for k, v in summary.items() if k != "history"}, default=str))
    return 0


def _load(model_dir, dtype="float32", device="cpu"):
    from ..models.io import load_model, load_tokenizer

    return load_model(model_dir, dtype=dtype, device=device), load_tokenizer(model_dir)


def cmd_train_probe(args) -> int:
    from ..data.formats import Benchmark
    from ..data.unlearning_sets import build_run_examples
    from ..methods.probe import train_probe
    from ..utils.repro import configure_threads, pick_device, seed_everything

    configure_threads(args.threads)
    seed_everything(args.seed)
    model, tok = _load(args.model_dir, dtype=args.dtype, device=str(pick_device(args.device)))
    bench = Benchmark(args.data)
    max_len = int(args.train.get("max_len", 256))
    forget, retain = build_run_examples(bench, tok, args.benchmark, max_len)   # sources, prompt_format, pad labels
    summary = train_probe(model, tok, forget, retain, args.probe, args.seed, Path(args.out))
    _log(json.dumps(summary, default=str))
    return 0


def cmd_unlearn(args) -> int:
    from .launch import relaunch, ru_argv

    n_proc = (args.train or {}).get("num_processes")
    if isinstance(n_proc, int) and n_proc > 1:   # before torch: the job becomes N processes (cli/launch.py)
        relaunch(n_proc, ru_argv(args), (args.train or {}).get("distributed"))
    from ..data.formats import Benchmark
    from ..data.unlearning_sets import build_run_examples
    from ..methods import TrainConfig, build_method, run_unlearning
    from ..methods import distributed
    from ..utils.repro import configure_threads, input_revisions, pick_device, seed_everything

    build_method(args.method, args.settings)      # a typo in the settings fails now, not after loading the model
    TrainConfig.from_dict(args.train)
    group = distributed.init()                     # one of several processes: joins them, takes its GPU
    threads = configure_threads(args.threads)
    seed_everything(args.seed)
    device = pick_device(args.device)
    dtype = args.train.get("dtype", "float32")
    model, tok = _load(args.model_dir, dtype=dtype, device=str(device))
    bench = Benchmark(args.data)
    max_len = int(args.train.get("max_len", 256))
    forget, retain = build_run_examples(bench, tok, args.benchmark, max_len)   # sources, prompt_format, pad labels
    _log(f"unlearn {args.method} {args.settings} seed {args.seed}: {len(forget)} forget / {len(retain)} retain "
         f"examples, device {device}, {threads} threads")
    run_unlearning(model, tok, args.method, args.settings, args.train, forget, retain, Path(args.out), args.seed,
                   checkpoint_dir=Path(args.checkpoint_dir), probe_dir=Path(args.probe_dir) if args.probe_dir else None,
                   device=str(device), inputs=input_revisions(args.model_dir, args.data))
    if group is not None:
        distributed.shutdown()
    return 0


def _run_status(run_json: str | None) -> str:
    if not run_json or not Path(run_json).is_file():
        return "ok"
    return read_json(run_json).get("status", "ok")


def cmd_attack(args) -> int:
    from ..attacks.registry import get_attack
    from ..data.formats import Benchmark
    from ..utils.repro import configure_threads, pick_device, seed_everything

    configure_threads(args.threads)
    seed_everything(args.seed)
    out = Path(args.out)
    run_json = Path(args.model_dir).parent / "run.json"
    if _run_status(str(run_json)) != "ok":  # nothing to attack: record why, so the grid goes on
        atomic_write_json(out / "attack.json", {"status": _run_status(str(run_json)), "attack": args.attack})
        return 0
    attack = get_attack(args.attack)
    group = None
    if getattr(attack, "trains", False):   # relearning: as many processes as unlearning.train.num_processes
        from .launch import env_processes, relaunch, ru_argv

        if env_processes() > 1:
            relaunch(env_processes(), ru_argv(args))
        from ..methods import distributed

        group = distributed.init()          # one of several processes: joins them, takes its GPU
    from ..attacks.common import set_load_dtype

    set_load_dtype(getattr(args, "dtype", "float32"))  # every attack's load_for_attack loads in this precision
    extra = {}
    if getattr(args, "checkpoint_dir", None) and "checkpoint_dir" in inspect.signature(attack.prepare).parameters:
        extra["checkpoint_dir"] = Path(args.checkpoint_dir)  # attacks that train (relearn) resume from it
    attack.prepare(Path(args.model_dir), Benchmark(args.data), args.settings, out, args.seed,
                   device=str(pick_device(args.device)), **extra)
    if group is not None:
        distributed.shutdown()
    return 0


def cmd_evaluate(args) -> int:
    from ..data.formats import Benchmark
    from ..metrics.evaluate import evaluate_model
    from ..utils.repro import configure_threads, pick_device, provenance, seed_everything

    configure_threads(args.threads)
    seed_everything(args.seed)
    out = Path(args.out)
    status = _run_status(args.run_json)
    if status == "ok" and args.artefact_dir and (Path(args.artefact_dir) / "attack.json").is_file():
        status = read_json(Path(args.artefact_dir) / "attack.json").get("status", "ok")
    record = {"model": args.model_id, "benchmark": args.benchmark_name, "attack": args.attack,
              "attack_params": args.attack_params, "metrics": {}, "n_items": {}, "judge": None, "status": status}
    items: list = []
    if status == "ok":
        from ..judges.configured import build_judges

        judges = build_judges(args.judges)   # before the model loads: a bad judges: section fails at once
        bench = Benchmark(args.data)
        device = str(pick_device(args.device))
        model, tok = _load(args.model_dir, dtype=args.evaluation.get("dtype", "float32"), device=device)
        reference = None
        if args.reference:
            ref = read_json(args.reference)["metrics"]
            if "privleak_auc" in ref:
                reference = {"auc_retrain": ref["privleak_auc"], "auc_retrain_minkpp": ref.get("privleak_minkpp_auc")}
        eval_cfg = dict(args.evaluation)
        under_attack = eval_cfg.pop("under_attack", None) or {}
        if args.attack != "none":  # e.g. fewer metrics for attacked copies (evaluation.under_attack)
            eval_cfg.update(under_attack)
        seconds: dict[str, float] = {}   # wall seconds per metric (metrics.json "seconds")
        if args.attack == "none" or _attack_kind(args.attack) == "model":
            metrics, items = evaluate_model(model, tok, bench, eval_cfg, reference=reference, seconds=seconds,
                                            judges=judges)
        else:
            from ..attacks.registry import get_attack

            metrics, items = get_attack(args.attack).evaluate(model, tok, bench, Path(args.artefact_dir), eval_cfg,
                                                              args.seed, judge=judges)
        record["metrics"] = {k: float(v) for k, v in metrics.items() if v is not None}
        record["n_items"] = _count_items(items)
        record["judge"] = judges.describe()
        if seconds:
            record["seconds"] = {k: round(float(v), 3) for k, v in seconds.items()}
    record["provenance"] = provenance({"evaluation": args.evaluation, "attack_settings": args.attack_settings},
                                      args.seed, device=args.device)
    atomic_write_jsonl(out / "items.jsonl", items)
    atomic_write_json(out / "metrics.json", record, checksum=True)
    _log(f"{args.model_id} [{args.attack} {args.attack_params}] {status}: "
         + ", ".join(f"{k}={v:.4g}" for k, v in sorted(record["metrics"].items())))
    return 0


def _attack_kind(name: str) -> str:
    from ..attacks.registry import get_attack

    return get_attack(name).kind


def _count_items(items: list) -> dict:
    counts: dict[str, int] = {}
    for it in items:
        key = it.get("metric") or it.get("split") or "items"
        counts[key] = counts.get(key, 0) + 1
    return counts


def cmd_aggregate(args) -> int:
    from ..report.collect import collect_results
    from ..report.figures import write_figures
    from ..report.paired import write_paired_tables
    from ..report.tables import write_tables

    df = collect_results(Path(args.bench_dir), args.benchmark_name, expected=args.expected)
    written = write_tables(df, Path(args.tables_dir), csv_path=args.csv, summary_path=args.summary)
    written += write_figures(df, Path(args.figures_dir), landscape_files=args.landscapes)
    written += write_paired_tables(df, Path(args.csv).parent)   # intervals.csv, paired.csv (seeds ≥ 2)
    _log(f"aggregated {len(df)} rows; wrote {len(written)} tables/figures")
    return 0


def cmd_landscape(args) -> int:
    from ..data.formats import Benchmark
    from ..metrics.landscape import loss_landscape_1d
    from ..utils.repro import configure_threads, pick_device

    configure_threads(args.threads)
    model, tok = _load(args.model_dir, dtype=args.dtype, device=str(pick_device(args.device)))
    result = loss_landscape_1d(model, tok, Benchmark(args.data), points=args.points, seed=args.seed)
    result["method"] = args.label
    atomic_write_json(args.out, result)
    return 0
