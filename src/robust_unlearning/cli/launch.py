"""Relaunching a training job as several processes under ``accelerate launch`` (docs/methods.md, "Several
processes"; docs/cluster.md, "GPUs").

``ru unlearn`` with ``unlearning.train.num_processes: N > 1`` (and ``ru attack --attack relearn`` with
``$RU_TRAIN_PROCESSES`` = N, which the workflow sets from the same key) replaces itself, before loading anything,
with

    python -m accelerate.commands.launch --multi_gpu --num_processes N --num_machines 1 --mixed_precision no \\
        --dynamo_backend no --main_process_port 0 -m robust_unlearning.cli.main <the same ru arguments>

so a rule's command stays ``ru unlearn …`` and a job log's ``# command:`` line still reruns the job by hand. The N
processes find each other through the variables the launcher sets (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, a
free port on this machine); each takes GPU ``LOCAL_RANK`` (on a machine without CUDA: gloo on the CPU, which is how
the tests run it). ``--multi_gpu`` is accelerate's name for "start N processes here", CPU included; accelerate's
own FSDP/mixed-precision switches are not used (the training loop shards the model itself, in the precision of
``unlearning.train.dtype``).

Standard library only: the decision is made before torch is imported.
"""
from __future__ import annotations

import os
import sys

#: the number of processes of a relearning job (unlearn jobs read unlearning.train.num_processes from --train)
PROCESSES_ENV = "RU_TRAIN_PROCESSES"
#: ddp or fsdp (methods/distributed.py reads it when the train config names none)
MODE_ENV = "RU_DISTRIBUTED"
#: how long torch's launcher lets its processes finish after passing on a SIGTERM (checkpoint of a 7-8B model:
#: minutes; the SLURM profile signals 600 s before the time limit). Its default, 30 s, would kill the checkpoint.
SHUTDOWN_ENV = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"
SHUTDOWN_S = "570"
MODULE = "robust_unlearning.cli.main"


def launched() -> bool:
    """Is this process one of a launched group (the launcher set WORLD_SIZE)?"""
    return "WORLD_SIZE" in os.environ


def env_processes() -> int:
    """$RU_TRAIN_PROCESSES as a positive int (1 when unset); a bad value is an error naming the variable."""
    raw = os.environ.get(PROCESSES_ENV, "").strip()
    if not raw:
        return 1
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"${PROCESSES_ENV} must be a positive integer, got {raw!r}")
    return int(raw)


def accelerate_argv(num_processes: int, target: list[str], python: str | None = None) -> list[str]:
    """The argv that starts ``target`` (a script and its arguments, or ``-m module …``) as ``num_processes``
    processes on this machine."""
    return [python or sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
            "--num_processes", str(int(num_processes)), "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_port", "0", *target]


def relaunch_command(num_processes: int, ru_argv: list[str]) -> list[str]:
    """The argv of the relaunched job: the same ``ru`` arguments, as ``python -m robust_unlearning.cli.main``."""
    return accelerate_argv(num_processes, ["-m", MODULE, *ru_argv])


def relaunch(num_processes: int | None, ru_argv: list[str], mode: str | None = None) -> None:
    """Replace this process with the ``accelerate launch`` of the same job when ``num_processes`` > 1 and this
    is not already one of the launched processes; return otherwise. ``mode`` (ddp/fsdp) travels in $RU_DISTRIBUTED.
    """
    n = int(num_processes or 1)
    if n <= 1 or launched():
        return
    if mode:
        os.environ[MODE_ENV] = mode
    os.environ.setdefault(SHUTDOWN_ENV, SHUTDOWN_S)
    argv = relaunch_command(n, ru_argv)
    launcher = " ".join(argv[1:len(argv) - len(ru_argv)])
    print(f"ru: {n} processes ({mode or os.environ.get(MODE_ENV) or 'ddp'}): python {launcher} <the ru arguments "
          "above>", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.execv(argv[0], argv)


def ru_argv(args) -> list[str]:
    """This job's ``ru`` arguments (``sys.argv[1:]``: ``workflow/bin/ru`` and the warm worker both set it), checked
    against the parsed ``args`` so that a programmatic ``main([...])`` never relaunches someone else's argv."""
    from .main import build_parser

    argv = list(sys.argv[1:])
    try:
        again = build_parser().parse_args(argv)
    except SystemExit:
        again = None
    if again is None or vars(again) != vars(args):
        raise RuntimeError("several processes: cannot relaunch this job (its arguments are not this process's "
                           "command line); run it as `ru …` or start it with `accelerate launch`")
    return argv
