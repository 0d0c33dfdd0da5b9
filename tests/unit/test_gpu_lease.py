"""The GPU lease of local runs (src/robust_unlearning/utils/gpu_lease.py, workflow/bin/ru): concurrent jobs never
hold more devices than exist, never share one, and a killed job frees its device.

These run on CPU machines: RU_GPU_DEVICES stands in for the device enumeration (which ids exist); the locking,
waiting, CUDA_VISIBLE_DEVICES export and the `ru` launcher are the real code. The job behind `ru` is a stand-in:
a `python` first on PATH that passes the lease step to the real interpreter and, as the job, records its device and
its start and end times (exec all the way, so the job is the process that `ru` started and that the test kills)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from robust_unlearning.utils.gpu_lease import lease_devices

ROOT = Path(__file__).resolve().parents[2]
RU = ROOT / "workflow" / "bin" / "ru"
NO_GPU_HERE = not Path("/proc/driver/nvidia").exists() and not any(
    (Path(d) / "nvidia-smi").exists() for d in os.environ.get("PATH", "").split(os.pathsep) if d)

JOB = textwrap.dedent("""\
    import json, os, sys, time
    rec = {"pid": os.getpid(), "argv": sys.argv[1:], "device": os.environ.get("CUDA_VISIBLE_DEVICES"),
           "start": time.time()}
    out = os.path.join(os.environ["LEASE_TEST_RECORDS"], f"{os.getpid()}.json")
    open(out + ".started", "w").close()
    time.sleep(float(os.environ.get("LEASE_TEST_HOLD", "1.0")))
    rec["end"] = time.time()
    with open(out, "w") as fh:
        json.dump(rec, fh)
