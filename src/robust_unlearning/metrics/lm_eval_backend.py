"""lm-evaluation-harness on the in-memory model (docs/evaluation.md, "Letter scoring"): the reference implementation of MMLU / WMDP.

For the real benchmarks the task definitions are lm-eval's own (``wmdp_bio``, ``mmlu``, …), run through its Python
API on the model already in memory, so no task is re-written by hand; ``include_path`` adds local task YAMLs (the
tests use one to show that our ``letter`` scorer, ``metrics.mcq``, picks the same answer on every item).
An optional extra: ``pip install 'robust-unlearning[lmeval]'``; the error says so when it is missing.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any, Sequence

from ..utils.io import atomic_write_jsonl, atomic_write_text
from .registry import EvalContext, record, register_metric


class LmEvalUnavailable(ImportError):
    """lm-eval-harness is not installed."""


def _harness():
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise LmEvalUnavailable("lm-eval-harness is not installed: pip install 'robust-unlearning[lmeval]' "
                                "(or lm_eval==0.4.13)") from exc
    return simple_evaluate, HFLM, TaskManager


@functools.lru_cache(maxsize=1)
def _builtin_task_manager():
    return _harness()[2]()


def cached_task_manager(include_path: str | None = None):
    """lm-eval's task index: the built-in tasks alone are indexed once per process (thousands of YAML files, seconds;
    one evaluation job may look tasks up for every split); with ``include_path`` a fresh index, since the files in a
    local folder may have changed since the last look."""
    return _harness()[2](include_path=include_path) if include_path else _builtin_task_manager()


def _local_task_manager(include_path: str):
    """The tasks of ``include_path`` alone: indexing a local folder takes milliseconds, where the built-in index of
    thousands of YAML files takes tens of seconds (per job, per lookup)."""
    return _harness()[2](include_path=str(include_path), include_defaults=False)


def _kind(entry) -> str:
    return getattr(entry.kind, "name", str(entry.kind))


def task_manager_for(tasks: Sequence[str], include_path: str | Path | None = None):
    """The smallest task index that holds ``tasks``: the folder ``include_path`` alone when every task is a plain
    task defined there; the built-in index (once per process) when none is; both together only when a local
    group or tag may name built-in tasks, or the tasks come from both."""
    if not include_path:
        return cached_task_manager(None)
    local = _local_task_manager(str(include_path))
    entries = [local.task_index.get(t) for t in tasks]
    if all(e is not None and _kind(e) == "TASK" for e in entries):
        return local
    if all(e is None for e in entries):
        return cached_task_manager(None)
    return cached_task_manager(str(include_path))


def task_is_group(task: str, include_path: str | None = None) -> bool:
    """Whether lm-eval's ``task`` is a group / tag (``mmlu``: one leaf task per subject) rather than one task.
    A task of ``include_path`` is looked up in that folder alone; any other in the built-in index."""
    entry = None
    if include_path:
        entry = _local_task_manager(str(include_path)).task_index.get(task)
    if entry is None:
        entry = cached_task_manager(None).task_index.get(task)
    return entry is not None and _kind(entry) in ("GROUP", "TAG")


def _leaf_tasks(name: str, group_subtasks: dict) -> list[str]:
    """The tasks under ``name``, depth first in lm-eval's order (``mmlu`` → ``mmlu_stem`` → ``mmlu_anatomy`` …)."""
    if name not in group_subtasks:
        return [name]
    return [leaf for sub in group_subtasks[name] for leaf in _leaf_tasks(sub, group_subtasks)]


