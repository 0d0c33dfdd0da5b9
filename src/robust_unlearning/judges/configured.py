"""The evaluation's judge, built once per evaluation job from the ``judges:`` config and used for every success
decision of every attack (docs/evaluation.md, judges).

``judges.asr`` names the success judge: ``answer_match`` (default, offline: the forgotten answer appears in the
response), ``hf_classifier`` (a local checkpoint) or ``openai_compatible`` (an API endpoint); its settings live
under the key of the same name (``judges.hf_classifier: {...}``). ``judges.refusal`` names the refusal judge:
``keyword_refusal`` (default: the reference's refusal substrings) or ``openai_compatible`` (the same endpoint
settings, asked whether the response refuses; ``refusal_prompt_template`` replaces the question). Every refusal
decision (refusal rates under attack, over-refusal) goes through it.

A judge that fails (model error, endpoint down, unreadable reply) raises ``JudgeError`` naming the judge and the
item; the evaluation job then fails before it writes anything, so no partial output is left.
"""
from __future__ import annotations

from typing import Any, Sequence

from .base import Judge, JudgeConfigError, JudgeError, get_judge
from .text import keyword_refusal

SUCCESS_JUDGES = ("answer_match", "hf_classifier", "openai_compatible")
REFUSAL_JUDGES = ("keyword_refusal", "openai_compatible")


class EvalJudges:
    """The configured success judge plus the keyword-refusal rule.

    ``decides_without_answer``: the success judge can decide an item that has no reference answer (a classifier
    or API judge can; answer match cannot)."""

    def __init__(self, cfg: dict | None = None):
        cfg = dict(cfg or {})
        unknown = set(cfg) - {"asr", "refusal", *SUCCESS_JUDGES}
        if unknown:
            raise JudgeConfigError(sorted(unknown)[0], f"unknown key under judges; expected asr, refusal, "
                                                       f"{', '.join(SUCCESS_JUDGES[1:])}")
        self.asr_name = cfg.get("asr") or "answer_match"
        if self.asr_name not in SUCCESS_JUDGES:
            raise JudgeConfigError("asr", f"{self.asr_name!r} is not one of {list(SUCCESS_JUDGES)}")
        self.refusal_name = cfg.get("refusal") or "keyword_refusal"
        if self.refusal_name not in REFUSAL_JUDGES:
            raise JudgeConfigError("refusal", f"{self.refusal_name!r} is not one of {list(REFUSAL_JUDGES)}")
        params = self._params(cfg, self.asr_name)
        self.asr: Judge = get_judge({**params, "name": self.asr_name})
        self.refusal_judge: Judge | None = None
        if self.refusal_name == "openai_compatible":
            from .openai_compatible import REFUSAL_TEMPLATE

            rp = self._params(cfg, "openai_compatible")
            template = rp.get("refusal_prompt_template") or REFUSAL_TEMPLATE
            rp = {k: v for k, v in rp.items() if k not in ("prompt_template_file", "prompt_template")}
            self.refusal_judge = get_judge({**rp, "name": "openai_compatible", "prompt_template": template})
        self._refusal_cache: dict[tuple[str, str], bool] = {}

    @staticmethod
    def _params(cfg: dict, name: str) -> dict:
        params = cfg.get(name) or {}
        if not isinstance(params, dict):
            raise JudgeConfigError(name, "expected a mapping of judge settings")
        return params

    @property
    def decides_without_answer(self) -> bool:
        return self.asr_name != "answer_match"

    def describe(self) -> dict:
        """What metrics.json records under "judge" (never secrets)."""
        return {"asr": self.asr.describe(),
                "refusal": self.refusal_judge.describe() if self.refusal_judge else self.refusal_name}

    def success(self, outputs: Sequence[str], item_ids: Sequence[str], prompts: Sequence[str | None] | None = None,
                aliases: Sequence[Sequence[str] | None] | None = None, batch_size: int = 16) -> list[dict]:
        """One verdict per output (``{"success", "judge", "judge_model", "raw"}``), in order.

        ``prompts`` are the plain requests (the question, not the chat-templated text): what a classifier or API
        judge is asked about. Failures name the judge and the item(s)."""
        n = len(outputs)
        if len(item_ids) != n:
            raise ValueError(f"judge: {n} outputs but {len(item_ids)} item ids")
        prompts = list(prompts) if prompts is not None else [None] * n
        aliases = list(aliases) if aliases is not None else [None] * n
        if self.asr_name == "answer_match":
            for iid, al in zip(item_ids, aliases):
                if not al:
                    raise JudgeError(f"judge answer_match: item {iid} has no reference answer; only a classifier "
                                     "or API judge (judges.asr) can decide it")
        # the API judge is asked item by item so that a failure names exactly one item
        step = 1 if self.asr_name == "openai_compatible" else max(1, int(batch_size))
        out: list[dict] = []
        for s in range(0, n, step):
            ids = list(item_ids[s:s + step])
            try:
                out += self.asr.judge_batch(list(outputs[s:s + step]), prompts=prompts[s:s + step],
                                            aliases=aliases[s:s + step], behaviors=prompts[s:s + step])
            except JudgeConfigError:  # a settings error names its key; not an item's failure
                raise
            except Exception as exc:  # noqa: BLE001  (any judge failure fails the job, naming judge and item)
                where = f"item {ids[0]}" if len(ids) == 1 else f"items {ids[0]} … {ids[-1]}"
                raise JudgeError(f"judge {self.asr_name} ({self.asr.model_id or 'rules'}) failed on {where}: "
                                 f"{exc}") from exc
        return out

    def refused(self, outputs: Sequence[str], variant: str = "substring", prompts: Sequence[str | None] | None = None,
                item_ids: Sequence[str] | None = None) -> list[bool]:
        """One refusal flag per output. ``variant`` (substring / word_boundary) applies to the keyword rule; an API
        refusal judge gives one verdict per (prompt, output), asked once even when both variants are read."""
        if self.refusal_judge is None:
            return [bool(keyword_refusal(o, variant=variant)) for o in outputs]
        n = len(outputs)
        prompts = list(prompts) if prompts is not None else [None] * n
        item_ids = list(item_ids) if item_ids is not None else [f"#{i}" for i in range(n)]
        flags = []
        for iid, out, prompt in zip(item_ids, outputs, prompts):
            key = (prompt or "", out)
            if key not in self._refusal_cache:
                try:
                    v = self.refusal_judge.judge_batch([out], prompts=[prompt], behaviors=[prompt])[0]
                except Exception as exc:  # noqa: BLE001  (fails the job, naming judge and item)
                    raise JudgeError(f"refusal judge openai_compatible ({self.refusal_judge.model_id}) failed on "
                                     f"item {iid}: {exc}") from exc
                self._refusal_cache[key] = bool(v["success"])
            flags.append(self._refusal_cache[key])
        return flags


def build_judges(cfg: Any = None) -> EvalJudges:
    """``EvalJudges`` from the ``judges:`` mapping (an ``EvalJudges`` is returned as is; None → the rules)."""
    return cfg if isinstance(cfg, EvalJudges) else EvalJudges(cfg)
