"""The warm worker: on a local run, jobs fork from one process that has already imported torch and transformers.

Why: every ``ru`` job pays ~8 s of CPU importing torch, transformers and the Llama modules before it does any work,
and the embedded default runs ~100 jobs on 2 cores (docs/architecture.md, "The warm worker"). On a local run
Snakemake's ``onstart`` hook (workflow/rules/common.smk) starts ``python -m robust_unlearning.cli.warm --serve
SOCKET --parent PID``; the rules' ``workflow/bin/ru`` runs this module, which hands the job to that server when
``RU_WARM_SOCKET`` names a live one and runs it in its own process otherwise (the same code either way).

What a job sees is what a fresh process sees: its argv, working directory and environment, its own
stdin/stdout/stderr (the descriptors travel over the socket), default signal handlers, and an exit status that the
client repeats (a job killed by a signal kills the client with the same signal). Signals sent to the client
(SIGTERM from a time limit, Ctrl-C) are forwarded to the job; if the client dies, the job is killed.

The server refuses a job, and the client then runs it itself, whenever something read at import time could
differ: another host, interpreter, prefix or copy of the package, or a different value of any environment
variable that the imported libraries read when they load (``_IMPORT_TIME_ENV``). It never serves on a machine
with a visible GPU (a CUDA context does not survive a fork) and exits when Snakemake exits.
"""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import sys

SOCKET_ENV = "RU_WARM_SOCKET"
#: environment variables whose value libraries read at import time: a job whose value differs from the server's
#: is run in its own process. Prefixes, compared on every variable that starts with one of them.
_IMPORT_TIME_ENV = ("PYTHON", "HF_", "HUGGINGFACE", "TRANSFORMERS", "TORCH", "PYTORCH", "CUDA", "NVIDIA", "OMP_",
                    "MKL_", "KMP_", "OPENBLAS", "TOKENIZERS", "XDG_", "LD_", "MPL", "HOME", "RU_",
                    "USE_", "DISABLE_", "NO_CUDA", "ACCELERATE", "SAFETENSORS", "TQDM")
#: thread counts that Snakemake sets per job (the rule's `threads`): taken from the job, and applied to torch's
#: intra-op pool in the forked job exactly as a fresh torch reads them when it starts its pool
_PER_JOB_ENV = frozenset({SOCKET_ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                          "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"})
_FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
_HEADER = struct.Struct("!Q")


def _fingerprint(env: dict[str, str]) -> dict:
    """What must be equal between the server and a job for the job to behave as in a fresh process."""
    import robust_unlearning

    return {"host": socket.gethostname(), "uid": os.getuid(), "executable": os.path.realpath(sys.executable),
            "prefix": sys.prefix, "version": sys.version, "package": os.path.realpath(robust_unlearning.__file__),
            "env": {k: v for k, v in sorted(env.items()) if k.startswith(_IMPORT_TIME_ENV) and k not in _PER_JOB_ENV}}


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("warm worker: connection closed mid-message")
        buf += chunk
    return buf


# ------------------------------------------------------------------------------------------------------- client
def run_job_here(argv: list[str]) -> int:
    from .main import main

    return main(argv)


def client(argv: list[str]) -> int:
    """Run ``ru <argv>`` through the warm server named by RU_WARM_SOCKET, or here when there is none or it refuses."""
    path = os.environ.get(SOCKET_ENV, "")
    if not path or not os.path.exists(path):
        return run_job_here(argv)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        payload = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ),
                              "fingerprint": _fingerprint(dict(os.environ))}).encode()
        socket.send_fds(conn, [_HEADER.pack(len(payload))], [0, 1, 2])
        conn.sendall(payload)
        kind = _recv_exact(conn, 1)
    except OSError:  # no server (it exited, or this is another host sharing the file system): run it here
        conn.close()
        return run_job_here(argv)
    if kind == b"R":  # refused: the reason goes to the job's log, then the job runs here as it always could
        reason = conn.recv(4096).decode(errors="replace")
        conn.close()
        print(f"# warm worker: running in a fresh process ({reason})", file=sys.stderr, flush=True)
        return run_job_here(argv)
    (pid,) = struct.unpack("!i", _recv_exact(conn, 4))
    for sig in _FORWARDED_SIGNALS:  # as if the signal had been sent to the job itself
        signal.signal(sig, lambda signum, _frame: _forward(pid, signum))
    try:
        (status,) = struct.unpack("!i", _recv_exact(conn, 4))
    except ConnectionError:
        print("# warm worker: the server ended before the job reported its status", file=sys.stderr, flush=True)
        return 1
    if status < 0:  # killed by a signal: die of the same signal, as the job would have
        for sig in _FORWARDED_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    return status