def lm_eval_mcq(model, tokenizer, tasks: Sequence[str], include_path: str | Path | None = None,
                batch_size: int = 16, limit: int | None = None, add_bos_token: bool = False,
                task_manager=None) -> dict[str, dict[str, Any]]:
    """Zero-shot multiple-choice tasks of lm-eval on ``model``. Per task: ``acc`` and, per document (in order),
    ``preds`` (argmax of the choices' log-likelihoods, lm-eval's ``acc`` rule), ``golds``, ``logprobs`` and the
    ``task`` it belongs to. A group (``mmlu``: 57 subjects in 4 sub-groups) gathers the documents of all its leaf
    tasks; its ``acc`` is lm-eval's own group aggregate (MMLU: weighted by size = the micro average), else the
    micro average."""
    simple_evaluate, HFLM, _ = _harness()
    device = str(next(model.parameters()).device)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device,
              add_bos_token=add_bos_token)
    if task_manager is None:
        task_manager = task_manager_for(tasks, include_path)
    out = simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=0, limit=limit, log_samples=True,
                          task_manager=task_manager, bootstrap_iters=0)
    groups = out.get("group_subtasks", {}) or {}
    results: dict[str, dict[str, Any]] = {}
    for task in tasks:
        leaves = _leaf_tasks(task, groups)
        missing = [t for t in leaves if t not in out["samples"]]
        if missing:
            raise ValueError(f"evaluation.lm_eval_tasks: lm-eval returned no documents for {missing[:3]} "
                             f"(of task {task!r})")
        preds, golds, logprobs, names = [], [], [], []
        for leaf in leaves:
            for s in sorted(out["samples"][leaf], key=lambda s: s["doc_id"]):
                lp = [float(r[0]) for r in s["filtered_resps"]]
                logprobs.append(lp)
                preds.append(max(range(len(lp)), key=lambda j: lp[j]))   # first argmax, as np.argmax
                golds.append(int(s["target"]))
                names.append(leaf)
        acc = (out["results"].get(task) or {}).get("acc,none")
        if acc is None or (isinstance(acc, float) and math.isnan(acc)):
            acc = sum(p == g for p, g in zip(preds, golds)) / max(len(preds), 1)
        results[task] = {"acc": float(acc), "preds": preds, "golds": golds, "logprobs": logprobs, "tasks": names,
                         "n_subtasks": len(leaves)}
    return results


# ------------------------------------------------------------------------------------- the run's own rows

def _clean_rows(rows: Sequence[dict]) -> list[dict]:
    return [{"question": r["question"], "choices": list(r["choices"]), "answer": int(r["answer"])} for r in rows]


def _task_yaml(name: str, include: Path, data: Path) -> str:
    import json
    # lm-eval's own definition (prompt, choices, description) via `include`; only the documents are ours.
    # tag: null keeps the copy out of lm-eval's tags (mmlu_stem_tasks, …); fewshot_split: null (zero-shot).
    return (f"task: {name}\ninclude: {json.dumps(str(include))}\ntag: null\ndataset_path: json\n"
            f"dataset_name: null\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
            "test_split: test\nvalidation_split: null\ntraining_split: null\nfewshot_split: null\n")


