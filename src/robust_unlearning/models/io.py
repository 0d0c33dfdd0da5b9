"""Load and save models and tokenizers: safetensors only, offline, atomic."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..utils.io import atomic_dir, atomic_write_json, read_json, sha256_file

WEIGHTS_MANIFEST = "weights_manifest.json"


class ModelLoadError(RuntimeError):
    """A model directory is missing, incomplete, unsafe or corrupted; the message names the path."""


class ModelSaveError(OSError):
    """Saving a model failed (disk full, quota, permissions); nothing was left at the target path."""


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


# Whether this process may run a model's own Python code (config.json ``auto_map``). One `ru` job loads models
# for one config, so the CLI sets it once from ``--trust-remote-code`` (the rules pass it when the config says
# ``model.trust_remote_code: true``); every loader that is not told otherwise follows it. Off by default.
_TRUST_REMOTE_CODE = False


def set_trust_remote_code(value: bool) -> None:
    global _TRUST_REMOTE_CODE
    _TRUST_REMOTE_CODE = bool(value)


def _trust(value: bool | None) -> bool:
    return _TRUST_REMOTE_CODE if value is None else bool(value)


def resolve_dtype(name: str | torch.dtype | None) -> torch.dtype:
    if name is None:
        return torch.float32
    if isinstance(name, torch.dtype):
        return name
    try:
        return _DTYPES[name]
    except KeyError as exc:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPES)}") from exc


def check_model_dir(path: str | os.PathLike, allow_pickle: bool = False, verify_hashes: bool = True) -> Path:
    """Refuse a directory that is missing, has no weights, holds only pickle weights, or fails its hashes."""
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"{path}: model directory not found")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path}: no config.json (not a saved model directory)")
    safes = sorted(path.glob("*.safetensors"))
    pickles = sorted(list(path.glob("*.bin")) + list(path.glob("*.pt")) + list(path.glob("*.pth")))
    if not safes:
        if pickles and not allow_pickle:
            raise ModelLoadError(f"{path}: only pickle weights ({pickles[0].name}); refusing to unpickle "
                                 "untrusted files. Convert to safetensors or set allow_pickle: true")
        if not pickles:
            raise ModelLoadError(f"{path}: no weight files (*.safetensors)")
    manifest = path / WEIGHTS_MANIFEST
    if verify_hashes and manifest.is_file():
        recorded = read_json(manifest)
        for name, meta in recorded.get("files", {}).items():
            f = path / name
            if not f.is_file():
                raise ModelLoadError(f"{f}: listed in {WEIGHTS_MANIFEST} but missing")
            if f.stat().st_size != meta["size"]:
                raise ModelLoadError(f"{f}: size {f.stat().st_size} != recorded {meta['size']} (truncated?)")
            if sha256_file(f) != meta["sha256"]:
                raise ModelLoadError(f"{f}: sha256 does not match {WEIGHTS_MANIFEST} (corrupted)")
    return path


def load_tokenizer(path: str | os.PathLike, trust_remote_code: bool | None = None) -> PreTrainedTokenizerBase:
    path = Path(path)
    trust_remote_code = _trust(trust_remote_code)
    if not path.is_dir():
        raise ModelLoadError(f"{path}: tokenizer directory not found")
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        raise ModelLoadError(f"{path}: tokenizer has no pad token; set model.pad_token in the config "
                             "(e.g. the EOS token) when caching the model")
    return tok


def load_model(path: str | os.PathLike, dtype: str | torch.dtype | None = "float32", device: str | torch.device = "cpu",
               allow_pickle: bool = False, trust_remote_code: bool | None = None) -> PreTrainedModel:
    path = check_model_dir(path, allow_pickle=allow_pickle)
    trust_remote_code = _trust(trust_remote_code)
    cfg = read_json(path / "config.json")
    if cfg.get("auto_map") and not trust_remote_code:
        raise ModelLoadError(f"{path}: config.json asks for remote code (auto_map); refusing unless "
                             "trust_remote_code: true is set in the config")
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=resolve_dtype(dtype), local_files_only=True, use_safetensors=not allow_pickle,
        trust_remote_code=trust_remote_code)
    return model.to(device)


def load_model_and_tokenizer(path, dtype="float32", device="cpu", **kw):
    return load_model(path, dtype=dtype, device=device, **kw), load_tokenizer(path, kw.get("trust_remote_code"))


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, path: str | os.PathLike,
               extra_files: dict[str, object] | None = None) -> Path:
    """Save atomically (temp dir + rename) with safetensors and a size/sha256 manifest of every file.

    On any failure (a full disk included) the temporary directory is removed, ``path`` is left as it was and a
    :class:`ModelSaveError` names the path and the cause.
    """
    path = Path(path)
    try:
        with atomic_dir(path) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            for name, obj in (extra_files or {}).items():
                atomic_write_json(tmp / name, obj)
            files = {f.name: {"size": f.stat().st_size, "sha256": sha256_file(f)}
                     for f in sorted(tmp.iterdir()) if f.is_file()}
            atomic_write_json(tmp / WEIGHTS_MANIFEST, {"files": files})
    except Exception as exc:  # safetensors reports a full disk as a plain Exception wrapping the OS error
        text = str(exc)
        full = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or any(
            k in text for k in ("No space left", "StorageFull", "File too large", "Disk quota"))
        hint = "disk full: free space or move results_dir" if full else "see the cause above"
        raise ModelSaveError(f"{path}: could not save the model ({hint}; nothing was written): "
                             f"{type(exc).__name__}: {text}") from exc
    return path
