"""Judges (docs/evaluation.md, "Judges"): offline rule judges by default, pluggable classifier / API judges on opt-in."""
from .base import JUDGES, Judge, JudgeConfigError, JudgeError, get_judge, register_judge, verdict
from .text import (REFUSAL_SUBSTRINGS, answer_match, compliance_proxy, keyword_refusal, matched_alias,
                   normalize_answer, refusal_match)

__all__ = ["JUDGES", "Judge", "JudgeConfigError", "JudgeError", "get_judge", "register_judge", "verdict",
           "REFUSAL_SUBSTRINGS", "answer_match", "compliance_proxy", "keyword_refusal", "matched_alias",
           "normalize_answer", "refusal_match"]
