"""``pcl-bench eval grid``: jobs planned and skipped by their rows in the store, a killed grid resumed, failed jobs
reported, the statistics over seeds, and the SLURM path on a stand-in cluster (tests/fake_slurm.py)."""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures import write_imagefolder
from scipy import stats

from pcl_bench.analysis.seeds import over_seeds, paired_p, paired_tests, seed_table
from pcl_bench.cli import _without
from pcl_bench.eval.grid import expand_checkpoints, grid_rows, plan_grid, row_key, stored_keys
from pcl_bench.runtime.errors import UsageError
from pcl_bench.runtime.launch import CommandJob, Job, run_local

CHECKPOINTS = "random:resnet18,random:resnet18:small"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """5 classes, 12 training and 4 test images each (AMI's K=50 needs 50 images)."""
    root = tmp_path_factory.mktemp("grid_data")
    write_imagefolder(root, splits=("train",), classes=[f"c{i}" for i in range(5)], n=12, seed=1)
    write_imagefolder(root, splits=("test",), classes=[f"c{i}" for i in range(5)], n=4, seed=2)
    return root


def grid_cmd(root: Path, store: Path, *extra: str, checkpoints: str = CHECKPOINTS) -> list[str]:
    return [sys.executable, "-m", "pcl_bench", "eval", "grid", "--checkpoints", checkpoints, "--protocols",
            "ami", "--dataset", "imagefolder", "--data-root", str(root), "--results", str(store),
            "--workers", "0", "--seeds", "0,1", *extra]


def env(threads: int = 1) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}


def run(cmd: list[str], timeout: int = 600, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env={**env(), **extra_env}, capture_output=True, text=True, timeout=timeout,
                          check=False)


def result_counts(store: Path) -> Counter:
    """How often each (evaluation, setting, metric, class) appears in the store."""
    rows = [json.loads(line) for line in store.read_text().splitlines()] if store.exists() else []
    return Counter((row_key(r["checkpoint_sha256"], r), r["setting"], r["metric"], r["class"]) for r in rows)


@pytest.mark.slow  # about a minute: three grid processes and two evaluation jobs, each a new Python process
def test_killed_grid_resumes_with_the_remaining_jobs_and_writes_each_row_once(tiny, tmp_path):
    store = tmp_path / "results.jsonl"
    # 1 checkpoint x 2 seeds of AMI = 2 jobs; kill the grid after the first
    cmd = grid_cmd(tiny, store, checkpoints="random:resnet18:small")
    grid = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while not result_counts(store) and time.monotonic() < deadline:
        time.sleep(0.2)
    grid.send_signal(signal.SIGKILL)
    grid.wait()
    assert result_counts(store), "no job finished within 3 minutes"
    time.sleep(2)  # the running job dies with the grid: nothing more is written
    after_kill = store.read_text()
    time.sleep(3)
    assert store.read_text() == after_kill

    rerun = run(cmd)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert rerun.stdout.splitlines()[0] == f"2 jobs: 1 already in {store}, 1 to run"
    counts = result_counts(store)
    assert set(counts.values()) == {1}, "a result was written twice"
    assert len({k[0] for k in counts}) == 2
    table = (tmp_path / "grid" / "grid_imagefolder.md").read_text()
    assert "random:resnet18:small" in table and "± " in table and "(2)" in table  # two seeds: an interval

    again = run(cmd)
    assert again.returncode == 0 and again.stdout.startswith("2 jobs: 2 already in")
    assert result_counts(store) == counts


def test_plan_checks_everything_before_a_job_runs(tiny, tmp_path):
    kw = {"results": tmp_path / "r.jsonl", "log_dir": tmp_path / "logs", "workers": 0}
    jobs = plan_grid(["random:resnet18"], ["knn", "lowshot"], "imagefolder", str(tiny), [3, 4], **kw)
    assert [(j.protocol, j.seed) for j in jobs] == [("knn", None), ("lowshot", 3), ("lowshot", 4)]
    assert "--seed" not in jobs[0].job.argv and jobs[1].job.argv[-2:] == ("--seed", "3")
    assert jobs[1].sha256 != jobs[2].sha256  # a random encoder is seeded by the protocol's seed
    assert stored_keys(tmp_path / "r.jsonl") == set()
    with pytest.raises(UsageError, match="AMI with K=50"):
        plan_grid(["random:resnet18"], ["ami"], "imagefolder", str(tiny), None,
                  fixed={"train_split": "test", "test_split": "test"}, **kw)
    with pytest.raises(UsageError, match="nothing matches"):
        expand_checkpoints([str(tmp_path / "run" / "checkpoint_*.pt")])
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError):
        plan_grid([str(bad)], ["knn"], "imagefolder", str(tiny), None, **kw)


