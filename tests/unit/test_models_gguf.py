"""GGUF source resolution: clear errors naming the config key when the package or file is missing."""
from __future__ import annotations

import pytest

from robust_unlearning.models.gguf import GGUFSourceError, resolve_gguf


def test_missing_package_names_the_key_and_make_gguf():
    with pytest.raises(GGUFSourceError, match=r"model\.name_or_path.*not installed.*make gguf"):
        resolve_gguf("pkg:no_such_package_xyz", "model.gguf")


def test_missing_file_names_the_key(tmp_path):
    (tmp_path / "other.gguf").write_bytes(b"GGUF")
    with pytest.raises(GGUFSourceError, match=r"model\.gguf_file.*model\.gguf not found.*other\.gguf"):
        resolve_gguf(str(tmp_path), "model.gguf")
    with pytest.raises(GGUFSourceError, match=r"model\.name_or_path"):
        resolve_gguf(str(tmp_path / "nowhere"), "model.gguf")


def test_directory_file_and_single_file_inference(tmp_path):
    f = tmp_path / "m.Q4.gguf"
    f.write_bytes(b"GGUF")
    assert resolve_gguf(str(tmp_path), "m.Q4.gguf") == (tmp_path, "m.Q4.gguf")
    assert resolve_gguf(str(f), None) == (tmp_path, "m.Q4.gguf")
    assert resolve_gguf(str(tmp_path), None) == (tmp_path, "m.Q4.gguf")   # the only .gguf file there


def test_package_directory_is_found_without_importing_it(tmp_path, monkeypatch):
    pkg = tmp_path / "fake_gguf_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (pkg / "w.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve_gguf("pkg:fake_gguf_pkg", "w.gguf") == (pkg, "w.gguf")
