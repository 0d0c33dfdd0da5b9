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