def test_grid_rows_carry_seed_and_label(tiny, tmp_path):
    store = tmp_path / "r.jsonl"
    jobs = plan_grid(["random:resnet18"], ["knn"], "imagefolder", str(tiny), None, results=store,
                     log_dir=tmp_path / "logs", workers=0)
    codes = run_local([j.job for j in jobs])
    assert codes == {jobs[0].job.name: 0}, jobs[0].job.log.read_text()
    rows = grid_rows(jobs, store)
    assert len(rows) == 2 and set(rows["seed"]) == {-1} and set(rows["label"]) == {"random:resnet18"}
    assert stored_keys(store) == {jobs[0].key}


def test_run_local_reports_failures_and_goes_on(tmp_path):
    jobs = [Job("bad", ("eval", "knn", "--dataset", "imagefolder", "--data-root", str(tmp_path / "none"),
                        "--checkpoint", "random:resnet18"), tmp_path / "bad.log"),
            Job("help", ("report", "--help"), tmp_path / "help.log")]
    seen = []
    codes = run_local(jobs, max_parallel=2, on_finish=lambda job, code: seen.append((job.name, code)))
    assert codes == {"bad": 2, "help": 0} and sorted(seen) == [("bad", 2), ("help", 0)]
    assert "pcl-bench: error:" in (tmp_path / "bad.log").read_text()


# ----------------------------------------------------------------------------------------- seeds statistics


def values(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["protocol", "setting", "metric", "checkpoint", "seed", "value"])


def test_interval_and_paired_test_match_their_formulas():
    a, b = [70.0, 72.0, 71.0, 75.0], [69.0, 70.5, 70.0, 73.0]
    v = values([("knn", "k=20", "top1", "a", s, x) for s, x in enumerate(a)]
               + [("knn", "k=20", "top1", "b", s, x) for s, x in enumerate(b)])
    summary = over_seeds(v, ["protocol", "setting", "metric", "checkpoint"]).set_index("checkpoint")
    half = stats.t.ppf(0.975, 3) * np.std(a, ddof=1) / 2
    assert summary.loc["a", "n"] == 4 and np.isclose(summary.loc["a", "mean"], np.mean(a))
    assert np.isclose(summary.loc["a", "ci95"], half)
    tests = paired_tests(v, ["protocol", "setting", "metric"])
    assert len(tests) == 1 and np.isclose(tests["p"][0], stats.ttest_rel(a, b).pvalue)
    assert np.isclose(tests["diff"][0], np.mean(np.subtract(a, b))) and bool(tests["significant"][0])
    table = seed_table(v, ["protocol", "setting", "metric"])
    assert table.loc[0, "a"] == f"{np.mean(a):.1f} ± {half:.1f} (4)" and "a > b (p=" in table.loc[0, "significant"]


