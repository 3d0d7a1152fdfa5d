"""A SLURM stand-in on this machine for tests: ``sbatch``, ``srun``, ``sacct``, ``scancel`` and ``scontrol``.

``install(bin_dir, state_dir)`` writes the five commands into ``bin_dir``; put it first on PATH. ``sbatch``
keeps each submitted script as ``<state_dir>/<job id>.sh`` and, unless ``FAKE_SLURM_HOLD=1``, runs it in the
background with the variables SLURM sets (``SLURM_JOB_ID``, ``SLURM_NTASKS`` = nodes x tasks per node, ...).
``srun`` starts ``SLURM_NTASKS`` copies of its command on this machine, task i with ``SLURM_PROCID`` = i,
its output to the ``--output`` / ``--error`` files (``%j`` and ``%t`` filled in). ``sacct`` reports the
states ``sbatch`` recorded.
"""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

COMMANDS = ("sbatch", "srun", "sacct", "scancel", "scontrol")


def install(bin_dir: Path, state_dir: Path) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    for name in COMMANDS:
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\nFAKE_SLURM_STATE={state_dir} exec {sys.executable} {__file__} {name} \"$@\"\n")
        path.chmod(0o755)


def _state() -> Path:
    return Path(os.environ["FAKE_SLURM_STATE"])


def sbatch(args: list[str]) -> None:
    script = Path(args[-1])
    text = script.read_text()
    state = _state()
    job_id = str(1000 + len(list(state.glob("*.sh"))))
    (state / f"{job_id}.sh").write_text(text)
    flags = dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", text, re.MULTILINE))
    nodes, per_node = int(flags.get("nodes", 1)), int(flags.get("ntasks-per-node", 1))
    print(f"Submitted batch job {job_id}", flush=True)
    if os.environ.get("FAKE_SLURM_HOLD") == "1":
        (state / f"{job_id}.state").write_text("PENDING")
        return
    env = {**os.environ, "SLURM_JOB_ID": job_id, "SLURM_NTASKS": str(nodes * per_node),
           "SLURM_JOB_NUM_NODES": str(nodes), "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "localhost",
           "SLURM_JOB_NAME": flags.get("job-name", "")}
    (state / f"{job_id}.state").write_text("RUNNING")
    runner = (f"bash {script}; code=$?; if [ $code = 0 ]; then s=COMPLETED; else s=FAILED; fi; "
              f"echo $s > {state / f'{job_id}.state'}")
    subprocess.Popen(["bash", "-c", runner], env=env, start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def srun(args: list[str]) -> int:
    files = {}
    while args and args[0].startswith("--"):
        flag = args.pop(0)
        if flag in ("--output", "--error"):
            files[flag] = args.pop(0)
    tasks = int(os.environ.get("SLURM_NTASKS", "1"))
    procs = []
    with contextlib.ExitStack() as logs:
        for task in range(tasks):
            job = os.environ.get("SLURM_JOB_ID", "0")
            out = {k: v.replace("%j", job).replace("%t", str(task)) for k, v in files.items()}
            env = {**os.environ, "SLURM_PROCID": str(task), "SLURM_LOCALID": str(task)}
            stdout, stderr = (logs.enter_context(open(out.get(f, os.devnull), "a")) for f in ("--output", "--error"))
            procs.append(subprocess.Popen(args, env=env, stdout=stdout, stderr=stderr))
        return max(p.wait() for p in procs)


def sacct(args: list[str]) -> None:
    ids = [args[i + 1] for i, a in enumerate(args) if a == "-j"]
    print("JobID|State|NodeList")
    for job_id in ids:
        path = _state() / f"{job_id}.state"
        if path.exists():
            print(f"{job_id}|{path.read_text().strip()}|localhost")


if __name__ == "__main__":
    name, rest = sys.argv[1], sys.argv[2:]
    if name == "sbatch":
        sbatch(rest)
    elif name == "srun":
        sys.exit(srun(rest))
    elif name == "sacct":
        sacct(rest)
    # scancel and scontrol: accepted and ignored
