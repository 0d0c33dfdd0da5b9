"""What each workflow job asks the scheduler for, derived from the model (docs/cluster.md, "Resources follow the
model").

The rules' ``resources:`` (host memory ``mem_mb``, device memory ``gpu_mem_mb``, ``runtime`` in minutes) are
computed here from three things: the model's architecture (its ``config.json``: parameter count, vocabulary,
layer shapes, stored precision), what the job does with it (load and score, train all or some parameters, keep a
frozen copy, write a copy) and the config (precision, micro-batch, sequence length, steps, method settings).

Everything is plain arithmetic on numbers, deterministic, and errs on the large side: a request is meant to be at
least what the job needs, never a tight fit. Nothing here imports torch or touches the network, because the
Snakefile calls it for every job while it plans.

Where the architecture comes from (:func:`find_architecture`), first hit wins:

1. ``<bench dir>/models/base/config.json`` (or ``models/pretrained/``): the model every job loads, once cached;
2. ``model.source: local``: ``<name_or_path>/config.json``;
3. ``model.source: hub``: the local Hugging Face hub cache, in the hub's own layout
   (``huggingface_hub.try_to_load_from_cache``: a lookup on disk, never a download);
4. ``model.source: gguf``: the GGUF file's header (models/gguf_header.py; the file is not loaded);
5. ``model.source: train_tiny``: the tiny preset's shape (``model.preset``, ``model.vocab_size``);
6. otherwise :data:`FALLBACK_CONFIG` (an 8B dense shape, the largest paper preset's), with a warning naming the
   model. Snakemake computes a job's resources again when the job becomes ready to run, by which time
   ``models/base`` exists, so the fallback only shows in dry runs made before the model is cached.
"""
from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .models.presets import PRESETS

# ------------------------------------------------------------------------------------------------- constants
DTYPE_BYTES = {"float32": 4, "fp32": 4, "float": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "half": 2,
               "float64": 8}
MB = 10**6                      # Snakemake's mem_mb is in megabytes

MEMORY_MARGIN = 1.2             # on top of every memory estimate: allocator fragmentation, buffers not modelled
HOST_BASE_BYTES = 3 * 10**9     # a job's process without the model: Python, torch with its CUDA libraries, data
CUDA_CONTEXT_BYTES = 2 * 10**9  # CUDA context, cuBLAS workspaces, kernels (not in torch's own counters)
MEM_ROUND_MB = 1000             # requests are rounded up to whole GB

# Runtime: seconds of arithmetic at an assumed sustained rate, plus reading and writing the weights, times a
# margin. The rates are deliberately low (about a tenth of an H100's dense bf16 peak): a time limit that is too
# short costs a resubmission (training jobs resume from their checkpoint), one that is too long only queue priority.
GPU_FLOPS = {2: 100e12, 4: 25e12, 8: 5e12}   # per element size: bf16/fp16, fp32 (no TF32), fp64
CPU_FLOPS_PER_THREAD = 20e9
IO_BYTES_PER_S = 200e6          # a shared file system
DOWNLOAD_BYTES_PER_S = 20e6     # the hub, from a login node
RUNTIME_MARGIN = 1.5
RUNTIME_FLOOR_MIN = 30          # start-up, imports and the data preparation of a job, whatever the model
RUNTIME_ROUND_MIN = 10
# Tokens a job that only runs the model forward (evaluation, probe features, prompt attacks, landscape) may score
# or generate: a fixed budget rather than a per-metric model, sized for the largest paper-scale evaluation
# (MMLU plus WMDP-bio through lm-eval: ~57k four-choice requests of a few hundred tokens each).
INFERENCE_TOKENS = 30_000_000
# Forget examples assumed before the data is prepared (dry runs on a fresh tree): the MUSE and WMDP forget sets
# hold 400-650 training examples; once results/<bench>/data exists it is counted instead (:func:`forget_examples`).
DEFAULT_FORGET_EXAMPLES = 1000
DEFAULT_MIXTURE_ROWS = 4000     # the synthetic world's base-training mixture holds fewer rows
BYTES_PER_TOKEN = 3             # text → tokens for chunked raw text; English BPE averages ~4, so this overcounts

