"""Launching ``pcl-bench`` commands as jobs: processes on this machine, or SLURM jobs through submitit.

A job is the command line a user would type (``pcl-bench eval knn ...``), so a job that fails can be rerun by
hand from its log. ``submitit`` is an optional dependency (``pip install 'pcl-bench[slurm]'``), imported only
when a SLURM executor is built.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from .errors import UsageError

POLL_S = 0.5  # how often finished processes / SLURM result files are looked for


@dataclass(frozen=True)
class Job:
    """One ``pcl-bench`` command (``argv`` after ``pcl-bench``) named ``name``; its output goes to ``log``."""

    name: str
    argv: tuple[str, ...]
    log: Path


def command(argv: Sequence[str]) -> list[str]:
    """The process command line of ``pcl-bench <argv>`` with this interpreter."""
    return [sys.executable, "-m", "pcl_bench", *argv]


def _die_with_parent(parent: int) -> None:
    """In a child before exec: receive SIGTERM when the parent dies (Linux), so a killed grid leaves no job
    running that its rerun would start a second time."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the caller's finally-block still stops its children
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(143)


def run_local(jobs: Sequence[Job], max_parallel: int = 1, on_finish: Callable[[Job, int], None] | None = None,
              threads: int | None = None) -> dict[str, int]:
    """Run ``jobs`` as processes, at most ``max_parallel`` at once, in order; returns {name: exit code}.

    Each job gets ``threads`` intra-op threads (default: this machine's cores // ``max_parallel``): parallel
    PyTorch processes that each use every core slow each other down many times over. ``on_finish(job, code)``
    is called as each job ends. A job that fails does not stop the others. If this process is stopped, its
    jobs are stopped too.
    """
    threads = threads or max(1, (os.cpu_count() or 1) // max_parallel)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    pending, running, codes = list(jobs), {}, {}
    try:
        while pending or running:
            while pending and len(running) < max_parallel:
                job = pending.pop(0)
                job.log.parent.mkdir(parents=True, exist_ok=True)
                with open(job.log, "w") as log:
                    running[job] = subprocess.Popen(command(job.argv), stdout=log, stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL, env=env,
                                                    # this loop starts no threads, the hook's hazard
                                                    preexec_fn=partial(_die_with_parent, os.getpid()))  # noqa: PLW1509
            time.sleep(POLL_S)
            for job, proc in list(running.items()):
                if proc.poll() is not None:
                    del running[job]
                    codes[job.name] = proc.returncode
                    if on_finish:
                        on_finish(job, proc.returncode)
    finally:
        for proc in running.values():
            proc.terminate()
        for proc in running.values():
            proc.wait()
    return codes


# ---------------------------------------------------------------------------------------------------- SLURM


@dataclass(frozen=True)
class SlurmResources:
    """What one SLURM job asks for. ``time_min`` is the time limit in minutes; ``None`` leaves a setting to the
    cluster's defaults."""

    partition: str | None = None
    account: str | None = None
    time_min: int = 60
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 1
    cpus_per_task: int | None = None
    job_name: str = "pcl-bench"


def require_slurm() -> None:
    """Raise a UsageError unless submitit is installed and ``srun`` is on PATH (checked before any work)."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise UsageError("--executor slurm needs submitit: pip install 'pcl-bench[slurm]'") from None
    if shutil.which("srun") is None:
        raise UsageError("--executor slurm: no 'srun' on PATH; submit from a SLURM login node, or use "
                         "--executor local")


def slurm_executor(folder: str | os.PathLike, resources: SlurmResources) -> Any:
    """A ``submitit.SlurmExecutor`` writing its scripts and logs under ``folder/<job id>/``.

    The job gets ``--signal=USR2@120``: on preemption or at its time limit submitit calls the job's
    ``checkpoint()`` and requeues it (:class:`CommandJob`).
    """
    require_slurm()
    import submitit
    executor = submitit.SlurmExecutor(folder=Path(folder) / "%j")
    r = resources
    params = {"job_name": r.job_name, "time": r.time_min, "nodes": r.nodes, "ntasks_per_node": r.tasks_per_node,
              "signal_delay_s": 120, "partition": r.partition, "account": r.account,
              "gpus_per_node": r.gpus_per_node or None, "cpus_per_task": r.cpus_per_task}
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor


class CommandJob:
    """A ``pcl-bench`` command as a submitit job, run in each of the job's tasks.

    In a job of several tasks (one per GPU, on one or more nodes) each task runs the command with
    torch.distributed's variables (``MASTER_ADDR``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ...) set from
    SLURM's, the rendezvous ``torchrun`` would do. When SLURM preempts the job or its time runs out, submitit
    calls :meth:`checkpoint` and requeues the job; the command itself stops at a checkpoint on the SIGTERM that
    follows. The requeued job runs the command again, with ``--resume`` when ``resume_dir`` exists.
    """

    def __init__(self, argv: Sequence[str], resume_dir: str | os.PathLike | None = None):
        self.argv = list(argv)
        self.resume_dir = None if resume_dir is None else str(resume_dir)

    def __call__(self) -> None:
        import submitit
        if submitit.JobEnvironment().num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        # SLURM sends the USR2 asked for to every process of the job: only submitit's handler acts on it
        # (checkpoint and requeue); the command stops on the SIGTERM of the requeue, at a checkpoint.
        ignore_usr2 = partial(signal.signal, signal.SIGUSR2, signal.SIG_IGN)
        code = subprocess.run(command(self.argv), check=False, preexec_fn=ignore_usr2).returncode
        if code:
            raise RuntimeError(f"pcl-bench {' '.join(self.argv)} exited with code {code}")

    def checkpoint(self) -> Any:
        import submitit
        argv = [a for a in self.argv if a != "--overwrite"]  # the requeued job must not delete what it resumes
        if self.resume_dir and Path(self.resume_dir).exists() and "--resume" not in argv:
            argv.append("--resume")
        return submitit.helpers.DelayedSubmission(CommandJob(argv, self.resume_dir))


@contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """Inside, SIGTERM raises SystemExit(143) as Ctrl-C raises KeyboardInterrupt, so cleanup code runs
    (the default action ends the process at once)."""
    def stop(signum: int, frame: object) -> None:
        raise SystemExit(143)
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait_slurm(jobs: dict[Job, Any], on_finish: Callable[[Job, int], None] | None = None) -> dict[str, int]:
    """Wait for submitted SLURM jobs ({job: submitit job}); returns {name: 0 or 1}. A failed job's error and
    its submitit log go into the job's ``log``. If the wait is stopped (Ctrl-C, SIGTERM), the jobs still
    queued or running are cancelled, so that a rerun does not start them a second time."""
    from submitit.core.utils import UncompletedJobError
    codes: dict[str, int] = {}
    pending = dict(jobs)
    try:
        while pending:
            time.sleep(POLL_S)
            for job, handle in [(j, h) for j, h in pending.items() if h.done()]:
                del pending[job]
                try:
                    error = handle.exception()
                except UncompletedJobError as e:  # the job died without a result (node failure, scancel, ...)
                    error = e
                job.log.parent.mkdir(parents=True, exist_ok=True)
                job.log.write_text(f"SLURM job {handle.job_id}; submitit logs: {handle.paths.stdout.parent}\n"
                                   + (f"{error}\n{handle.stderr() or ''}" if error else ""))
                codes[job.name] = int(error is not None)
                if on_finish:
                    on_finish(job, codes[job.name])
    finally:
        for handle in pending.values():
            handle.cancel(check=False)
    return codes
