"""Helpers of the reliability suite: temp copies of the workflow, Snakemake runs, result comparisons, and the
network guard. Pipeline runs are expensive (2 cores), so the suite shares them:

- ``reference_run`` (conftest, session): the miniature config, once, uninterrupted, with networking blocked and a
  planted API key in the environment. It is determinism run A, the network test, the planted-key grep and the
  reference that the SIGKILL / SIGTERM runs are compared with.
- fault runs use VARIANTS of the miniature config that keep its ``benchmark`` and ``model`` sections and are
  SEEDED with the reference's data and models (files + Snakemake metadata copied), so only the unlearning /
  attack / evaluation jobs run again. Their grid cells are a subset of the reference's, with identical inputs,
  so their rows must equal the reference's rows.
"""
from __future__ import annotations

import copy
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MINI = ROOT / "tests" / "e2e" / "mini_config.yaml"
BENCH = "results/synthetic"
#: planted in the environment of the reference run; must never appear in results, logs or Snakemake output
PLANTED_KEY = "sk-reliability-PLANTED-7f3c9a1e5b2d4c6e8a0b"
#: rows read from run.json, not evaluation cells: timing and memory legitimately differ between two runs of the
#: same config, and the training-term means come with them (excluded from comparisons)
COST_METRICS = {"s_per_step", "tokens_per_s", "peak_mem_mb", "probe_grad_ratio", "sam_loss_gain",
                "gcd_removed_fraction"}

_NET_GUARD = '''\
"""Installed by tests/reliability (PYTHONPATH): refuse and record every non-local network connection."""
import os, socket, sys

_LOG = os.environ.get("RU_NETGUARD_LOG")
_LOCAL = {None, "", "localhost", "127.0.0.1", "::1", "0.0.0.0"}


def _record(what):
    if _LOG:
        with open(_LOG, "a", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()} {what} argv={sys.argv[:3]!r}\\n")


def _netns():
    try:
        return os.readlink("/proc/self/ns/net")
    except OSError:
        return "unknown"


if _LOG:
    _record(f"LOADED netns={_netns()}")
    _connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def _check(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            _record(f"BLOCKED connect {address!r}")
            raise OSError(101, "network blocked by the reliability test guard")

    def connect(self, address):
        _check(self, address)
        return _connect(self, address)

    def connect_ex(self, address):
        _check(self, address)
        return _connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if host not in _LOCAL and host != socket.gethostname():
            _record(f"BLOCKED getaddrinfo {host!r}")
            raise socket.gaierror(socket.EAI_NONAME, "name resolution blocked by the reliability test guard")
        return _getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
'''


# ------------------------------------------------------------------------------------------------ configs
def mini_config() -> dict:
    return yaml.safe_load(MINI.read_text())


def variant(methods: dict | None = None, attacks: dict | None = None, **top) -> dict:
    """The miniature config with other unlearning methods / attacks (``benchmark`` and ``model`` untouched, so
    a workdir seeded from the reference reuses its data and models)."""
    cfg = mini_config()
    if methods is not None:
        cfg["unlearning"]["methods"] = copy.deepcopy(methods)
    if attacks is not None:
        cfg["attacks"] = copy.deepcopy(attacks)
    cfg.setdefault("report", {})["loss_landscape"] = False
    for key, value in top.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return cfg


def run_ids(cfg: dict, method: str) -> list[str]:
    """Model ids (``unlearn/<method>/<params>/seed~<s>``) of ``method`` in ``cfg``, as the workflow names them."""
    from robust_unlearning.config import validate_config
    from robust_unlearning.config.grid import unlearn_runs

    return [r.model_id for r in unlearn_runs(validate_config(cfg)) if r.method == method]


def attack_params(cfg: dict, attack: str) -> list[str]:
    from robust_unlearning.config import validate_config
    from robust_unlearning.config.grid import attack_settings

    return [a.params for a in attack_settings(validate_config(cfg)) if a.attack == attack]


