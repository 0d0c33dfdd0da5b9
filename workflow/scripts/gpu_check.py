#!/usr/bin/env python3
"""The prepared GPU check: training and evaluation throughput of a 7B-shaped Llama on one accelerator.

Run on a GPU machine with a stock PyTorch + transformers + accelerate + peft install, no network, no weights::

    PYTHONPATH=src python workflow/scripts/gpu_check.py                 # 7B shape, bf16, ≤ 8 min on one H200
    PYTHONPATH=src python workflow/scripts/gpu_check.py --smoke         # same code, tiny shape, CPU, < 1 min

Several GPUs for one model (docs/methods.md, "Several processes"): start it as N processes, one per GPU, and the
training loop shards the model with FSDP (``--distributed ddp``: replicated), e.g. full-parameter PRISM on an
8B shape over 2 GPUs::

    PYTHONPATH=src python -m accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1 \
        --mixed_precision no --dynamo_backend no --main_process_port 0 workflow/scripts/gpu_check.py \
        --shape ministral-8b --methods PRISM --no-lora

(``torchrun --standalone --nproc_per_node 2 workflow/scripts/gpu_check.py …`` works as well.) Each process builds
the model on its GPU and shards it; the table then gives s/step for the global batch, the peak memory of the
fullest GPU and MFU per GPU; the evaluation part is skipped (evaluation runs one process per GPU).

What it measures (one JSON summary, also printed as a table), with random weights built from a config on the
device (the numbers depend on the shapes, not on the weights):

* NPO+GDR, SAM+NPO and PRISM through the project's own training loop (``methods.Trainer``) at the paper presets'
  micro-batch × accumulation × sequence length (``workflow/presets/muse_news.yaml``: 1 × 4 × 2048), in bf16 with
  gradient checkpointing, in the presets' `logit` NPO form (a frozen reference copy, one reference forward per
  step); and PRISM with LoRA (r 16 on the attention projections);
* s/step, tokens/s, peak memory, and model FLOPs utilisation (MFU);
* evaluation: teacher-forced scoring tokens/s and batched greedy generation tokens/s.

MFU accounting (PaLM's): a forward+backward pass costs 6·N FLOPs per token plus 12·L·d·T for attention (included),
N = non-embedding parameters; each method's step is counted as the forward+backward passes it makes (NPO+GDR: one
forget and one retain pass; SAM+NPO and PRISM: one more forget pass), plus the logit form's reference forward on
the forget batch (a third of a pass); activation recomputation under gradient checkpointing is not model FLOPs.
The denominator is the accelerator's dense bf16 peak (``--peak-tflops``, default 989 = H200 SXM); say which when
quoting. Only ``src/robust_unlearning/methods`` is imported from the project (no snakemake, jsonschema, lm-eval).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch

# 7B Llama-2 shape (MUSE-News/Books targets); --smoke swaps in a tiny one
SHAPES = {
    "llama-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, vocab_size=32000),
    # the WMDP preset's Ministral-8B-Instruct-2410 as a Llama of the same shape (8.0 B parameters)
    "ministral-8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, vocab_size=131072),
    "smoke": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, vocab_size=512),
}
METHODS = {  # name in the table -> (registry name, params), the presets' settings (muse_news.yaml), logit form included
    "NPO+GDR": ("npo", {"lr": 1e-5, "beta": 0.1, "npo_form": "logit", "retain_loss": "gdr", "lambda_r": 1.0}),
    "SAM+NPO": ("sam_npo", {"lr": 1e-5, "beta": 0.1, "npo_form": "logit", "rho": 0.01, "retain_loss": "gdr",
                            "lambda_r": 1.0}),
    "PRISM": ("prism", {"lr": 1e-5, "beta": 0.1, "npo_form": "logit", "rho": 0.011, "gamma_max": 0.085,
                        "retain_loss": "gdr", "lambda_f": 1.0, "lambda_r": 1.0}),
}
# policy forward+backward passes per step, plus the logit form's reference forward on the forget batch (1/3 of a pass)
FORWARD_BACKWARD_PASSES = {"npo": 2 + 1 / 3, "sam_npo": 3 + 1 / 3, "prism": 3 + 1 / 3}


def build_model(shape: str, dtype: torch.dtype, device: torch.device, seq_len: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**SHAPES[shape], max_position_embeddings=max(seq_len, 128), bos_token_id=1, eos_token_id=2,
                      pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    return model


class _Tok:
    """The loop reads only ``pad_token_id`` / ``eos_token_id`` of the tokenizer."""
    pad_token_id, eos_token_id = 0, 2


def examples(n: int, seq_len: int, vocab: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = [1] + torch.randint(3, vocab, (seq_len - 1,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": list(ids)})
    return out


def n_nonembedding(model) -> int:
    emb = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" in n or "lm_head" in n)
    return sum(p.numel() for p in model.parameters()) - emb


def flops_per_token(model, seq_len: int) -> float:
    c = model.config
    return 6.0 * n_nonembedding(model) + 12.0 * c.num_hidden_layers * c.hidden_size * seq_len


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device, group=None) -> float:
    """Peak memory of this process's device; with several processes the largest over them (a collective)."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # process-wide high-water mark on CPU
    if group is not None:
        t = torch.tensor([peak], dtype=torch.float64, device=group.comm_device)
        group.dist.all_reduce(t, op=group.dist.ReduceOp.MAX)
        peak = float(t.item())
    return peak


