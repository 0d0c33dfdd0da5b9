"""lm-evaluation-harness on the in-memory model (evaluation.md §2.1): the reference implementation of MMLU / WMDP.

For the real benchmarks the task definitions are lm-eval's own (``wmdp_bio``, ``mmlu``, …), run through its Python
API on the model already in memory, so no task is re-written by hand; ``include_path`` adds local task YAMLs (the
tests use one to show that our ``letter`` scorer, ``metrics.mcq``, picks the same answer on every item).
An optional extra: ``pip install 'robust-unlearning[lmeval]'``; the error says so when it is missing.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

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


def lm_eval_mcq(model, tokenizer, tasks: Sequence[str], include_path: str | Path | None = None,
                batch_size: int = 16, limit: int | None = None, add_bos_token: bool = False) -> dict[str, dict[str, Any]]:
    """Zero-shot multiple-choice tasks of lm-eval on ``model``. Per task: ``acc`` and, per document (in order),
    ``preds`` (argmax of the choices' log-likelihoods, lm-eval's ``acc`` rule), ``golds`` and ``logprobs``."""
    simple_evaluate, HFLM, TaskManager = _harness()
    device = str(next(model.parameters()).device)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device,
              add_bos_token=add_bos_token)
    manager = TaskManager(include_path=str(include_path)) if include_path else TaskManager()
    out = simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=0, limit=limit, log_samples=True,
                          task_manager=manager, bootstrap_iters=0)
    results: dict[str, dict[str, Any]] = {}
    for task in tasks:
        if task not in out["samples"]:  # a group (e.g. mmlu): its documents are under its subtasks' names
            raise ValueError(f"evaluation.lm_eval_tasks: {task!r} is a task group "
                             f"({', '.join(out.get('group_subtasks', {}).get(task, [])[:5])}, …); groups are not "
                             "aggregated yet: name single tasks")
        samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
        logprobs = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
        preds = [max(range(len(lp)), key=lambda j: lp[j]) for lp in logprobs]   # first argmax, as np.argmax
        golds = [int(s["target"]) for s in samples]
        acc = out["results"][task].get("acc,none")
        results[task] = {"acc": float(acc) if acc is not None else math.nan, "preds": preds, "golds": golds,
                         "logprobs": logprobs}
    return results


@register_metric("mcq_lm_eval", splits=("forget", "retain", "holdout"), outputs=("{split}_mcq_acc_letter",))
def mcq_lm_eval_metric(ctx: EvalContext, split: str):
    """``{split}_mcq_acc_letter`` from lm-eval's own task ``evaluation.lm_eval_tasks[split]`` (e.g. forget:
    wmdp_bio, retain: mmlu) instead of our letter scorer; splits without a task are skipped."""
    task = (ctx.cfg.lm_eval_tasks or {}).get(split)
    if not task:
        return {}, []
    res = lm_eval_mcq(ctx.model, ctx.tokenizer, [task], include_path=ctx.cfg.lm_eval_include_path,
                      batch_size=ctx.cfg.batch_size, limit=ctx.cfg.max_items_for("mcq_lm_eval"),
                      add_bos_token=ctx.cfg.mcq_bos)[task]
    name = f"{split}_mcq_acc_letter"
    items = [record(f"lm_eval/{task}#{i}", split, name, f"{task}#{i}", str(p), float(p == g),
                    {"task": task, "gold": g, "logprobs": lp})
             for i, (p, g, lp) in enumerate(zip(res["preds"], res["golds"], res["logprobs"]))]
    return {name: res["acc"]}, items