def _forward(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


# ------------------------------------------------------------------------------------------------------- server
def _preload() -> None:
    """The imports every model job needs (what a fresh job spends its first ~8 s on). Nothing runs on a tensor:
    an OpenMP pool or a CUDA context started here would not survive the fork."""
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401
    from transformers.models.llama import modeling_llama  # noqa: F401

    from . import commands  # noqa: F401
    from ..metrics import evaluate  # noqa: F401
    from ..methods import loop  # noqa: F401


def _preload_lm_eval() -> None:
    """lm-eval-harness and its index of built-in tasks (thousands of YAML files: 17-35 s of CPU on 2 cores, which every
    evaluation job of a config with ``mcq_lm_eval`` metrics paid again); only for such configs (``--lm-eval``)."""
    try:
        from ..metrics.lm_eval_backend import LmEvalUnavailable, _builtin_task_manager
    except ImportError:  # pragma: no cover - the module itself always imports
        return
    try:
        _builtin_task_manager()
    except LmEvalUnavailable:   # the jobs will say so themselves
        pass


def serve(path: str, parent: int, lm_eval: bool = False) -> int:
    """Listen on ``path`` until ``parent``, the process that started the server (Snakemake), exits or sends SIGTERM.
    (``parent`` is given, not read: it may have exited before this process got here.) ``lm_eval``: also load
    lm-eval-harness and its task index, for configs whose evaluation uses it."""
    # the environment this process was started with is what a job's must equal: imports set variables of their
    # own (torch._dynamo sets TORCHINDUCTOR_CACHE_DIR when it loads), which a job's client, that imports neither,
    # never has; they are handed on to the jobs as a fresh process would set them (_become_job)
    started = dict(os.environ)
    _preload()
    if lm_eval:
        _preload_lm_eval()
    set_by_imports = {k: v for k, v in os.environ.items() if started.get(k) != v}
    import torch

    if torch.cuda.is_available():
        print("warm worker: a GPU is visible; jobs run in their own processes", file=sys.stderr, flush=True)
        return 0
    # A fork copies only the calling thread, so a Python lock held by another thread would never be released in
    # the job. (torch and transformers start idle native threads at import; forking after that is what torch's
    # own DataLoader workers do on Linux, and torch re-creates its thread pools in the child.)
    import threading

    if threading.active_count() != 1:
        print(f"warm worker: {threading.active_count()} Python threads after the imports; jobs run in their own "
              "processes", file=sys.stderr, flush=True)
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Ctrl-C reaches a job through its client (which forwards it), not twice; the server ends with Snakemake
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    mine = _fingerprint(started)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = f"{path}.{os.getpid()}.tmp"
    listener.bind(tmp)
    listener.listen(64)
    os.replace(tmp, path)  # clients see the socket only once it accepts
    try:
        while os.getppid() == parent:
            ready, _, _ = select.select([listener], [], [], 1.0)
            _reap()
            if not ready:
                continue
            conn, _ = listener.accept()
            if os.fork() == 0:  # the supervisor of one job
                listener.close()
                try:
                    _supervise(conn, mine, set_by_imports)
                finally:
                    os._exit(0)
            conn.close()
    finally:
        listener.close()
        try:
            os.unlink(path)
            os.rmdir(os.path.dirname(path))  # the private folder Snakemake made for it, even after a killed run
        except OSError:  # gone already, or a folder that holds other files (kept)
            pass
    return 0


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _supervise(conn: socket.socket, mine: dict, set_by_imports: dict | None = None) -> None:
    """Read one job, refuse it or fork it, relay its exit status; kill it if the client goes away."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    data, fds, _flags, _addr = socket.recv_fds(conn, _HEADER.size, 3)
    try:
        (n,) = _HEADER.unpack(data)
        request = json.loads(_recv_exact(conn, n))
        differs = sorted(k for k in set(mine) | set(request["fingerprint"])
                         if mine.get(k) != request["fingerprint"].get(k))
        if differs == ["env"]:
            a, b = mine["env"], request["fingerprint"]["env"]
            differs = [f"environment variable {k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        if differs or len(fds) != 3:
            conn.sendall(b"R" + ("differs from the server: " + ", ".join(differs[:5])).encode()[:4000])
            return
        pid = os.fork()
        if pid == 0:
            conn.close()
            _become_job(request, fds, set_by_imports or {})
        for fd in fds:
            os.close(fd)
        conn.sendall(b"P" + struct.pack("!i", pid))
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                conn.sendall(struct.pack("!i", code))
                return
            ready, _, _ = select.select([conn], [], [], 0.2)
            if ready and not conn.recv(1):  # the client is gone (killed): so is its job
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
    finally:
        conn.close()


def _become_job(request: dict, fds: list[int], set_by_imports: dict | None = None) -> None:
    """In the forked job: take the client's descriptors, directory, environment and argv, then run ``ru``."""
    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        for sig in _FORWARDED_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for key, value in (set_by_imports or {}).items():   # what the imports would have set in a fresh process
            os.environ.setdefault(key, value)
        import tempfile

        tempfile.tempdir = None  # recomputed from this job's TMPDIR (Snakemake sets one per job)
        threads = os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS") or ""
        if threads.isdigit() and int(threads) > 0:
            import torch

            torch.set_num_threads(int(threads))
        sys.argv = ["ru", *request["argv"]]
        try:
            code = run_job_here(request["argv"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if not isinstance(exc.code, (int, type(None))):
                print(exc.code, file=sys.stderr)
        except KeyboardInterrupt:
            code = 130
        import atexit

        atexit._run_exitfuncs()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--serve"]:
        lm_eval = argv[4:] == ["--lm-eval"]
        if len(argv) != (5 if lm_eval else 4) or argv[2] != "--parent" or not argv[3].isdigit():
            print("usage: python -m robust_unlearning.cli.warm --serve SOCKET --parent PID [--lm-eval]", file=sys.stderr)
            return 2
        return serve(argv[1], int(argv[3]), lm_eval=lm_eval)
    return client(argv)


if __name__ == "__main__":
    sys.exit(main())