def random_probe(model, layer: int):
    """An untrained PRISM probe of the right shape: the check times the step, not the probe's quality."""
    from robust_unlearning.methods.probe import Probe

    torch.manual_seed(0)
    probe = Probe(int(model.config.hidden_size))
    return probe, {"layer": layer, "in_dim": int(model.config.hidden_size), "pooling": "mean"}


def train_check(label: str, model, args, device, lora: bool = False, group=None) -> dict:
    from robust_unlearning.methods import Trainer, TrainConfig, build_method

    name, params = METHODS[label]
    tcfg = {"steps": args.steps + 1, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
            "max_len": args.seq_len, "dtype": args.dtype, "gradient_checkpointing": True, "progress": False,
            "lr_schedule": "constant", "grad_clip": 1.0}
    if group is not None:
        tcfg["distributed"] = args.distributed
    if lora:
        tcfg["lora"] = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj",
                                                                                 "o_proj"]}
    n = args.batch_size * args.grad_accum
    vocab = int(model.config.vocab_size)
    forget, retain = examples(n, args.seq_len, vocab, 1), examples(n, args.seq_len, vocab, 2)
    probe = random_probe(model, int(model.config.num_hidden_layers) // 2 + 1) if name == "prism" else None
    reset_peak(device)
    trainer = Trainer(model, _Tok(), build_method(name, params), TrainConfig.from_dict(tcfg), forget, retain,
                      seed=0, device=str(device), probe=probe)
    trainer.train_step(0)                        # warm-up: kernels, allocator, optimizer state
    sync(device)
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        row = trainer.train_step(step)
    sync(device)
    s_per_step = (time.perf_counter() - t0) / args.steps
    tokens = n * args.seq_len                     # forget tokens per optimizer step (= retain tokens)
    passes = FORWARD_BACKWARD_PASSES[name]
    flops = flops_per_token(model, args.seq_len) * tokens * passes
    n_gpus = 1 if group is None else group.world
    out = {"method": label + (" + LoRA" if lora else ""), "s_per_step": s_per_step,
           "tokens_per_s": tokens * 2 / s_per_step,        # forget + retain tokens of the logical batch per second
           "forget_tokens_per_s": tokens / s_per_step, "peak_mem_mb": peak_mb(device, group),
           "tflops": flops / s_per_step / 1e12, "mfu": flops / s_per_step / (n_gpus * args.peak_tflops * 1e12),
           "passes": passes, "loss": row.get("loss"), "grad_norm": row.get("grad_norm"),
           "processes": n_gpus, "distributed": trainer.dist_mode}
    if lora:   # LoRA's backward skips the frozen weights' gradients: its MFU by 6·N overstates; report as is
        out["note"] = "MFU counts 6·N per token, which overstates LoRA's work (no weight gradients)"
    trainer.model = trainer.ref_model = trainer.optimizer = trainer._buffer = None
    del trainer
    reset_peak(device)
    return out


@torch.no_grad()
def eval_check(model, args, device) -> dict:
    model.eval()
    vocab = int(model.config.vocab_size)
    bs, T = args.eval_batch, args.seq_len
    ids = torch.randint(3, vocab, (bs, T), generator=torch.Generator().manual_seed(3)).to(device)
    reset_peak(device)
    model(input_ids=ids, use_cache=False)           # warm-up
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.eval_reps):
        logits = model(input_ids=ids, use_cache=False).logits
        torch.log_softmax(logits.float(), -1)       # the scoring path's extra work on the vocabulary
        del logits
    sync(device)
    score_tps = bs * T * args.eval_reps / (time.perf_counter() - t0)
    score_peak = peak_mb(device)
    prompt = ids[:, : args.prompt_len]
    model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4, do_sample=False,
                   pad_token_id=0)
    sync(device)
    t0 = time.perf_counter()
    out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.new_tokens,
                         min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
    sync(device)
    gen_s = time.perf_counter() - t0
    new = (out.shape[1] - prompt.shape[1]) * bs
    return {"score_tokens_per_s": score_tps, "score_batch": bs, "score_len": T, "score_peak_mem_mb": score_peak,
            "generate_new_tokens_per_s": new / gen_s, "generate_batch": bs, "generate_prompt_len": args.prompt_len,
            "generate_new_tokens": args.new_tokens, "generate_peak_mem_mb": peak_mb(device)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shape on CPU (or the given --device), < 1 min")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    ap.add_argument("--steps", type=int, default=None, help="timed optimizer steps per method (after 1 warm-up)")
    ap.add_argument("--batch-size", type=int, default=None, help="micro-batch (presets: 1)")
    ap.add_argument("--grad-accum", type=int, default=None, help="micro-batches per step (presets: 4)")
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per example (presets: 2048)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the device (H200: 989)")
    ap.add_argument("--methods", default="NPO+GDR,SAM+NPO,PRISM", help="comma-separated subset of the table")
    ap.add_argument("--no-lora", action="store_true", help="skip the PRISM + LoRA variant")
    ap.add_argument("--shape", default=None, choices=[k for k in SHAPES if k != "smoke"],
                    help="model shape (default llama-7b; --smoke: a tiny one)")
    ap.add_argument("--distributed", default="fsdp", choices=["fsdp", "ddp"],
                    help="under accelerate launch / torchrun with several processes: sharded or replicated")
    ap.add_argument("--out", default="results/gpu_check.json", help="JSON summary (written atomically)")
    args = ap.parse_args(argv)
    smoke = args.smoke
    defaults = dict(steps=2 if smoke else 3, batch_size=1, grad_accum=2 if smoke else 4, seq_len=64 if smoke else 2048)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.eval_batch, args.eval_reps = (2, 2) if smoke else (8, 3)
    args.prompt_len, args.new_tokens = (16, 8) if smoke else (512, 128)
    from robust_unlearning.methods import distributed

    group = distributed.init()      # None with one process; several: joined, this process's GPU taken
    main_rank = group is None or group.is_main
    say = print if main_rank else (lambda *a, **k: None)
    device = group.device if group is not None else \
        torch.device(args.device or ("cuda" if torch.cuda.is_available() and not smoke else "cpu"))
    dtype = getattr(torch, args.dtype)
    shape = "smoke" if smoke else (args.shape or "llama-7b")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    t_start = time.perf_counter()
    model = build_model(shape, dtype, device, args.seq_len)
    n_params = sum(p.numel() for p in model.parameters())
    summary = {"shape": shape, "n_params": n_params, "n_nonembedding": n_nonembedding(model), "dtype": args.dtype,
               "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
               else platform.processor() or platform.machine(), "torch": torch.__version__,
               "batch": {"micro": args.batch_size, "grad_accum": args.grad_accum, "seq_len": args.seq_len},
               "peak_tflops": args.peak_tflops, "gradient_checkpointing": True, "train": [], "eval": None,
               "processes": 1 if group is None else group.world,
               "distributed": None if group is None else args.distributed}
    import transformers
    summary["transformers"] = transformers.__version__
    say(f"[gpu_check] {shape}: {n_params / 1e9:.2f} B params, {args.dtype} on {summary['device_name']}"
        + (f" × {group.world} processes ({args.distributed})" if group is not None else ""), flush=True)
    init_state = {k: v.detach().clone() for k, v in model.state_dict().items()} if smoke else None
    labels = [m.strip() for m in args.methods.split(",") if m.strip()]
    # several processes: no LoRA row (it runs replicated, the one-GPU case) and a fresh model per method (FSDP
    # shards the model it trains in place)
    runs = [(m, False) for m in labels] + ([] if args.no_lora or group is not None else [("PRISM", True)])
    for label, lora in runs:
        if label not in METHODS:
            ap.error(f"--methods: unknown {label!r}; expected some of {sorted(METHODS)}")
        t0 = time.perf_counter()
        if group is not None and summary["train"]:
            model = None
            reset_peak(device)
            model = build_model(shape, dtype, device, args.seq_len)
        try:
            res = train_check(label, model, args, device, lora=lora, group=group)
        except torch.OutOfMemoryError as exc:   # a visible row, not a crash of the whole check
            if group is not None:   # the other processes would wait for this one in the next collective
                raise
            res = {"method": label + (" + LoRA" if lora else ""), "error": f"out of memory: {exc}".splitlines()[0]}
            reset_peak(device)
        res["wall_s"] = time.perf_counter() - t0
        summary["train"].append(res)
        say(f"[gpu_check] {res['method']}: " + (res.get("error") or
              f"{res['s_per_step']:.2f} s/step, {res['tokens_per_s']:.0f} tok/s, peak {res['peak_mem_mb']:.0f} MB, "
              f"MFU {res['mfu']:.1%}"), flush=True)
        if lora and hasattr(model, "unload"):      # peft wraps the model in place: take the adapters out again
            model = model.unload()
    if group is None:
        summary["eval"] = eval_check(model, args, device)
        e = summary["eval"]
        print(f"[gpu_check] eval: scoring {e['score_tokens_per_s']:.0f} tok/s, generation "
              f"{e['generate_new_tokens_per_s']:.0f} new tok/s (batch {e['generate_batch']})", flush=True)
    summary["wall_s"] = time.perf_counter() - t_start
    if init_state is not None and group is None:   # the smoke run also proves that the steps trained the model
        summary["params_changed"] = any(not torch.equal(init_state[k], v) for k, v in model.state_dict().items()
                                        if k in init_state)
    if not main_rank:
        distributed.shutdown()
        return 0
    print_table(summary)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(summary, indent=2, default=float) + "\n")
    os.replace(tmp, out)
    print(f"[gpu_check] wrote {out} in {summary['wall_s']:.0f} s")
    if group is not None:
        distributed.shutdown()
    return 0 if all("error" not in r for r in summary["train"]) else 1