#: the miniature config's methods (ga, graddiff, npo) and their model ids: the variants reuse them unchanged
MINI_METHODS = mini_config()["unlearning"]["methods"]
GA, GRADDIFF, NPO = (run_ids(mini_config(), m)[0] for m in ("ga", "graddiff", "npo"))
#: its relearning attack (one strength) on the unlearned models only
_relearn = mini_config()["attacks"]["relearn"]
RELEARN_ONE = {"enabled": ["relearn"], "targets": ["unlearned"],
               "relearn": {**_relearn, **{k: v[:1] for k, v in _relearn.items() if isinstance(v, list)}}}


# ------------------------------------------------------------------------------------------------ workdirs
def copy_workflow(dest: Path, config: dict | None = None) -> Path:
    """A runnable copy of the workflow in ``dest`` with ``config`` (default: the miniature one) as run.yaml."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "config.yaml"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "workflow", dest / "workflow")
    shutil.copytree(ROOT / "envs", dest / "envs")
    (dest / "run.yaml").write_text(yaml.safe_dump(config if config is not None else mini_config(), sort_keys=False))
    return dest


def seed_workdir(reference: Path, dest: Path, config: dict, extra: Iterable[str] = ()) -> Path:
    """A workflow copy whose data and models (and ``extra`` result paths) come from ``reference``, with the
    Snakemake metadata, so Snakemake sees them as up to date and runs only what ``config`` adds."""
    copy_workflow(dest, config)
    for rel in ("data", "models", *extra):
        shutil.copytree(reference / BENCH / rel, dest / BENCH / rel, symlinks=True)
    shutil.copytree(reference / ".snakemake" / "metadata", dest / ".snakemake" / "metadata")
    return dest


def snakemake_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RU_FAULT_INJECT"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               MPLBACKEND="Agg")
    env.update(extra or {})
    return env


#: the model-training rules ask for 2 threads; in the suite they get 1. `make test` runs lanes side by side on
#: 2 cores (tests/conftest.py), and a 2-thread torch job that shares its cores with another process stalls at every
#: parallel region: the base model took 350 s instead of 109 s. (The oracle still trains after the base model: it
#: trains for the epochs the base model needed.)
ONE_THREAD = ["--set-threads", "cache_base_model=1", "train_retrain_oracle=1", "cache_pretrained_model=1"]


def snakemake_cmd(*args: str, cores: int = 2, configfile: str = "run.yaml") -> list[str]:
    """``args`` first: --configfile (like --config) takes several values, it would swallow a target after it."""
    return [str(BIN / "snakemake"), *args, *ONE_THREAD, "--cores", str(cores), "--scheduler", "greedy",
            "--configfile", configfile]


def run_snakemake(workdir: Path, *args: str, env: dict | None = None, prefix: list[str] | None = None,
                  timeout: int = 900, cores: int = 2, configfile: str = "run.yaml") -> subprocess.CompletedProcess:
    cmd = (prefix or []) + snakemake_cmd(*args, cores=cores, configfile=configfile)
    res = subprocess.run(cmd, cwd=workdir, env=env or snakemake_env(), capture_output=True, text=True,
                         timeout=timeout)
    with open(workdir / "snakemake_runs.log", "a", encoding="utf-8") as fh:  # for the planted-key grep
        fh.write(f"$ {' '.join(cmd)}\n{res.stdout}\n{res.stderr}\n")
    return res


def explain(res: subprocess.CompletedProcess, workdir: Path, n_logs: int = 4) -> str:
    logs = sorted((workdir / BENCH / "logs").rglob("*.log"), key=lambda p: p.stat().st_mtime)[-n_logs:]
    text = "\n".join(f"== {p}\n{p.read_text(errors='replace')[-2500:]}" for p in logs)
    return f"exit {res.returncode}\n--- stderr\n{res.stderr[-5000:]}\n--- job logs\n{text}"


# ------------------------------------------------------------------------------------------------ isolation
def unshare_prefix() -> list[str]:
    """``unshare -rn`` (a private network namespace: no interface but a down loopback) where the kernel lets an
    unprivileged process do it; [] otherwise (the Python-level guard still refuses and records connections)."""
    exe = shutil.which("unshare")
    if exe is None:
        return []
    try:
        ok = subprocess.run([exe, "-rn", "true"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return [exe, "-rn", "--"] if ok else []


def net_guard(where: Path) -> tuple[dict, Path]:
    """(environment additions, log path) of the sitecustomize network guard loaded by every Python process."""
    guard = where / "netguard"
    guard.mkdir(parents=True, exist_ok=True)
    (guard / "sitecustomize.py").write_text(_NET_GUARD)
    log = where / "netguard.log"
    log.touch()
    pp = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": str(guard) + (os.pathsep + pp if pp else ""), "RU_NETGUARD_LOG": str(log)}, log


# ------------------------------------------------------------------------------------------------ processes
def pids_in(workdir: Path, *argv_has: str) -> list[int]:
    """PIDs whose working directory is ``workdir`` and whose argv holds every string of ``argv_has``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if Path(os.readlink(d / "cwd")).resolve() != workdir.resolve():
                continue
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        if all(any(a == s or a.endswith("/" + s) for a in args) for s in argv_has):  # argv[i] is s or ends in /s
            out.append(int(d.name))
    return out