def test_paired_test_edge_cases():
    assert paired_p(np.array([1.0, 2.0]), np.array([0.0, 1.0])) == 0.0  # the same difference every seed
    assert paired_p(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 1.0
    one_seed = values([("ami", "K=10", "ami", c, 0, 0.5) for c in "ab"])
    assert paired_tests(one_seed, ["protocol", "setting", "metric"]).empty  # no test on one seed
    assert over_seeds(one_seed, ["checkpoint"])["ci95"].isna().all()
    other_seeds = values([("ami", "K=10", "ami", "a", 0, 0.5), ("ami", "K=10", "ami", "a", 1, 0.6),
                          ("ami", "K=10", "ami", "b", 2, 0.5), ("ami", "K=10", "ami", "b", 3, 0.6)])
    assert paired_tests(other_seeds, ["protocol", "setting", "metric"]).empty  # pairs need common seeds


# ----------------------------------------------------------------------------------------------------- SLURM


@pytest.fixture
def fake_cluster(tmp_path, monkeypatch) -> Path:
    import fake_slurm
    pytest.importorskip("submitit")
    state = tmp_path / "slurm_state"
    fake_slurm.install(tmp_path / "bin", state)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_STATE", str(state))
    return state


def sbatch_flags(script: str) -> dict[str, str]:
    return dict(line[len("#SBATCH --"):].split("=", 1) for line in script.splitlines()
                if line.startswith("#SBATCH --"))


def test_grid_on_slurm_submits_each_job_with_its_resources(tiny, tmp_path, fake_cluster):
    store = tmp_path / "results.jsonl"
    cmd = [sys.executable, "-m", "pcl_bench", "eval", "grid", "--checkpoints", "random:resnet18", "--protocols",
           "knn", "--dataset", "imagefolder", "--data-root", str(tiny), "--results", str(store), "--workers", "0",
           "--executor", "slurm", "--partition", "gpu", "--account", "lab", "--gpus-per-job", "1",
           "--time-min", "30", "--cpus-per-task", "4"]
    out = run(cmd, 300, PATH=os.environ["PATH"])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "submitted 1 SLURM jobs (1000)" in out.stdout + out.stderr
    script = (fake_cluster / "1000.sh").read_text()
    flags = sbatch_flags(script)
    assert flags["partition"] == "gpu" and flags["account"] == "lab" and flags["gpus-per-node"] == "1"
    assert flags["time"] == "30" and flags["cpus-per-task"] == "4" and flags["signal"] == "USR2@120"
    assert flags["output"].startswith(str(tmp_path / "grid" / "slurm"))
    assert len(result_counts(store)) == 2  # knn k=20 and k=200, written by the job


def test_pretrain_on_slurm_submits_the_same_command_as_a_multi_node_job(tmp_path, fake_cluster, monkeypatch):
    monkeypatch.setenv("FAKE_SLURM_HOLD", "1")  # submit only
    argv = ["pretrain", "--method", "moco_v2", "--dataset", "shapes", "--out", str(tmp_path / "runs"), "--name",
            "m", "--epochs", "3", "--overwrite", "--executor", "slurm", "--nodes", "2", "--gpus-per-node", "4",
            "--partition=big", "--time-min", "600"]
    out = run([sys.executable, "-m", "pcl_bench", *argv], 120, PATH=os.environ["PATH"])
    assert out.returncode == 0, out.stderr
    assert "submitted SLURM job 1000: 2 node(s) x 4 process(es)" in out.stdout
    flags = sbatch_flags((fake_cluster / "1000.sh").read_text())
    assert (flags["nodes"], flags["ntasks-per-node"], flags["gpus-per-node"]) == ("2", "4", "4")
    assert flags["partition"] == "big" and flags["time"] == "600" and flags["job-name"] == "pcl-bench-m"
    with open(tmp_path / "runs" / "m.slurm" / "1000" / "1000_submitted.pkl", "rb") as f:
        job = pickle.load(f).function
    assert job.argv == argv[:12] and job.resume_dir == str(tmp_path / "runs" / "m")
    assert not (tmp_path / "runs" / "m").exists()  # nothing is trained here


def test_requeued_training_resumes_without_overwriting(tmp_path):
    pytest.importorskip("submitit")
    run_dir = tmp_path / "m"
    job = CommandJob(["pretrain", "--name", "m", "--overwrite"], resume_dir=run_dir)
    assert job.checkpoint().function.argv == ["pretrain", "--name", "m"]  # preempted before the run folder
    run_dir.mkdir()
    again = job.checkpoint().function
    assert again.argv == ["pretrain", "--name", "m", "--resume"] and again.resume_dir == str(run_dir)
    assert again.checkpoint().function.argv == again.argv


def test_launch_flags_are_removed_from_the_submitted_command():
    argv = ["--method", "pcl_v2", "--executor", "slurm", "--nodes=2", "--gpus-per-node", "8", "--lr", "0.03"]
    assert _without(argv, ("executor", "nodes", "gpus_per_node")) == ["--method", "pcl_v2", "--lr", "0.03"]


@pytest.mark.slow
def test_two_process_training_job_meets_through_the_slurm_environment(tmp_path, fake_cluster):
    """The job's 2 tasks (SLURM_PROCID 0 and 1) form one torch.distributed group from SLURM's variables."""
    runs = tmp_path / "runs"
    argv = ["pretrain", "--method", "moco_v2", "--dataset", "shapes", "--subset-per-class", "12", "--image-size",
            "32", "--batch-size", "16", "--queue", "32", "--epochs", "1", "--knn-k", "5", "--device", "cpu",
            "--aug-backend", "tensor", "--bn-splits", "0", "--out", str(runs), "--name", "ddp", "--executor", "slurm",
            "--gpus-per-node", "2"]
    out = run([sys.executable, "-m", "pcl_bench", *argv], 120)
    assert out.returncode == 0, out.stderr
    deadline = time.monotonic() + 400
    while (fake_cluster / "1000.state").read_text().strip() == "RUNNING" and time.monotonic() < deadline:
        time.sleep(1)
    logs = sorted((runs / "ddp.slurm" / "1000").glob("1000_*_log.err"))
    assert (fake_cluster / "1000.state").read_text().strip() == "COMPLETED", [p.read_text()[-2000:] for p in logs]
    assert len(logs) == 2 and (runs / "ddp" / "last.pt").exists()
    assert json.loads((runs / "ddp" / "config.json").read_text())["bn_splits"] == 1  # 1 under DDP, 8 alone


def test_bad_launch_input_stops_before_any_work(tmp_path, monkeypatch, capsys):
    from pcl_bench.cli import main
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    grid = ["eval", "grid", "--checkpoints", "random:resnet18", "--dataset", "shapes", "--results",
            str(tmp_path / "r.jsonl")]
    assert main([*grid, "--executor", "slurm"]) == 2
    assert main([*grid, "--max-parallel", "0"]) == 2
    assert main(["pretrain", "--out", str(tmp_path), "--executor", "slurm"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    no_srun = ("pcl-bench: error: --executor slurm: no 'srun' on PATH; submit from a SLURM login node, or use "
               "--executor local")
    assert lines == [no_srun, "pcl-bench: error: --max-parallel 0: give 1 or more", no_srun]
    assert not any(tmp_path.iterdir())
