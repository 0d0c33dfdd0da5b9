"""The warm worker (src/robust_unlearning/cli/warm.py): a real server process, real clients through the rules'
``workflow/bin/ru``. A job forked from it sees its own directory, environment, descriptors and signals, and the
client repeats its exit status; a job the server cannot run exactly as a fresh process runs in one.

A plugin file (``--plugin``) is imported by the job itself before its command runs, so it is how these tests make a
job record its process id and environment, or wait for a signal."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RU = ROOT / "workflow" / "bin" / "ru"

# writes what the job sees, then (when asked) waits to be signalled
PROBE = """
import json, os, sys, time
from pathlib import Path
# the job's parent (the supervisor) and ITS parent, read while both are alive: the supervisor exits with the job
Path(os.environ["PROBE_OUT"]).write_text(json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "cwd": os.getcwd(),
    "grandparent": int(Path(f"/proc/{os.getppid()}/stat").read_text().rsplit(")", 1)[1].split()[1]),
    "marker": os.environ.get("JOB_MARKER"), "argv": sys.argv, "modules": "transformers" in sys.modules,
    "var": os.environ.get(os.environ.get("PROBE_VAR", "")),
    "lm_eval_index": getattr(sys.modules.get("robust_unlearning.metrics.lm_eval_backend"), "_builtin_task_manager",
                             None) is not None and sys.modules["robust_unlearning.metrics.lm_eval_backend"]
                             ._builtin_task_manager.cache_info().currsize}))
