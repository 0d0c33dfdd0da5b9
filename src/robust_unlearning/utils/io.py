"""Atomic, validated file I/O.

Every writer goes through a temporary sibling path and ``os.replace`` so that a crash never leaves a
partial file that a later run would trust. Every reader names the file (and line) on malformed input.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


class DataFormatError(ValueError):
    """A data file is malformed; the message names the file (and line)."""


def _tmp_prefix(path: Path) -> str:
    """Temp siblings are named ``.<name>.<host>-<pid>.<random>.tmp``: a later writer of the same path can tell
    the leftovers of a killed process (SIGKILL, node crash) from a live writer's and remove them."""
    return f".{path.name}.{socket.gethostname()}-{os.getpid()}."


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove temp siblings of ``path`` left by processes of this host that no longer exist; returns them."""
    path = Path(path)
    host = socket.gethostname()
    removed = []
    if not path.parent.is_dir():
        return removed
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.{glob.escape(host)}-*.tmp"):
        pid = tmp.name[len(f".{path.name}.{host}-"):].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tmp_sibling(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def dumps_json(obj: Any) -> str:
    """Canonical JSON: sorted keys, UTF-8, trailing newline (byte-stable for a given object)."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, indent=1) + "\n"


# Results that later jobs trust (metrics.json, run.json) carry the sha256 of their own canonical JSON under this
# key, written with the file; read_json verifies it, so a file damaged after the write (bad disk, a stray edit,
# a partial copy that still parses) is reported with its path instead of being aggregated as valid.
CHECKSUM_KEY = "content_sha256"


def _content_sha256(obj: dict) -> str:
    return sha256_text(dumps_json({k: v for k, v in obj.items() if k != CHECKSUM_KEY}))


def atomic_write_json(path: str | os.PathLike, obj: Any, checksum: bool = False) -> None:
    """Canonical JSON, atomically; ``checksum=True`` (a dict) adds ``content_sha256`` of the rest."""
    if checksum:
        obj = {**{k: v for k, v in obj.items() if k != CHECKSUM_KEY}, CHECKSUM_KEY: _content_sha256(obj)}
    atomic_write_text(path, dumps_json(obj))


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> None:
    lines = [json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows]
    atomic_write_text(path, "".join(lines))


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: not valid UTF-8 text (byte {exc.start})") from exc


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    text = _read_text(path)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    if isinstance(obj, dict) and CHECKSUM_KEY in obj and obj[CHECKSUM_KEY] != _content_sha256(obj):
        raise DataFormatError(f"{path}: content does not match its recorded {CHECKSUM_KEY} (corrupted after "
                              "it was written); delete it and rerun the job that writes it")
    return obj


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    path = Path(path)
    rows = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{path}: malformed JSON on line {lineno}: {exc.msg}") from exc
    return rows


def load_settings(text: str) -> Any:
    """A settings argument: inline JSON (``'{"lr": 1e-5}'``), or the path of a ``.json`` / ``.yaml`` / ``.yml``
    file holding the same. Raises ``ValueError`` naming the file (and line) or saying why the text is neither."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        inline_error = exc
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"neither inline JSON ({inline_error.msg} at column {inline_error.colno}) nor an existing "
                         f"settings file: {text!r}")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(_read_text(path))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise DataFormatError(f"{path}: malformed YAML{where}: {getattr(exc, 'problem', exc)}") from exc
    if path.suffix.lower() == ".json":
        return read_json(path)
    raise ValueError(f"{path}: a settings file must end in .json, .yaml or .yml")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; on success it replaces ``path`` in one rename.

    On any exception the temporary directory is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