""")


@pytest.fixture()
def shim(tmp_path):
    """A folder with the stand-in `python`, the job script and the records folder."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (tmp_path / "records").mkdir()
    (tmp_path / "job.py").write_text(JOB)
    py = bindir / "python"
    py.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "$*" >> {tmp_path / 'calls.log'}
        if [ "$1" = "-m" ] && [ "$2" = "robust_unlearning.utils.gpu_lease" ]; then
            exec {sys.executable} "$@"
        fi
        exec {sys.executable} {tmp_path / 'job.py'} "$@"
    """))
    py.chmod(0o755)
    return tmp_path


def ru_env(shim: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SLURM_JOB_ID", "RU_GPU_LEASE", "RU_GPU_DEVICES", "CUDA_VISIBLE_DEVICES", "RU_WARM_SOCKET")}
    env.update(PATH=f"{shim / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin", RU_GPU_LEASE_DIR=str(shim / "locks"),
               LEASE_TEST_RECORDS=str(shim / "records"))
    env.update(extra)
    return env


def start_ru(shim: Path, env: dict, name: str) -> subprocess.Popen:
    err = open(shim / f"{name}.err", "w")
    return subprocess.Popen([str(RU), "unlearn", "--method", name], env=env, stdout=subprocess.DEVNULL, stderr=err)


def records(shim: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((shim / "records").glob("*.json"))]


def max_concurrent(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])  # an end sorts before a start
    best = cur = 0
    for _, step in events:
        cur += step
        best = max(best, cur)
    return best


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_device_list_honours_cuda_visible_devices():
    assert lease_devices({"RU_GPU_DEVICES": "0,1,2,3"}) == ["0", "1", "2", "3"]
    assert lease_devices({"RU_GPU_DEVICES": ""}) == []                       # no GPU: no lease
    four = {"RU_GPU_DEVICES": "0,1,2,3"}
    assert lease_devices({**four, "CUDA_VISIBLE_DEVICES": "3,1"}) == ["3", "1"]
    assert lease_devices({**four, "CUDA_VISIBLE_DEVICES": ""}) == []         # the user hid every GPU
    assert lease_devices({**four, "CUDA_VISIBLE_DEVICES": "-1"}) == []
    # as CUDA reads it: the entries before the first invalid one (index 7 does not exist)
    assert lease_devices({**four, "CUDA_VISIBLE_DEVICES": "2,7,1"}) == ["2"]
    assert lease_devices({**four, "CUDA_VISIBLE_DEVICES": "GPU-8a1f,MIG-77"}) == ["GPU-8a1f", "MIG-77"]
    assert lease_devices({"RU_GPU_DEVICES": "", "CUDA_VISIBLE_DEVICES": "0,1"}) == []   # no GPU at all


def test_four_concurrent_jobs_on_two_devices(shim):
    env = ru_env(shim, RU_GPU_DEVICES="0,1", LEASE_TEST_HOLD="2.0")
    procs = [start_ru(shim, env, f"job{i}") for i in range(4)]
    for p in procs:
        assert p.wait(timeout=60) == 0
    recs = records(shim)
    assert len(recs) == 4, recs
    assert {r["device"] for r in recs} == {"0", "1"}          # both devices used, and nothing else
    assert max_concurrent([(r["start"], r["end"]) for r in recs]) <= 2
    for a in recs:
        for b in recs:
            if a is not b and a["start"] < b["end"] and b["start"] < a["end"]:
                assert a["device"] != b["device"], (a, b)
    # the job got ru's own arguments, run through the library's CLI module
    assert all(r["argv"][:3] == ["-m", "robust_unlearning.cli.main", "unlearn"] for r in recs)
    waited = [p.read_text() for p in shim.glob("job*.err") if "waiting for one to be free" in p.read_text()]
    assert waited, [p.read_text() for p in shim.glob("job*.err")]   # at least one found both devices busy


def test_a_job_of_several_processes_leases_that_many_devices_at_once(shim):
    """unlearning.train.num_processes = 2: the job gets two devices of its own (never shared with a running
    job), a 1-device job waits for the pair to finish, and a job asking for more than exist fails naming why."""
    # RU_TRAIN_PROCESSES: what the Snakemake driver exports from unlearning.train.num_processes
    env = ru_env(shim, RU_GPU_DEVICES="0,1,2", LEASE_TEST_HOLD="1.5", RU_TRAIN_PROCESSES="2")
    pair = [start_ru(shim, env, f"pair{i}") for i in range(2)]                   # `ru unlearn`: 2 processes
    single = [subprocess.Popen([str(RU), "evaluate"], env=env, stdout=subprocess.DEVNULL,
                               stderr=open(shim / f"one{i}.err", "w")) for i in range(2)]
    for p in pair + single:
        assert p.wait(timeout=60) == 0
    recs = records(shim)
    assert len(recs) == 4
    sets = [set(r["device"].split(",")) for r in recs]
    assert sorted(len(x) for x in sets) == [1, 1, 2, 2]
    for a, sa in zip(recs, sets):
        for b, sb in zip(recs, sets):
            if a is not b and a["start"] < b["end"] and b["start"] < a["end"]:
                assert not (sa & sb), (a, b)          # overlapping jobs never share a device
    too_many = subprocess.run([str(RU), "unlearn"], env={**env, "RU_GPU_LEASE_COUNT": "4"}, capture_output=True,
                              text=True, timeout=60)
    assert too_many.returncode == 2 and "needs 4 GPU(s)" in too_many.stderr and "lends 3" in too_many.stderr
    from robust_unlearning.utils.gpu_lease import devices_needed
    procs = {"RU_TRAIN_PROCESSES": "4"}
    assert devices_needed(["unlearn", "--method", "npo"], procs) == 4
    assert devices_needed(["attack", "--attack", "relearn", "--seed", "0"], procs) == 4
    assert devices_needed(["attack", "--attack", "gcg"], procs) == 1
    assert devices_needed(["evaluate"], procs) == 1 and devices_needed(["unlearn"], {}) == 1


def test_a_killed_holder_frees_its_device(shim):
    env = ru_env(shim, RU_GPU_DEVICES="0", LEASE_TEST_HOLD="600")
    holder = start_ru(shim, env, "holder")
    try:
        wait_for(lambda: (shim / "records" / f"{holder.pid}.json.started").exists(), 30, "the holder to start")
        waiter = start_ru(shim, {**env, "LEASE_TEST_HOLD": "0.1"}, "waiter")
        wait_for(lambda: "waiting for one to be free" in (shim / "waiter.err").read_text(), 30, "the waiter to wait")
        assert "pid " + str(holder.pid) in (shim / "waiter.err").read_text()   # the line names who holds it
        assert not any(p.name != f"{holder.pid}.json.started" for p in (shim / "records").iterdir())
        os.kill(holder.pid, signal.SIGKILL)   # no handler, no cleanup: the kernel drops the lock
        assert holder.wait(timeout=10) == -signal.SIGKILL
        assert waiter.wait(timeout=30) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
    (rec,) = records(shim)
    assert rec["pid"] == waiter.pid and rec["device"] == "0"
    assert "got device 0 after" in (shim / "waiter.err").read_text()


def _calls(shim: Path) -> list[str]:
    return (shim / "calls.log").read_text().splitlines()


@pytest.mark.skipif(not NO_GPU_HERE, reason="this machine has an NVIDIA driver: the lease applies here")
def test_no_gpu_no_lease_step(shim):
    """Without a GPU the launcher starts the job directly: not even an interpreter for the lease."""
    env = ru_env(shim, CUDA_VISIBLE_DEVICES="5", LEASE_TEST_HOLD="0")
    assert subprocess.run([str(RU), "evaluate"], env=env, timeout=60).returncode == 0
    assert _calls(shim) == ["-m robust_unlearning.cli.main evaluate"]
    assert records(shim)[0]["device"] == "5"   # left as the user set it
    assert not (shim / "locks").exists()


def test_slurm_jobs_and_cluster_executors_are_left_alone(shim):
    base = ru_env(shim, RU_GPU_DEVICES="0,1", LEASE_TEST_HOLD="0")
    cases = [({"SLURM_JOB_ID": "4242"}, False),                       # SLURM assigns the devices
             ({"RU_GPU_LEASE": "off"}, False),                        # a cluster executor's driver said so
             ({"SLURM_JOB_ID": "4242", "RU_GPU_LEASE": "on"}, True),  # a local run inside an allocation
             ({}, True)]                                              # a hand-started ru on a GPU machine
    for extra, leased in cases:
        (shim / "calls.log").unlink(missing_ok=True)
        for p in (shim / "records").iterdir():
            p.unlink()
        assert subprocess.run([str(RU), "attack"], env={**base, **extra}, timeout=60).returncode == 0
        assert (_calls(shim)[0].startswith("-m robust_unlearning.utils.gpu_lease")) is leased, (extra, _calls(shim))
        assert (records(shim)[0]["device"] in ("0", "1")) is leased, extra


def test_only_commands_that_may_load_a_model_take_a_device(shim):
    base = ru_env(shim, RU_GPU_DEVICES="0,1", LEASE_TEST_HOLD="0", RU_GPU_LEASE="on")
    cases = [(["unlearn"], True), (["--trust-remote-code", "evaluate"], True), (["cache-model"], True),
             (["--plugin", "aggregate", "train-probe"], True),   # a --plugin value is not the command
             (["landscape"], True), (["some-future-command"], True),
             (["-v", "aggregate"], False), (["prepare-data"], False), (["validate-config", "x.yaml"], False),
             # the warm worker's server lives as long as the run: with a lease it would keep a device from every job
             (["--serve", "/nonexistent/socket", "--parent", "1"], False)]
    for argv, leased in cases:
        (shim / "calls.log").unlink(missing_ok=True)
        # the stand-in job returns at once (it is not a server); what counts is whether the lease step ran
        assert subprocess.run([str(RU), *argv], env=base, timeout=60).returncode == 0
        assert _calls(shim)[0].startswith("-m robust_unlearning.utils.gpu_lease") is leased, (argv, _calls(shim))


SNAKEFILE = textwrap.dedent("""\
    from robust_unlearning.utils.gpu_lease import lease_devices, limit_snakemake_gpu_jobs

    onstart:
        print("limit:", limit_snakemake_gpu_jobs(workflow, len(lease_devices())))

    rule all:
        input: expand("out/{i}.json", i=range(4))

    rule gpu_job:
        output: "out/{i}.json"
        resources: gpu=1
        # staggered lengths: a device freed while others are busy must not let two jobs in
        shell: "python -c 'import json, time; s = time.time(); time.sleep(0.3 + 0.5 * {wildcards.i}); "
               "print(json.dumps([s, time.time()]))' > {output}"
