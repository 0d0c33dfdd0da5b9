"""One GPU per job on a local machine: an OS file lock per device, held for the life of the job's process.

A local Snakemake run starts every job on the same machine, and torch puts each of them on ``cuda:0`` unless
``CUDA_VISIBLE_DEVICES`` says otherwise. ``workflow/bin/ru`` therefore runs a GPU job as

    python -m robust_unlearning.utils.gpu_lease -- python -m robust_unlearning.cli.main <subcommand> ...

which takes the first free device slot with ``flock`` on ``<lease dir>/gpu-<id>.lock``, exports
``CUDA_VISIBLE_DEVICES=<id>`` and ``exec``s the job with the locked descriptor still open. The lock lives exactly as
long as the job's process: the kernel drops it when the process ends, however it ends (exit, exception, SIGKILL,
out-of-memory kill), so there is nothing to clean up and no stale lease. When every device is held, the job waits
and says so once in its log.

Standard library only, and no CUDA: the devices are counted from the driver's ``/proc/driver/nvidia/gpus/`` (one
folder per GPU) or ``nvidia-smi -L``, so leasing costs a bare interpreter start (~30 ms), not an import of torch.
``CUDA_VISIBLE_DEVICES``, when set, is the list of devices this user may use and the lease hands out its entries.
``RU_GPU_DEVICES=0,1`` replaces the detection ("these device ids exist"): for tests on CPU machines, or to keep
a run off some GPUs. Where the policy of when to lease lives (local runs, not SLURM jobs): ``workflow/bin/ru``.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

DEVICES_ENV = "RU_GPU_DEVICES"
#: how many devices a job needs, when set; otherwise :func:`devices_needed`
COUNT_ENV = "RU_GPU_LEASE_COUNT"
#: unlearning.train.num_processes, exported by the Snakemake driver (workflow/rules/common.smk)
PROCESSES_ENV = "RU_TRAIN_PROCESSES"
DIR_ENV = "RU_GPU_LEASE_DIR"
#: set by the local Snakemake driver (workflow/rules/common.smk): "on" = lease, "off" = never (cluster executors)
LEASE_ENV = "RU_GPU_LEASE"
PROC_GPUS = "/proc/driver/nvidia/gpus"


class LeaseError(RuntimeError):
    pass


def detected_gpu_ids() -> list[str]:
    """Indices of the NVIDIA GPUs the driver shows, without initialising CUDA."""
    try:
        n = len(os.listdir(PROC_GPUS))
    except OSError:  # no NVIDIA kernel driver, or a system without that file (WSL2): ask nvidia-smi, if any
        exe = shutil.which("nvidia-smi")
        if exe is None:
            return []
        try:
            out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            return []
        n = sum(1 for line in out.splitlines() if line.startswith("GPU "))  # MIG lines are indented
    return [str(i) for i in range(n)]


def _visible(value: str, present: list[str]) -> list[str]:
    """CUDA's reading of CUDA_VISIBLE_DEVICES: the entries before the first invalid one ("-1", an index that does
    not exist); an index must be one of ``present``, a UUID (``GPU-…``, ``MIG-…``) is taken as given."""
    out: list[str] = []
    for token in value.split(","):
        token = token.strip()
        if token.startswith(("GPU-", "MIG-")):
            dev = token
        elif re.fullmatch(r"\d+", token) and str(int(token)) in present:
            dev = str(int(token))
        elif token in present:  # a non-numeric id given by RU_GPU_DEVICES
            dev = token
        else:
            break
        if dev not in out:
            out.append(dev)
    return out


def lease_devices(environ: dict | None = None) -> list[str]:
    """The device ids the lease hands out (values for CUDA_VISIBLE_DEVICES); [] on a machine without GPUs."""
    env = os.environ if environ is None else environ
    if DEVICES_ENV in env:
        present = list(dict.fromkeys(t.strip() for t in env[DEVICES_ENV].split(",") if t.strip()))
    else:
        present = detected_gpu_ids()
    if not present:
        return []
    visible = env.get("CUDA_VISIBLE_DEVICES")
    return present if visible is None else _visible(visible, present)


def lease_dir(environ: dict | None = None) -> Path:
    """Where the lock files live: one folder per user on this machine (RU_GPU_LEASE_DIR overrides).

    Machine-wide, not per checkout, because the devices are: two runs from different checkouts (or a run and a
    hand-started ``ru``) must see each other's leases. /tmp rather than the temp dir of the job, which Snakemake
    or a scheduler may set per job, and rather than the working directory, which may be on a file system shared
    with other machines whose device 0 is another GPU."""
    env = os.environ if environ is None else environ
    folder = Path(env.get(DIR_ENV) or f"/tmp/ru-gpu-lease-{os.getuid()}")
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        owner = folder.stat().st_uid
    except OSError as exc:
        raise LeaseError(f"cannot use the GPU lease folder {folder}: {exc}; set {DIR_ENV} to a folder of "
                         "yours on a local disk") from exc
    if owner != os.getuid():  # another user's folder: its locks are not ours to trust (or to be blocked by)
        raise LeaseError(f"the GPU lease folder {folder} belongs to uid {owner}, not to this user "
                         f"({os.getuid()}); set {DIR_ENV} to a folder of yours on a local disk")
    return folder


def _lock_path(folder: Path, device: str) -> Path:
    return folder / f"gpu-{re.sub(r'[^A-Za-z0-9._-]', '_', device)}.lock"


def _holders(folder: Path, devices: list[str]) -> str:
    parts = []
    for dev in devices:
        try:
            who = _lock_path(folder, dev).read_text(errors="replace").strip() or "?"
        except OSError:
            who = "?"
        parts.append(f"{dev}: {who}")
    return "; ".join(parts)


def acquire(devices: list[str], folder: Path, label: str = "", poll: float = 0.5, log=None) -> tuple[str, int]:
    """Lock the first free device, waiting while all are held; returns (device id, locked file descriptor).

    The lock belongs to the open file description: it is released when the last descriptor of it is closed,
    i.e. when the process holding it (after exec, the job) ends. Waiters poll rather than block on one device's
    lock, so that a waiter takes whichever device frees first."""
    devs, fds = acquire_many(devices, folder, 1, label=label, poll=poll, log=log)
    return devs[0], fds[0]


def acquire_many(devices: list[str], folder: Path, count: int, label: str = "", poll: float = 0.5,
                 log=None) -> tuple[list[str], list[int]]:
    """Lock ``count`` free devices at once (a job of several processes, one GPU each), waiting while fewer are
    free; returns (device ids, locked descriptors). All or nothing: a partial set is released before waiting, so
    two jobs that each hold part of what the other needs can never wait on each other forever."""
    if not devices:
        raise LeaseError("no GPU to lease (the device list is empty)")
    if count < 1 or count > len(devices):
        raise LeaseError(f"this job needs {count} GPU(s) (unlearning.train.num_processes) but this machine lends "
                         f"{len(devices)} ({', '.join(devices)}); lower num_processes or run on a larger node")
    log = sys.stderr if log is None else log
    waiting_since = None
    while True:
        got: list[tuple[str, int]] = []
        for dev in devices:
            fd = os.open(_lock_path(folder, dev), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            got.append((dev, fd))
            if len(got) == count:
                break
        if len(got) == count:
            for dev, fd in got:
                # who holds it, for the waiting line of the others (advisory: the lock is the flock, not this text)
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()} {label}".strip().encode() + b"\n", 0)
            names = ",".join(dev for dev, _ in got)
            if waiting_since is not None:
                print(f"ru: GPU lease: got device{'s' if count > 1 else ''} {names} after {time.monotonic() - waiting_since:.0f} s",
                      file=log, flush=True)
            return [dev for dev, _ in got], [fd for _, fd in got]
        for _, fd in got:  # not enough: give back what was taken, then wait
            os.close(fd)
        if waiting_since is None:
            waiting_since = time.monotonic()
            need = "one" if count == 1 else f"{count}"
            print(f"ru: GPU lease: all {len(devices)} GPU(s) are in use ({_holders(folder, devices)}); waiting for "
                  f"{need} to be free (locks in {folder})", file=log, flush=True)
        time.sleep(poll)


def limit_snakemake_gpu_jobs(workflow, n: int) -> str | None:
    """Make a local Snakemake run start at most ``n`` jobs that request ``gpu`` at once, unless the user gave
    ``--resources gpu=N``; returns a line for the log, or None when nothing was changed.

    Without it the lease is still correct (extra GPU jobs wait for a device), but each waiting job holds one of
    the run's cores. Called from the ``onstart`` hook, after Snakemake built its scheduler: the scheduler copies
    the global resources when it is made, so both copies are set (Snakemake 8/9's attributes; on another
    version nothing is changed and the line says to pass --resources)."""
    if n <= 0 or "gpu" in workflow.global_resources.keys():
        return None
    try:
        workflow.register_resource("gpu", n)   # workflow.global_resources and the scheduler's free resources
        workflow.scheduler.global_resources["gpu"] = n  # what the scheduler subtracts from when a job starts
    except (AttributeError, TypeError) as exc:
        return (f"GPU lease: {n} GPU(s), but this Snakemake ({exc}) could not be told to run at most {n} GPU jobs "
                f"at once: pass --resources gpu={n}")
    return f"GPU lease: {n} GPU(s) on this machine: at most {n} GPU jobs at once, one device each"


def devices_needed(job_args: list[str], environ: dict | None = None) -> int:
    """Devices one job needs: ``RU_GPU_LEASE_COUNT`` when set; else unlearning.train.num_processes
    (``RU_TRAIN_PROCESSES``) for the jobs that run as that many processes (``ru unlearn`` and the relearning
    attack, as the rules' ``gpu`` resource says), 1 for every other job."""
    env = os.environ if environ is None else environ
    if env.get(COUNT_ENV):
        return int(env[COUNT_ENV])
    words = [a for a in job_args if not a.startswith("-")]
    relearn = any(a == "--attack" and b == "relearn" for a, b in zip(job_args, job_args[1:]))
    if words[:1] == ["unlearn"] or (words[:1] == ["attack"] and relearn):
        return int(env.get(PROCESSES_ENV) or 1)
    return 1


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args == ["--count"]:  # for scripts: how many jobs can hold a GPU at once here (0: no lease)
        print(len(lease_devices()))
        return 0
    if "--" not in args or args.index("--") == len(args) - 1:
        print("usage: python -m robust_unlearning.utils.gpu_lease [--count | -- COMMAND [ARG ...]]", file=sys.stderr)
        return 2
    cmd = args[args.index("--") + 1:]
    devices = lease_devices()
    if devices:
        # `python -m robust_unlearning.cli.main unlearn ...` -> "robust_unlearning.cli.main unlearn"
        label = " ".join(cmd[2:4] if cmd[1:2] == ["-m"] else cmd[:2])
        job_args = cmd[3:] if cmd[1:2] == ["-m"] else cmd[1:]
        try:
            count = devices_needed(job_args)
        except ValueError:
            print(f"ru: error: LeaseError: {COUNT_ENV} / {PROCESSES_ENV} must be whole numbers", file=sys.stderr)
            return 2
        try:
            devs, fds = acquire_many(devices, lease_dir(), count, label=label)
        except LeaseError as exc:
            print(f"ru: error: LeaseError: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130
        for fd in fds:  # the job keeps the locks: exec does not close an inheritable descriptor
            os.set_inheritable(fd, True)
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devs)
        print(f"ru: GPU lease: CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}", file=sys.stderr, flush=True)
    try:
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        print(f"ru: error: cannot run {cmd[0]!r}: {exc}", file=sys.stderr)
        return 127
    return 0  # unreachable: exec replaced this process


if __name__ == "__main__":
    sys.exit(main())
