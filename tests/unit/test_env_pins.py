"""The conda env files used on clusters pin the same requirements as pyproject.toml (local installs)."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _normalise(req: str) -> str:
    return req.replace(" ", "").lower().replace("_", "-")


def test_conda_env_pins_agree_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r): _normalise(r) for r in project["dependencies"]}
    extras = {_name(r): _normalise(r) for reqs in project.get("optional-dependencies", {}).values() for r in reqs}
    for env_file in sorted((ROOT / "envs").glob("*.yaml")):
        env = yaml.safe_load(env_file.read_text())
        pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
        pinned = {_name(r): _normalise(r) for r in pip if not r.startswith("-")}
        for name, spec in pinned.items():
            known = wanted.get(name) or extras.get(name)
            assert known, f"{env_file.name}: {name} is not a dependency (or extra) in pyproject.toml"
            assert spec == known, f"{env_file.name}: {spec} != pyproject's {known}"
        runtime = {n for n in wanted if not n.startswith("snakemake")}  # the driver runs snakemake, not the env
        missing = runtime - set(pinned)
        assert not missing, f"{env_file.name} lacks {sorted(missing)}"


def test_torch_is_pinned_exactly():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "torch==2.13.0" in project["dependencies"]


def _pip_entries(env_file: Path) -> list[str]:
    env = yaml.safe_load(env_file.read_text())
    return [r for d in env["dependencies"] if isinstance(d, dict) and "pip" in d for r in d["pip"]]


def test_env_files_hold_only_pinned_requirements_no_paths():
    """Snakemake builds an env from a copy of its file under .snakemake/conda/: a relative path (`-e ../`, `.`)
    or any pip option would be resolved from there. Every entry is a named requirement with a version spec."""
    files = sorted((ROOT / "envs").glob("*.yaml"))
    assert files
    for env_file in files:
        for req in _pip_entries(env_file):
            assert not req.startswith("-"), f"{env_file.name}: pip option {req!r} (editable/relative installs break)"
            assert "/" not in req and not req.startswith("."), f"{env_file.name}: {req!r} is a path"
            assert re.search(r"(==|>=|<=|~=|<|>)\d", req), f"{env_file.name}: {req!r} is not pinned"


def test_rules_reach_the_library_without_installing_it(tmp_path):
    """workflow/bin/ru (first on every job's PATH, common.smk's shell.prefix) runs the library from src/ with
    whatever python the job has: here a PATH with only the interpreter's folder, from another directory."""
    import os
    import subprocess
    import sys

    common = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    assert 'shell.prefix("set -euo pipefail; export PATH="' in common and '"workflow", "bin"' in common
    launcher = ROOT / "workflow" / "bin" / "ru"
    assert os.access(launcher, os.X_OK)
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}/usr/bin{os.pathsep}/bin", "HOME": str(tmp_path)}
    res = subprocess.run([str(launcher), "validate-config", str(ROOT / "config.yaml")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "valid" in res.stdout, res.stderr[-2000:]
    where = subprocess.run([str(launcher), "--version"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert where.returncode == 0 and where.stdout.startswith("ru (robust-unlearning)")
