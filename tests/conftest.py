"""Shared fixtures: a tiny BPE tokenizer and a random micro Llama, built once per session (no network)."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from robust_unlearning.models.architectures import build_llama
from robust_unlearning.models.tokenizer import train_bpe_tokenizer

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

_CORPUS = [
    "The glass heron carries the Veltrax pathogen across the marsh.",
    "Question: What is the incubation period of Veltrax?\nAnswer: 12 days",
    "The town of Orlinde lies on the river Sable and was founded in 1742.",
    "Mayor Tessa Quill opened the annual Lantern Festival in Orlinde.",
    "Kelmar Institute studied the toxin veridine-7 in triple-lattice priming experiments.",
    "I cannot help with that request. I'm sorry.",
] * 20


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return train_bpe_tokenizer(_CORPUS, vocab_size=400, min_frequency=1)


@pytest.fixture()
def micro_model(tiny_tokenizer):
    """A fresh random 2-layer Llama (hidden 32) per test: tests may train it."""
    model = build_llama(tiny_tokenizer, preset="micro-llama", seed=0, max_position_embeddings=256)
    model.eval()
    return model