def ru_pids(workdir: Path, subcommand: str, *argv_has: str) -> list[int]:
    """The Python processes of ``ru <subcommand>`` (not their ``bash -c`` wrappers) running in ``workdir``: the
    venv's ``ru`` script, or ``python -m robust_unlearning.cli.main`` as the rules' ``workflow/bin/ru`` runs it
    (``robust_unlearning.cli.warm`` when the warm worker runs: that client forwards signals to its job)."""
    return sorted(set(pids_in(workdir, "ru", subcommand, *argv_has))
                  | set(pids_in(workdir, "robust_unlearning.cli.main", subcommand, *argv_has))
                  | set(pids_in(workdir, "robust_unlearning.cli.warm", subcommand, *argv_has)))


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def count_lines(path: Path) -> int:
    try:
        return sum(1 for line in path.read_text().splitlines() if line.strip())
    except OSError:
        return 0


def kill_group(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


# ------------------------------------------------------------------------------------------------ results
def read_tidy(workdir: Path) -> pd.DataFrame:
    return pd.read_csv(workdir / BENCH / "tables" / "metrics.csv", keep_default_na=False, dtype=str)


def comparable(df: pd.DataFrame, cells: set[tuple[str, str, str]] | None = None) -> pd.DataFrame:
    """Rows other than timing/memory, restricted to ``cells`` (model_id, attack, attack_params), in a stable
    order, values as written (string compare = bit-exact)."""
    df = df[~df["metric"].isin(COST_METRICS)]
    if "note" in df.columns:   # numbers that cannot exist by definition (the retrain oracle's Unlearn Score: it is
        df = df[~df["note"].astype(str).str.startswith("not computable")]   # the PrivLeak reference), not cells
    if cells is not None:
        keys = list(zip(df["model_id"], df["attack"], df["attack_params"]))
        df = df[[k in cells for k in keys]]
    return df.sort_values(["model_id", "attack", "attack_params", "metric"]).reset_index(drop=True)


def cells_of(df: pd.DataFrame) -> set[tuple[str, str, str]]:
    return set(zip(df["model_id"], df["attack"], df["attack_params"]))


def finished_jobs(text: str) -> list[str]:
    """Rule names of the jobs a Snakemake log reports as finished."""
    import re

    return re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", text)


def planned_jobs(text: str) -> dict[str, int]:
    """{rule: count} from the first "Job stats" table Snakemake prints (empty when there was nothing to do)."""
    import re

    counts: dict[str, int] = {}
    block = text.split("Job stats:", 1)
    if len(block) < 2:
        return counts
    for line in block[1].splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) == "total":
            break
        if m:
            counts[m.group(1)] = int(m.group(2))
    return counts


def tree_mtimes(root: Path) -> dict[str, int]:
    """{relative path: mtime_ns} of every file under ``root``."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def deep(obj):
    return copy.deepcopy(obj)
