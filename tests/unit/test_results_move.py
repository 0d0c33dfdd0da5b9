"""Moving a finished results tree to another machine (docs/cluster.md, "Moving a results tree").

Snakemake decides what to rerun from modification times: an output older than one of its inputs is redone,
and so is everything downstream. A copy that keeps mtimes (`cp -a`, `rsync -a`, tar) leaves a finished tree
finished; a copy that resets them (`cp -r`, `scp -r`, most upload tools) stamps each file with the moment it
was copied, so any output copied before its input looks stale, and the rerun redoes the grid below it.

The test builds a small finished tree with a toy Snakefile of the same shape as ours (a data file, a model
*directory*, an evaluation that reads the model), moves it with the recommended commands and shows that
`snakemake -n` plans nothing — without the `.snakemake/` metadata, which a move between machines usually
leaves behind. It then shows the failure: `cp -r` really resets mtimes, and a copy with reset mtimes in which
a downstream file lands before its input makes Snakemake plan the downstream jobs again.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

# about 6 Snakemake start-ups (~20-40 s on a busy 2-core machine)
pytestmark = pytest.mark.slow

SNAKEMAKE = Path(sys.executable).with_name("snakemake")

TOY = """
rule all:
    input: "results/eval/metrics.json"

rule prepare:
    output: "results/data/forget.json"
    shell: "echo '[1, 2, 3]' > {output}"

rule train:
    input: "results/data/forget.json"
    output: directory("results/models/base")
    params: lr=0.001
    shell: "mkdir -p {output} && cp {input} {output}/weights.bin"

rule evaluate:
    input: "results/models/base"
    output: "results/eval/metrics.json"
    shell: "echo '{{\\"acc\\": 1}}' > {output}"
"""


def _snakemake(workdir: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{SNAKEMAKE.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    p = subprocess.run([str(SNAKEMAKE), "--cores", "1", "--snakefile", "Snakefile", *args], cwd=workdir, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout + p.stderr


def _planned_jobs(out: str) -> set[str]:
    """Rule names of the jobs a dry run would execute (``rule <name>:`` lines)."""
    return {line.split()[1].rstrip(":") for line in out.splitlines() if line.startswith("rule ")} - {"all"}


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    if not SNAKEMAKE.exists():
        pytest.skip(f"snakemake not installed next to {sys.executable}")
    src = tmp_path_factory.mktemp("machine_a")
    (src / "Snakefile").write_text(TOY)
    _snakemake(src)
    # age the tree, so that a copy made now with fresh mtimes is distinguishable from one that keeps them
    old = time.time() - 3600
    for p in sorted((src / "results").rglob("*"), key=lambda p: len(p.parts)):
        os.utime(p, (old, old))
    assert "Nothing to be done" in _snakemake(src, "-n")
    return src


def _new_machine(tmp_path: Path, src: Path) -> Path:
    """A fresh checkout elsewhere: the workflow, but none of the source's `.snakemake/` metadata."""
    dst = tmp_path / "machine_b"
    dst.mkdir()
    shutil.copyfile(src / "Snakefile", dst / "Snakefile")
    return dst


@pytest.mark.parametrize("how", ["cp -a", "tar"])
def test_recommended_copy_reruns_nothing(finished, tmp_path, how):
    dst = _new_machine(tmp_path, finished)
    if how == "cp -a":
        subprocess.run(["cp", "-a", str(finished / "results"), str(dst / "results")], check=True)
    else:
        if shutil.which("tar") is None:
            pytest.skip("tar not installed")
        archive = tmp_path / "results.tar"
        # POSIX (pax) format keeps sub-second mtimes; GNU tar's default format rounds them down to seconds
        subprocess.run(["tar", "--format=posix", "-cf", str(archive), "-C", str(finished), "results"], check=True)
        subprocess.run(["tar", "-xf", str(archive), "-C", str(dst)], check=True)
    assert _mtimes(dst / "results") == _mtimes(finished / "results")
    out = _snakemake(dst, "-n")
    assert "Nothing to be done" in out and not _planned_jobs(out), out


def test_plain_copy_resets_mtimes_and_reruns_the_grid(finished, tmp_path):
    # `cp -r` stamps every file with the time of the copy
    plain = tmp_path / "plain"
    subprocess.run(["cp", "-r", str(finished / "results"), str(plain)], check=True)
    before, after = _mtimes(finished / "results"), _mtimes(plain)
    assert before.keys() == after.keys()
    assert all(after[k] > before[k] for k in before), "cp -r kept the modification times"

    # The order in which `cp -r` meets files is the directory order, not the pipeline's. Where a downstream
    # file is copied before its input (the worst order, made explicit here), the finished tree looks stale.
    dst = _new_machine(tmp_path, finished)
    order = ["results/eval/metrics.json", "results/models/base/weights.bin", "results/data/forget.json"]
    for rel in order:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(finished / rel, dst / rel)   # content only, fresh mtime
        time.sleep(0.02)
    out = _snakemake(dst, "-n")
    assert _planned_jobs(out) == {"train", "evaluate"}, out