""")


@pytest.mark.parametrize("devices, user_resources, expected", [
    ("0,1", [], 2),                      # two devices: two GPU jobs at once
    ("0,1", ["--resources", "gpu=1"], 1),  # the user's --resources wins
    ("", [], 4),                         # no GPU: GPU jobs are not limited (the control: it is the limit that holds)
])
def test_snakemake_starts_at_most_one_gpu_job_per_device(tmp_path, devices, user_resources, expected):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES",)}
    env.update(RU_GPU_DEVICES=devices, PYTHONPATH=str(ROOT / "src"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    res = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "--cores", "4", *user_resources],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    spans = [tuple(json.loads(p.read_text())) for p in sorted((tmp_path / "out").glob("*.json"))]
    assert len(spans) == 4
    assert max_concurrent(spans) == expected, (spans, res.stdout[-2000:])


@pytest.mark.slow   # a Snakemake run of the real workflow: data and a 1-epoch base model, about a minute
def test_the_workflow_leases_model_jobs_and_the_warm_worker_holds_no_device(tmp_path):
    """The real workflow on a pretend one-GPU machine: the model job runs on the leased device, the data job takes
    no lease, and the warm worker's server (a `ru` that lives as long as the run) holds none, or the model job
    would wait for it forever."""
    import fcntl

    import relkit

    cfg = relkit.mini_config()
    cfg["model"]["train"]["epochs"] = 1
    wd = relkit.copy_workflow(tmp_path / "wf", cfg)
    (wd / "src").symlink_to(ROOT / "src")
    locks = tmp_path / "locks"
    env = relkit.snakemake_env({"RU_GPU_DEVICES": "0", "RU_GPU_LEASE_DIR": str(locks)})
    env.pop("CUDA_VISIBLE_DEVICES", None)
    res = relkit.run_snakemake(wd, f"{relkit.BENCH}/models/base", env=env, timeout=480)
    assert res.returncode == 0, relkit.explain(res, wd)
    assert "GPU lease: 1 GPU(s) on this machine" in res.stdout + res.stderr
    logs = wd / relkit.BENCH / "logs"
    model_log = (logs / "cache_base_model.log").read_text()
    assert "ru: GPU lease: CUDA_VISIBLE_DEVICES=0" in model_log and "waiting" not in model_log, model_log[-2000:]
    assert "GPU lease" not in (logs / "prepare_data.log").read_text()
    holder = (locks / "gpu-0.lock").read_text().split()   # "pid N <module> <command>" of the last holder
    assert holder[-1] == "cache-model" and holder[-2].startswith("robust_unlearning.cli."), holder
    with open(locks / "gpu-0.lock") as fh:   # and nobody holds it once the run is over
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