def write_local_tasks(task: str, rows: Sequence[dict], out_dir: str | Path, task_manager) -> tuple[str, list[int]]:
    """lm-eval's task ``task`` over OUR prepared rows (``{question, choices, answer[, subject]}``): a copy of its
    YAML that ``include``s lm-eval's own file and reads the documents from a JSONL written here. Returns the name
    to run. For a group whose leaves are per subject (``mmlu`` → ``mmlu_<subject>``), the rows are split by their
    ``subject`` field into one leaf each, under a group with lm-eval's size-weighted aggregate. Offline by
    construction: nothing is fetched, and the scored documents are exactly the run's own. Also returns, for each
    document in lm-eval's order (leaf by leaf), the index of its row in ``rows``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index = task_manager.task_index
    entry = index.get(task)
    if entry is None:
        raise ValueError(f"evaluation.lm_eval_tasks: unknown lm-eval task {task!r}")
    kind = _kind(entry)
    local = f"ru_local_{task}"
    if kind == "TASK" and entry.yaml_path is not None:
        data = out_dir / f"{local}.jsonl"
        atomic_write_jsonl(data, _clean_rows(rows))
        atomic_write_text(out_dir / f"{local}.yaml", _task_yaml(local, Path(entry.yaml_path), data))
        return local, list(range(len(rows)))
    if kind not in ("GROUP", "TAG"):
        raise ValueError(f"evaluation.lm_eval_tasks: {task!r} is a {kind.lower()} lm-eval task; only YAML tasks and "
                         "groups of per-subject tasks can read the run's own rows (set lm_eval_data: hub)")
    by_subject: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_subject.setdefault(str(r.get("subject") or ""), []).append(i)
    leaves, order = [], []
    for subject, idx in sorted(by_subject.items()):
        sub_rows = [rows[i] for i in idx]
        leaf = index.get(f"{task}_{subject}")
        if not subject or leaf is None or leaf.yaml_path is None:
            raise ValueError(f"evaluation.lm_eval_tasks: {task!r} is a group; each row needs a 'subject' naming one "
                             f"of its tasks ({task}_<subject>), got subject {subject!r} ({len(sub_rows)} rows)")
        name = f"{local}_{subject}"
        data = out_dir / f"{name}.jsonl"
        atomic_write_jsonl(data, _clean_rows(sub_rows))
        atomic_write_text(out_dir / f"{name}.yaml", _task_yaml(name, Path(leaf.yaml_path), data))
        leaves.append(name)
        order += idx
    atomic_write_text(
        out_dir / f"{local}.yaml", f"group: {local}\ntask:\n" + "".join(f"  - {n}\n" for n in leaves)
        + "aggregate_metric_list:\n  - metric: acc\n    weight_by_size: true\n")
    return local, order


def lm_eval_on_rows(model, tokenizer, task: str, rows: Sequence[dict], *, batch_size: int = 16,
                    add_bos_token: bool = False, include_path: str | Path | None = None) -> dict[str, Any]:
    """:func:`lm_eval_mcq` of lm-eval's ``task`` (or group) over ``rows`` (see :func:`write_local_tasks`);
    ``include_path`` adds local task YAMLs to look ``task`` up in. ``row_index`` maps each document to its row."""
    import tempfile

    _, _, TaskManager = _harness()
    with tempfile.TemporaryDirectory(prefix="ru_lm_eval_") as tmp:
        extra = [str(include_path)] if include_path else []
        name, order = write_local_tasks(task, rows, tmp, task_manager_for([task], include_path))
        # our copies `include` lm-eval's files by absolute path: the built-in index is not needed a second time
        manager = TaskManager(include_path=[tmp] + extra, include_defaults=False)
        res = lm_eval_mcq(model, tokenizer, [name], batch_size=batch_size, add_bos_token=add_bos_token,
                          task_manager=manager)[name]
    prefix = f"ru_local_{task}_"
    res["tasks"] = [t[len(prefix):] if t.startswith(prefix) else task for t in res["tasks"]]
    res["row_index"] = order
    return res


@register_metric("mcq_lm_eval", splits=("forget", "retain", "holdout"), outputs=("{split}_mcq_acc_letter",))
def mcq_lm_eval_metric(ctx: EvalContext, split: str):
    """``{split}_mcq_acc_letter`` from lm-eval's own task ``evaluation.lm_eval_tasks[split]`` (e.g. forget:
    wmdp_bio, retain: mmlu) instead of our letter scorer; splits without a task are skipped.

    ``lm_eval_data: split`` (default) scores the split's own prepared rows with lm-eval's task definition (offline;
    the same documents as every other metric of the split); ``hub`` lets lm-eval load its own dataset (the
    Hugging Face cache, or the network), e.g. the full WMDP-bio test set, or a task from ``lm_eval_include_path``."""
    task = (ctx.cfg.lm_eval_tasks or {}).get(split)
    if not task:
        return {}, []
    kw = dict(batch_size=ctx.cfg.batch_size, add_bos_token=ctx.cfg.mcq_bos,
              include_path=ctx.cfg.lm_eval_include_path)
    if ctx.cfg.lm_eval_data == "split":  # max_items cuts the rows (lm-eval's `limit` would cut each subject)
        res = lm_eval_on_rows(ctx.model, ctx.tokenizer, task, ctx.limit(ctx.bench.mcq(split), "mcq_lm_eval"), **kw)
    else:
        res = lm_eval_mcq(ctx.model, ctx.tokenizer, [task], limit=ctx.cfg.max_items_for("mcq_lm_eval"), **kw)[task]
    name = f"{split}_mcq_acc_letter"
    # item ids: the split's row index when the rows are ours (so they line up with mcq_letter's items), else
    # lm-eval's document order
    index = res.get("row_index") or range(len(res["preds"]))
    items = [record(f"lm_eval/{t}#{i}", split, name, f"{t}#{i}", str(p), float(p == g),
                    {"task": t, "gold": g, "logprobs": lp})
             for i, t, p, g, lp in zip(index, res["tasks"], res["preds"], res["golds"], res["logprobs"])]
    return {name: res["acc"]}, items