# Families whose MLP is gated (gate, up, down: three matrices) and whose norms have no bias.
GATED_FAMILIES = {"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3",
                  "olmo", "olmo2", "smollm3", "granite", "cohere", "starcoder2", "ministral"}
QKV_BIAS_FAMILIES = {"qwen2"}

# The shape used when no config.json can be found: Ministral-8B-Instruct-2410 (the largest paper preset).
FALLBACK_CONFIG = {"model_type": "mistral", "vocab_size": 131072, "hidden_size": 4096, "intermediate_size": 12288,
                   "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                   "tie_word_embeddings": False, "max_position_embeddings": 32768, "torch_dtype": "float32"}

# model.preset of the train_tiny source (models/presets.py, torch-free; models/architectures.py builds them) and
# the context length models/cache.py gives them (at least 512, more for a longer model.train.max_len)
TINY_PRESETS = PRESETS
TINY_MAX_POSITIONS = 512
TINY_SPECIAL_TOKENS = 64        # the trained tokenizer's vocabulary is model.vocab_size plus its special tokens


def _stored_dtype(cfg: dict) -> str:
    """The precision of the weights on disk; anything unrecognised ("auto", absent) counts as float32."""
    name = str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32").replace("torch.", "")
    return name if name in DTYPE_BYTES else "float32"


class ResourceConfigError(ValueError):
    """A config.json that lacks a number the estimate needs; the message names the file and the key."""


def dtype_bytes(dtype: str | None, where: str = "dtype") -> int:
    name = str(dtype or "float32").replace("torch.", "")
    if name not in DTYPE_BYTES:
        raise ResourceConfigError(f"{where}: unknown precision {dtype!r}; expected one of {sorted(DTYPE_BYTES)}")
    return DTYPE_BYTES[name]


# ---------------------------------------------------------------------------------------------- architecture
@dataclass(frozen=True)
class Architecture:
    """The numbers of a decoder-only transformer that memory and compute depend on."""
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_embeddings: bool = False
    gated_mlp: bool = True
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    norm_bias: bool = False
    learned_positions: int = 0          # rows of a learned position table (GPT-2 style), 0 for rotary models
    max_positions: int = 2048
    stored_dtype: str = "float32"       # precision of the weights on disk (config.json torch_dtype)
    model_type: str = "llama"
    origin: str = ""                    # where the numbers came from: a path, a preset, or "fallback"

    @classmethod
    def from_config(cls, cfg: dict, origin: str = "config.json") -> "Architecture":
        """From a transformers ``config.json`` dict; multimodal configs are read from their ``text_config``."""
        if "hidden_size" not in cfg and "n_embd" not in cfg and isinstance(cfg.get("text_config"), dict):
            cfg = {**cfg, **cfg["text_config"]}

        def get(*keys, default=None):
            for k in keys:
                if cfg.get(k) is not None:
                    return cfg[k]
            if default is not None:
                return default
            raise ResourceConfigError(f"{origin}: no {' / '.join(repr(k) for k in keys)}: cannot size the model")

        model_type = str(cfg.get("model_type", "")).lower()
        d = int(get("hidden_size", "n_embd", "d_model"))
        heads = int(get("num_attention_heads", "n_head", "num_heads"))
        llama_like = model_type in GATED_FAMILIES or not model_type
        return cls(
            vocab_size=int(get("vocab_size")),
            hidden_size=d,
            intermediate_size=int(get("intermediate_size", "n_inner", "ffn_dim", default=4 * d)),
            num_layers=int(get("num_hidden_layers", "n_layer", "num_layers")),
            num_heads=heads,
            num_kv_heads=int(get("num_key_value_heads", default=heads)),
            head_dim=int(get("head_dim", default=d // heads)),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", not llama_like)),
            gated_mlp=llama_like,
            qkv_bias=bool(cfg.get("attention_bias", False)) or model_type in QKV_BIAS_FAMILIES or not llama_like,
            o_bias=bool(cfg.get("attention_bias", False)) or not llama_like,
            mlp_bias=bool(cfg.get("mlp_bias", False)) or not llama_like,
            norm_bias=not llama_like,
            learned_positions=0 if llama_like else int(get("n_positions", "max_position_embeddings", default=2048)),
            max_positions=int(get("max_position_embeddings", "n_positions", "max_sequence_length", default=2048)),
            stored_dtype=_stored_dtype(cfg),
            model_type=model_type or "llama",
            origin=origin,
        )

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def layer_linears(self) -> dict[str, tuple[int, int]]:
        """{module name: (in features, out features)} of one decoder layer, named as in transformers' Llama."""
        d, i = self.hidden_size, self.intermediate_size
        out = {"q_proj": (d, self.q_dim), "k_proj": (d, self.kv_dim), "v_proj": (d, self.kv_dim),
               "o_proj": (self.q_dim, d), "up_proj": (d, i), "down_proj": (i, d)}
        if self.gated_mlp:
            out["gate_proj"] = (d, i)
        return out

    @property
    def n_params(self) -> int:
        """Parameter count: embeddings, per layer attention + MLP + two norms, final norm, untied LM head."""
        d, v = self.hidden_size, self.vocab_size
        per_layer = sum(a * b for a, b in self.layer_linears().values())
        per_layer += (self.q_dim + 2 * self.kv_dim) * self.qkv_bias + d * self.o_bias
        per_layer += (self.intermediate_size * (2 if self.gated_mlp else 1) + d) * self.mlp_bias
        norm = d * (2 if self.norm_bias else 1)
        per_layer += 2 * norm
        total = v * d + self.learned_positions * d + self.num_layers * per_layer + norm
        return total + (0 if self.tie_embeddings else v * d)


def parameter_count(config: dict) -> int:
    """Parameters of the model a transformers ``config.json`` dict describes."""
    return Architecture.from_config(config).n_params


def lora_parameters(arch: Architecture, lora: dict | None) -> int:
    """Trainable parameters of LoRA adapters: r·(in + out) per targeted linear per layer (peft's A and B)."""
    lora = lora or {}
    r = int(lora.get("r", 8))
    targets = lora.get("target_modules") or ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj"]
    shapes = arch.layer_linears()
    # a target this shape table does not know is counted as the largest linear of the layer (never undercount)
    largest = max(a + b for a, b in shapes.values())
    per_layer = sum(r * (sum(shapes[t]) if t in shapes else largest) for t in targets)
    return arch.num_layers * per_layer


# ------------------------------------------------------------------------------------------ finding config.json
_WARNED: set[str] = set()


def _read_config(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def hub_cached_config(repo_id: str, revision: str | None = None) -> Path | None:
    """``config.json`` of a hub repo in the local hub cache (HF_HUB_CACHE / HF_HOME), or None; never downloads."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - an odd repo id or cache layout means "not cached", never a failed plan
        return None
    return Path(found) if isinstance(found, str) and os.path.isfile(found) else None


def find_architecture(model_cfg: dict, bench_dir: str | os.PathLike | None = None) -> Architecture:
    """The architecture of the configured model, from the first place that has it (module docstring)."""
    candidates: list[Path] = []
    if bench_dir is not None:
        candidates += [Path(bench_dir) / "models" / "base" / "config.json",
                       Path(bench_dir) / "models" / "pretrained" / "config.json"]
    source, name = model_cfg.get("source"), model_cfg.get("name_or_path")
    if source == "local" and name:
        candidates.append(Path(name).expanduser() / "config.json")
    if source == "hub" and name:
        candidates.append(lambda: hub_cached_config(name, model_cfg.get("revision")))
    for candidate in candidates:
        path = candidate() if callable(candidate) else candidate
        cfg = _read_config(path) if path is not None and path.is_file() else None
        if cfg is None:
            continue
        try:
            return Architecture.from_config(cfg, origin=str(path))
        except ResourceConfigError as exc:  # a config.json this module cannot read: the job is sized as the
            _warn(str(path), f"resources: {exc}; requests assume the fallback 8B shape")  # fallback, never fails
            return Architecture.from_config(FALLBACK_CONFIG, origin="fallback")
    if source == "gguf" and name:
        from .models.gguf_header import gguf_config   # no torch: reads the file's header only

        try:
            cfg, path = gguf_config(name, model_cfg.get("gguf_file"))
            return Architecture.from_config(cfg, origin=f"{path} (GGUF header)")
        except (OSError, ValueError) as exc:   # unreadable header, bad shape; the conversion job reports a missing file
            _warn(str(name), f"resources: {exc}; requests assume the fallback 8B shape")
            return Architecture.from_config(FALLBACK_CONFIG, origin="fallback")
    if source == "train_tiny":
        preset = model_cfg.get("preset", "tiny-llama")
        if preset not in TINY_PRESETS:
            raise ResourceConfigError(f"model.preset: unknown preset {preset!r}; "
                                      f"expected one of {sorted(TINY_PRESETS)}")
        max_len = int((model_cfg.get("train") or {}).get("max_len", 256))
        cfg = {"model_type": "llama", "vocab_size": int(model_cfg.get("vocab_size", 3000)) + TINY_SPECIAL_TOKENS,
               "tie_word_embeddings": True, "max_position_embeddings": max(TINY_MAX_POSITIONS, max_len),
               "torch_dtype": "float32", **TINY_PRESETS[preset]}
        return Architecture.from_config(cfg, origin=f"train_tiny preset {preset}")
    _warn(str(name or source), f"resources: no config.json for model {name or source!r} (not in "
                               f"{bench_dir}/models/base, not in the local hub cache): requests assume the "
                               "fallback 8B shape until the model is cached")
    return Architecture.from_config(FALLBACK_CONFIG, origin="fallback")


def _warn(key: str, message: str) -> None:
    """One line on stderr per model and process (the Snakefile asks for every job's resources)."""
    if key not in _WARNED:
        _WARNED.add(key)
        print(message, file=sys.stderr)


# ------------------------------------------------------------------------------------------------ data sizes
def forget_examples(data_dir: str | os.PathLike | None, source: str, max_len: int) -> int:
    """Training examples of the forget split as the loop builds them (data/unlearning_sets.build_examples), counted
    from the prepared data without a tokenizer; :data:`DEFAULT_FORGET_EXAMPLES` while the data does not exist."""
    if data_dir is None or not Path(data_dir).is_dir():
        return DEFAULT_FORGET_EXAMPLES
    try:
        from .data.formats import Benchmark

        bench = Benchmark(data_dir)
        if source == "raw":
            return max(1, len(bench.raw("forget")))
        if source == "chunks":  # chunks of max_len tokens over the joined text
            n_bytes = len(bench.raw_text("forget").encode("utf-8"))
            return max(1, math.ceil(n_bytes / BYTES_PER_TOKEN / max(1, max_len)))
        return max(1, len(bench.dialogue("forget")))
    except Exception:  # noqa: BLE001 - an unreadable folder is the data rule's error to report, not the planner's
        return DEFAULT_FORGET_EXAMPLES


def mixture_rows(data_dir: str | os.PathLike | None, rule: str) -> int:
    """Rows of the base-training mixture a cache-model job trains on (``train/target_mix.jsonl``, or
    ``retrain_mix.jsonl`` for the oracle); :data:`DEFAULT_MIXTURE_ROWS` while the data does not exist."""
    name = "retrain_mix.jsonl" if rule == "train_retrain_oracle" else "target_mix.jsonl"
    path = Path(data_dir) / "train" / name if data_dir is not None else None
    if path is None or not path.is_file():
        return DEFAULT_MIXTURE_ROWS
    try:
        with open(path, "rb") as fh:
            return max(1, sum(1 for line in fh if line.strip()))
    except OSError:
        return DEFAULT_MIXTURE_ROWS


# ---------------------------------------------------------------------------------------------- the workload
@dataclass(frozen=True)
class Workload:
    """What one job does with the model, in the terms the estimate needs."""
    dtype: str                          # precision the job holds the weights in
    train: bool = False                 # AdamW on (some of) the parameters
    trainable: int | None = None        # trainable parameters (None: all)
    spare_buffer: bool = True           # one gradient-sized buffer (SAM's θ backup / the parked forget gradient)
    frozen_copies: float = 0.0          # extra full copies of the weights (θ₀ reference, perturbation, quantised copy)
    frozen_copy_bytes: int | None = None  # element size of those copies (None: the job's dtype)
    gradient_checkpointing: bool = False
    backward: bool = False              # a backward pass without parameter gradients (prompt / latent attacks)
    micro_batch: int = 1                # sequences per forward
    seq_len: int = 2048                 # tokens per sequence
    new_tokens: int = 0                 # generated tokens per sequence (KV cache)
    passes_per_step: float = 0.0        # policy forward+backward passes per optimizer step
    ref_forwards_per_step: float = 0.0  # frozen-copy forwards per optimizer step
    tokens_per_pass: int = 0            # tokens one pass covers (the effective batch × sequence length)
    steps: int = 0                      # optimizer steps
    forward_tokens: int = 0             # tokens scored or generated (forward only)
    writes_model: bool = False
    downloads: bool = False
    on_gpu: bool = True                 # False: the job runs on CPU (all memory is host memory)
    host_holds_model: bool = False      # a GPU job that also does its work on the CPU (quantize, weight_noise)
    load_model: bool = True             # False: the job reads only the tokenizer and the data
    threads: int = 1
    label: str = ""


@dataclass(frozen=True)
class Estimate:
    mem_mb: int                         # host memory
    gpu_mem_mb: int                     # device memory (0 for CPU jobs)
    runtime: int                        # minutes
    detail: dict = field(default_factory=dict, compare=False)


def _round_up(x: float, step: int) -> int:
    return int(math.ceil(x / step) * step)


def activation_bytes(arch: Architecture, w: Workload) -> int:
    """Peak activation memory of one micro-batch (bytes).

    Per token and layer a Llama-style block keeps about (8·d + 2·kv + 4·I) values (norm outputs, q/k/v, attention
    output, residuals, the MLP's gate/up/activation/product). Attention is assumed to run in a fused kernel
    (PyTorch SDPA, transformers' default), so its T×T scores are not stored; one layer's worth of scores is still
    counted once, for the kernels that do materialise them. The logits over the vocabulary cost the job's
    precision plus three fp32 copies when trained (upcast, log-softmax, its gradient) and their gradient in the
    job's precision; when only scored, the logits plus two fp32 copies.
    """
    e = dtype_bytes(w.dtype)
    tokens = w.micro_batch * w.seq_len
    per_token_layer = e * (8 * arch.hidden_size + 2 * arch.kv_dim + 4 * arch.intermediate_size)
    scores = e * w.micro_batch * arch.num_heads * w.seq_len * w.seq_len
    if w.train or w.backward:
        if w.gradient_checkpointing:   # each layer's input kept, one layer recomputed with its backward
            stored = arch.num_layers * tokens * arch.hidden_size * e + 2 * tokens * per_token_layer
        else:
            stored = arch.num_layers * tokens * per_token_layer
        logits = tokens * arch.vocab_size * (2 * e + 12)
    else:                              # no graph: about two layers' worth alive at a time
        stored = 2 * tokens * per_token_layer
        logits = tokens * arch.vocab_size * (e + 8)
    kv_cache = w.micro_batch * (w.seq_len + w.new_tokens) * arch.num_layers * 2 * arch.kv_dim * e
    return int(stored + scores + logits + (kv_cache if w.new_tokens else 0))


def estimate(arch: Architecture, w: Workload) -> Estimate:
    """Host memory, device memory and runtime of one job (see the module docstring and docs/cluster.md)."""
    if not w.load_model:
        return Estimate(mem_mb=_round_up(HOST_BASE_BYTES * MEMORY_MARGIN / MB, MEM_ROUND_MB), gpu_mem_mb=0,
                        runtime=RUNTIME_FLOOR_MIN, detail={"workload": w.label, "origin": arch.origin})
    e = dtype_bytes(w.dtype)
    n = arch.n_params
    weights = n * e
    stored = n * dtype_bytes(arch.stored_dtype, f"{arch.origin}: torch_dtype")
    copy_e = w.frozen_copy_bytes or e
    state = weights + int(w.frozen_copies * n * copy_e)
    trainable = n if w.trainable is None else w.trainable
    optimizer = 0
    if w.train:
        # gradients and AdamW's two moments in the parameters' precision (torch keeps them in the parameter dtype),
        # plus the one spare buffer the loop allocates (docs/methods.md, "Cost model")
        optimizer = trainable * e * (1 + 2 + (1 if w.spare_buffer else 0))
        state += optimizer
    device = state + activation_bytes(arch, w)
    # the host reads the weights (in the stored precision, then cast); a training job resuming from its checkpoint
    # also reads the whole checkpoint (weights and AdamW's two moments) onto the host (methods/checkpoint.py)
    staging = max(weights, stored) + (weights + 2 * trainable * e if w.train else 0)
    if w.on_gpu:
        gpu_bytes = (device + CUDA_CONTEXT_BYTES) * MEMORY_MARGIN
        host_bytes = (HOST_BASE_BYTES + (device + stored if w.host_holds_model else staging)) * MEMORY_MARGIN
    else:
        gpu_bytes = 0
        host_bytes = (HOST_BASE_BYTES + device + max(0, stored - weights)) * MEMORY_MARGIN

    # runtime: 2·N FLOPs per token forward, 4·N backward, +2·N when checkpointing recomputes the forward
    train_per_token = 6 + (2 if w.gradient_checkpointing else 0)
    flops = 2.0 * n * w.forward_tokens
    flops += float(n) * w.steps * w.tokens_per_pass * (w.passes_per_step * train_per_token
                                                       + 2 * w.ref_forwards_per_step)
    if w.backward:
        flops *= 3                      # the forward plus a backward through the activations
    rate = GPU_FLOPS.get(e, GPU_FLOPS[4]) if w.on_gpu else CPU_FLOPS_PER_THREAD * max(1, w.threads)
    seconds = flops / rate + stored / IO_BYTES_PER_S
    if w.writes_model:
        seconds += weights / IO_BYTES_PER_S
    if w.downloads:
        seconds += stored / DOWNLOAD_BYTES_PER_S
    runtime = max(RUNTIME_FLOOR_MIN, _round_up(RUNTIME_FLOOR_MIN + seconds * RUNTIME_MARGIN / 60, RUNTIME_ROUND_MIN))
    return Estimate(
        mem_mb=_round_up(host_bytes / MB, MEM_ROUND_MB),
        gpu_mem_mb=_round_up(gpu_bytes / MB, MEM_ROUND_MB) if w.on_gpu else 0,
        runtime=int(runtime),
        detail={"params": n, "weights_bytes": weights, "optimizer_bytes": optimizer,
                "activation_bytes": activation_bytes(arch, w), "flops": flops, "origin": arch.origin,
                "workload": w.label},
    )


# --------------------------------------------------------------------------------- jobs of the workflow
# Policy forward+backward passes per optimizer step of each built-in method (docs/methods.md, "Cost model").
# A method not listed here (a plugin) is sized as the most expensive built-in one: three passes and a frozen copy.
METHOD_PASSES = {"ga": 1, "graddiff": 2, "npo": 2, "simnpo": 2, "rmu": 2, "sam_npo": 3, "prism": 3,
                 "task_vector": 1}
NPO_FAMILY = {"npo", "sam_npo", "prism"}
# input attacks whose evaluation (or artefact) needs gradients through the model
BACKWARD_ATTACKS = {"gcg", "latent", "direction"}
# model attacks that load the model on the CPU (attacks/quantize.py, attacks/weight_noise.py)
CPU_MODEL_ATTACKS = {"quantize", "weight_noise"}
# shared input attacks whose artefact needs the model (attacks/direction.py); prefill, multi_turn and latent
# build theirs from the data and the tokenizer. The direction is estimated from a few hundred prompts.
SHARED_MODEL_ATTACKS = {"direction"}
SHARED_ATTACK_TOKENS = 1_000_000


def needs_frozen_copy(method: str, settings: dict) -> bool:
    """Whether a method keeps a frozen copy of θ₀ beside the trained model (methods/objectives.py,
    methods/contexts.py): a KL retain term, NPO reference log-probabilities that are not cached (the logit form,
    ``ref_logprobs`` per_step / per_pass, the released PRISM behaviour), RMU's retain term, Task Vector's θ₀."""
    if method not in METHOD_PASSES:
        return True
    if settings.get("retain_loss") == "klr":
        return True
    if method in NPO_FAMILY:
        if settings.get("prism_compat") == "released" or settings.get("npo_form") == "logit":
            return True
        if settings.get("ref_logprobs") in ("per_step", "per_pass"):
            return True
    if method == "rmu":
        return float(settings.get("alpha", 1.0)) > 0
    return method == "task_vector"


def _eval_seq_len(config: dict, arch: Architecture) -> int:
    train_len = int((config.get("unlearning", {}).get("train") or {}).get("max_len") or 0)
    return max(16, min(arch.max_positions, max(2048, train_len)))


def job_workload(rule: str, config: dict, arch: Architecture, data_dir: str | os.PathLike | None = None,
                 method: str | None = None, method_settings: dict | None = None, attack: str | None = None,
                 attack_settings: dict | None = None, threads: int = 1) -> Workload:
    """The workload of one job of ``rule`` (the rules of workflow/rules/*.smk that load a model)."""
    model = config.get("model", {})
    train = config.get("unlearning", {}).get("train") or {}
    evaluation = config.get("evaluation") or {}
    model_dtype = model.get("dtype", "float32")
    seq = _eval_seq_len(config, arch)
    batch = int(evaluation.get("batch_size", 32))
    new_tokens = max([int(v) for k, v in evaluation.items() if k.endswith("max_new_tokens") and v] or [0])
    load = dict(dtype=model_dtype, micro_batch=batch, seq_len=seq, forward_tokens=INFERENCE_TOKENS,
                threads=threads)

    if rule == "unlearn":
        settings = method_settings or {}
        dtype = train.get("dtype") or "float32"    # ru unlearn loads in unlearning.train.dtype (float32 if unset)
        max_len = int(train.get("max_len") or 256)
        b_eff = int(train.get("batch_size", 4)) * int(train.get("grad_accum", 1))
        # a method may set its own length (methods/registry.py, LOOP_OVERRIDES); it replaces the loop's
        length = settings if (settings.get("steps") or settings.get("epochs")) else train
        epochs = int(length.get("epochs") or 1)
        if length.get("steps"):
            steps = int(length["steps"])
        else:
            source = (config.get("benchmark") or {}).get("forget_source", "raw")
            steps = epochs * math.ceil(forget_examples(data_dir, source, max_len) / b_eff)
        copy = needs_frozen_copy(method or "", settings)
        lora = train.get("lora")
        passes = METHOD_PASSES.get(method or "", 3)
        return Workload(
            # the spare buffer serves SAM and the two-phase gradient statistics; one-pass methods never allocate it
            dtype=dtype, train=True, trainable=lora_parameters(arch, lora) if lora else None, spare_buffer=passes > 1,
            # Task Vector keeps θ₀ for its fp32 arithmetic
            frozen_copies=1.0 if copy else 0.0, frozen_copy_bytes=4 if method == "task_vector" else None,
            gradient_checkpointing=bool(train.get("gradient_checkpointing")),
            micro_batch=int(train.get("batch_size", 4)),
            seq_len=max_len, passes_per_step=passes,
            ref_forwards_per_step=2.0 if copy else 0.0, tokens_per_pass=b_eff * max_len, steps=steps,
            # the cached reference: one forward over the forget set
            forward_tokens=0 if copy else steps * b_eff * max_len // epochs,
            writes_model=True, threads=threads, label=f"unlearn {method}")

    if rule == "attack_model":
        s = attack_settings or {}
        if attack == "relearn":
            max_len, batch_size = int(s.get("max_len", 256)), int(s.get("batch_size", 4))
            steps = int(s.get("steps", 25))
            checkpointing = s.get("gradient_checkpointing")
            # the fine-tune objective is one pass: no spare buffer (methods/finetuning.py)
            return Workload(dtype=model_dtype, train=True, spare_buffer=False,
                            # None = on CUDA only (attacks/relearn.py): a GPU job checkpoints
                            gradient_checkpointing=True if checkpointing is None else bool(checkpointing),
                            micro_batch=batch_size, seq_len=max_len, passes_per_step=1,
                            tokens_per_pass=batch_size * max_len,
                            steps=steps, writes_model=True, threads=threads, label="relearn")
        # quantize / weight_noise: the model and its modified copy. Both load it on the CPU; quantize's
        # bitsandbytes backend then works on the GPU, so both memories are sized for the two copies
        return Workload(dtype=model_dtype, frozen_copies=1.0, micro_batch=1, seq_len=16, writes_model=True,
                        host_holds_model=attack in CPU_MODEL_ATTACKS, threads=threads, label=f"attack {attack}")

    if rule == "evaluate":
        dtype = evaluation.get("dtype") or "float32"   # ru evaluate loads in evaluation.dtype (float32 if unset)
        return Workload(**{**load, "dtype": dtype}, new_tokens=new_tokens, backward=attack in BACKWARD_ATTACKS,
                        label=f"evaluate {attack or 'none'}")
    if rule == "attack_prompt_model":
        return Workload(**load, new_tokens=max(new_tokens, 64), backward=True, label=f"attack {attack}")
    if rule == "attack_shared":         # no GPU requested: a model it loads is loaded on the CPU
        if attack not in SHARED_MODEL_ATTACKS:   # built from the data and the tokenizer alone
            return Workload(dtype=model_dtype, micro_batch=1, seq_len=16, on_gpu=False, threads=threads,
                            load_model=False, label=f"attack {attack}")
        return Workload(**{**load, "forward_tokens": SHARED_ATTACK_TOKENS}, backward=True, on_gpu=False,
                        label=f"attack {attack}")
    if rule == "train_probe":          # feature extraction: forwards of probe.feature_batch_size sequences
        probe = config.get("probe") or {}
        return Workload(**{**load, "micro_batch": max(batch, int(probe.get("feature_batch_size", 8)))},
                        label="train_probe")
    if rule == "loss_landscape":        # metrics/landscape.py: θ₀ backup and the direction beside the weights,
        points = int((config.get("report") or {}).get("landscape_points", 11))   # 16 docs × 256 tokens per split
        return Workload(dtype=model_dtype, frozen_copies=2.0, micro_batch=16, seq_len=min(256, seq),
                        forward_tokens=points * 2 * 16 * 256, threads=threads, label="loss_landscape")
    if rule in ("cache_base_model", "cache_pretrained_model", "train_retrain_oracle"):
        return _model_cache_workload(rule, config, arch, data_dir, threads)
    raise ValueError(f"resources: no workload for rule {rule!r}")


def _model_cache_workload(rule: str, config: dict, arch: Architecture, data_dir, threads: int) -> Workload:
    """cache-model jobs run on the CPU (no GPU requested): a download, a tiny model trained from scratch, or the
    fine-tune of a pretrained model (model.finetune)."""
    model = config.get("model", {})
    dtype = model.get("dtype", "float32")
    finetune = model.get("finetune")
    fine_tunes = bool(finetune) and finetune.get("enabled", True) and rule != "cache_pretrained_model"
    if model.get("source") == "train_tiny" and rule != "cache_pretrained_model":
        t = model.get("train") or {}
        max_len, batch = int(t.get("max_len", 256)), int(t.get("batch_size", 32))
        # epochs (an upper bound: training stops early once the QA checks pass) over the base-training mixture
        steps = int(t.get("epochs", 30)) * math.ceil(mixture_rows(data_dir, rule) / batch)
        return Workload(dtype="float32", train=True, micro_batch=batch, seq_len=max_len, passes_per_step=1,
                        tokens_per_pass=batch * max_len, steps=steps, writes_model=True, on_gpu=False,
                        threads=threads, label=f"{rule} train_tiny")
    if fine_tunes:
        max_len, batch = int(finetune.get("max_len", 256)), int(finetune.get("batch_size", 8))
        accum = int(finetune.get("grad_accum", 1))
        steps = int(finetune.get("steps") or 0) or int(finetune.get("epochs", 1)) * math.ceil(
            mixture_rows(data_dir, rule) / (batch * accum))
        return Workload(dtype=dtype, train=True, micro_batch=batch, seq_len=max_len, passes_per_step=1,
                        tokens_per_pass=batch * accum * max_len, steps=steps, writes_model=True, on_gpu=False,
                        threads=threads, label=f"{rule} finetune")
    return Workload(dtype=dtype, micro_batch=1, seq_len=16, writes_model=True,
                    downloads=model.get("source") == "hub", on_gpu=False, threads=threads, label=f"{rule} fetch")


def estimate_job(rule: str, config: dict, arch: Architecture, **job: Any) -> Estimate:
    """:func:`estimate` of :func:`job_workload` (the one call the Snakefile makes per job)."""
    return estimate(arch, job_workload(rule, config, arch, **job))