def print_table(summary: dict) -> None:
    b = summary["batch"]
    spread = (f", {summary['processes']} processes ({summary['distributed']}): peak memory of the fullest GPU, MFU "
              "per GPU" if summary.get("processes", 1) > 1 else "")
    print(f"\n| method | s/step | tokens/s | peak memory (GiB) | MFU |  ({summary['shape']}, {summary['dtype']}, "
          f"{b['micro']}×{b['grad_accum']}×{b['seq_len']}, checkpointing, peak {summary['peak_tflops']:.0f} TFLOP/s"
          f"{spread})")
    print("|---|---|---|---|---|")
    for r in summary["train"]:
        if "error" in r:
            print(f"| {r['method']} | – | – | – | {r['error']} |")
        else:
            print(f"| {r['method']} | {r['s_per_step']:.2f} | {r['tokens_per_s']:.0f} | {r['peak_mem_mb'] / 1024:.1f} "
                  f"| {r['mfu']:.1%} |")
    e = summary["eval"]
    if e is None:
        return
    print(f"\nevaluation: scoring {e['score_tokens_per_s']:.0f} tokens/s (batch {e['score_batch']} × "
          f"{e['score_len']}); greedy generation {e['generate_new_tokens_per_s']:.0f} new tokens/s "
          f"(batch {e['generate_batch']}, prompt {e['generate_prompt_len']}, {e['generate_new_tokens']} new)\n")


if __name__ == "__main__":
    sys.exit(main())
