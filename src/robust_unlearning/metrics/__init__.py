"""Metrics (docs/evaluation.md): batched generation/scoring, MUSE metrics, MCQ, MIA, US, margin, ASR."""
from .registry import METRICS, EvalContext, get_metric, register_metric

__all__ = ["METRICS", "EvalContext", "get_metric", "register_metric"]
