"""Robust, balanced LLM unlearning: PRISM and baselines, attacks, evaluation, reporting."""

__version__ = "0.1.0"