print("job stdout line", flush=True)
if os.environ.get("PROBE_WAIT"):
    time.sleep(120)
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("warm_server")
    sock = tmp_path / "warm.sock"
    env = {**os.environ, "RU_WARM_SOCKET": str(sock)}
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([str(RU), "--serve", str(sock), "--parent", str(os.getpid())], env=env, stdout=log, stderr=log,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not sock.exists():
        assert proc.poll() is None, (tmp_path / "server.log").read_text()
        assert time.monotonic() < deadline, "the warm worker did not start listening"
        time.sleep(0.1)
    yield sock, env, proc
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


def _job(tmp_path, env, *extra_env, wait=False):
    (tmp_path / "probe.py").write_text(PROBE)
    job_env = {**env, "PROBE_OUT": str(tmp_path / "seen.json"), "JOB_MARKER": "job-1"}
    if wait:
        job_env["PROBE_WAIT"] = "1"
    job_env.update(dict(extra_env))
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    # validate-config on a missing file: the plugin runs first, then the command fails with its own exit code
    cmd = [str(RU), "--plugin", str(tmp_path / "probe.py"), "validate-config", "absent.yaml"]
    return cmd, job_env, workdir


def test_a_job_runs_forked_from_the_server_with_its_own_cwd_env_output_and_exit_code(server, tmp_path):
    sock, env, proc = server
    cmd, job_env, workdir = _job(tmp_path, env)
    res = subprocess.run(cmd, cwd=workdir, env=job_env, capture_output=True, text=True, timeout=120)
    seen = json.loads((tmp_path / "seen.json").read_text())
    fresh = subprocess.run(cmd, cwd=workdir, env={k: v for k, v in job_env.items() if k != "RU_WARM_SOCKET"},
                           capture_output=True, text=True, timeout=120)
    assert res.returncode == fresh.returncode != 0, (res.stderr, fresh.stderr)
    assert "fresh process" not in res.stderr, res.stderr
    assert "job stdout line" in res.stdout
    assert "absent.yaml" in res.stderr                   # the job's own error, on the client's stderr
    assert seen["cwd"] == str(workdir) and seen["marker"] == "job-1"
    assert seen["argv"][1:] == cmd[1:]
    assert seen["modules"]                               # transformers was already imported: it is the server's
    assert not seen["lm_eval_index"]                     # lm-eval's task index only with --lm-eval
    assert seen["grandparent"] == proc.pid               # job <- its supervisor <- the server


def test_a_job_whose_import_time_environment_differs_runs_in_a_fresh_process(server, tmp_path):
    sock, env, proc = server
    cmd, job_env, workdir = _job(tmp_path, env, ("HF_HOME", str(tmp_path / "other_hf_home")))
    res = subprocess.run(cmd, cwd=workdir, env=job_env, capture_output=True, text=True, timeout=120)
    assert "running in a fresh process (differs from the server: environment variable HF_HOME)" in res.stderr
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert not seen["modules"]                           # a fresh interpreter: nothing of the server's
    assert res.returncode != 0 and "absent.yaml" in res.stderr


def test_without_a_live_server_the_job_runs_here(tmp_path):
    cmd, job_env, workdir = _job(tmp_path, {**os.environ, "RU_WARM_SOCKET": str(tmp_path / "gone.sock")})
    res = subprocess.run(cmd, cwd=workdir, env=job_env, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "absent.yaml" in res.stderr
    assert json.loads((tmp_path / "seen.json").read_text())["cwd"] == str(workdir)


def _wait_for_probe(tmp_path, client):
    deadline = time.monotonic() + 60
    while not (tmp_path / "seen.json").exists():
        assert client.poll() is None, client.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.2)
    return json.loads((tmp_path / "seen.json").read_text())["pid"]


def test_sigterm_to_the_client_reaches_the_job_and_the_client_dies_of_it(server, tmp_path):
    sock, env, proc = server
    cmd, job_env, workdir = _job(tmp_path, env, wait=True)
    client = subprocess.Popen(cmd, cwd=workdir, env=job_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    job_pid = _wait_for_probe(tmp_path, client)
    assert job_pid != client.pid
    client.send_signal(signal.SIGTERM)
    assert client.wait(timeout=30) == -signal.SIGTERM   # as a fresh process killed by SIGTERM
    assert not Path(f"/proc/{job_pid}").exists() or "Z" in Path(f"/proc/{job_pid}/stat").read_text().split()[2]


def test_a_killed_client_takes_its_job_with_it(server, tmp_path):
    sock, env, proc = server
    cmd, job_env, workdir = _job(tmp_path, env, wait=True)
    client = subprocess.Popen(cmd, cwd=workdir, env=job_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    job_pid = _wait_for_probe(tmp_path, client)
    client.kill()
    client.wait(timeout=30)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{job_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{job_pid}").exists()
    assert proc.poll() is None                           # the server serves on


def test_the_server_exits_when_the_process_that_started_it_does(tmp_path):
    sock = tmp_path / "warm.sock"
    env = {**os.environ, "RU_WARM_SOCKET": str(sock)}
    # a parent that starts the server, prints its pid and exits at once
    parent = subprocess.run([sys.executable, "-c", (
        "import os, subprocess, sys; p = subprocess.Popen([sys.argv[1], '--serve', sys.argv[2], '--parent', "
            "str(os.getpid())], "
        "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); print(p.pid)"), str(RU), str(sock)],
        env=env, capture_output=True, text=True, timeout=60)
    pid = int(parent.stdout.strip())
    deadline = time.monotonic() + 120
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists(), "the warm worker outlived the process that started it"
    assert not sock.exists()


def _start_server(tmp_path, env, *extra):
    sock = tmp_path / "warm.sock"
    env["RU_WARM_SOCKET"] = str(sock)
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([str(RU), "--serve", str(sock), "--parent", str(os.getpid()), *extra], env=env, stdout=log,
                            stderr=log, start_new_session=True)
    log.close()
    deadline = time.monotonic() + 300
    while not sock.exists():
        assert proc.poll() is None, (tmp_path / "server.log").read_text()
        assert time.monotonic() < deadline, "the warm worker did not start listening"
        time.sleep(0.1)
    return proc


def test_with_lm_eval_the_jobs_get_its_task_index_ready(tmp_path):
    """`--lm-eval` (common.smk passes it when an evaluation uses mcq_lm_eval): the server builds lm-eval's index of
    built-in tasks once (17-35 s on 2 cores), and every job forked from it has it; without the flag it does not."""
    env = dict(os.environ)
    proc = _start_server(tmp_path, env, "--lm-eval")
    try:
        cmd, job_env, workdir = _job(tmp_path, env)
        res = subprocess.run(cmd, cwd=workdir, env=job_env, capture_output=True, text=True, timeout=120)
        assert "fresh process" not in res.stderr, res.stderr
        seen = json.loads((tmp_path / "seen.json").read_text())
        assert seen["modules"] and seen["lm_eval_index"] == 1
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_variables_that_the_imports_set_do_not_turn_jobs_away(tmp_path):
    """Snakemake's own process imports torch only when it validates a config it has not seen (the marker under
    .snakemake/ru_validated/ skips that afterwards), so the server and the jobs usually start from an environment
    without TORCHINDUCTOR_CACHE_DIR, which torch._dynamo sets in the server as it loads. Compared after the imports,
    every job was refused (and paid the ~8 s import again): the server compares the environment it started with,
    and hands the job the variables a fresh process would have set."""
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    sock = tmp_path / "warm.sock"
    env["RU_WARM_SOCKET"] = str(sock)
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([str(RU), "--serve", str(sock), "--parent", str(os.getpid())], env=env, stdout=log,
                            stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not sock.exists():
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "the warm worker did not start listening"
            time.sleep(0.1)
        cmd, job_env, workdir = _job(tmp_path, env)
        job_env["PROBE_VAR"] = "TORCHINDUCTOR_CACHE_DIR"
        res = subprocess.run(cmd, cwd=workdir, env=job_env, capture_output=True, text=True, timeout=120)
        assert "fresh process" not in res.stderr, res.stderr
        seen = json.loads((tmp_path / "seen.json").read_text())
        assert seen["modules"]                           # served by the warm server
        assert seen["var"]                               # and given what importing torch sets
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
