"""Fault injection, small and deterministic: signals, kills mid-epoch, damaged checkpoints and caches, full disks,
concurrent writers, a killed DDP rank. ``benchmarks/fault_injection.py`` repeats these at random moments."""
import errno
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_pretrain import TINY

from pcl_bench.cli import main
from pcl_bench.eval import feature_cache
from pcl_bench.eval.store import append_rows, make_row, read_rows
from pcl_bench.models.encoders import build_encoder
from pcl_bench.runtime import atomic, metrics_log
from pcl_bench.runtime.errors import DiskFull
from pcl_bench.train import engine

RUN = ["--epochs", "3", "--no-final-knn", "--log-every", "1"]  # 7 steps per epoch; step records at every step
SETUPS = {"pcl_v2-pil-2-workers": ["--method", "pcl_v2", "--aug-backend", "pil", "--workers", "2"],
          "moco_v2-tensor": ["--method", "moco_v2", "--aug-backend", "tensor"]}


def pretrain(out, name: str, *args: str) -> int:
    return main(["pretrain", *TINY, *RUN, *args, "--out", str(out), "--name", name])


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted 3-epoch run of each setup."""
    out = tmp_path_factory.mktemp("straight")
    for name, args in SETUPS.items():
        assert pretrain(out, name, *args) == 0
    return out


def assert_same_run(a, b):
    """Weights, buffers (queue, memory bank), optimizer, clusters and logged metrics are bit-identical."""
    ca, cb = (torch.load(d / "last.pt", weights_only=False) for d in (a, b))
    assert (ca["epoch"], ca["step"]) == (cb["epoch"], cb["step"]) == (3, 0)
    assert ca["state_dict"].keys() == cb["state_dict"].keys()
    for key in ca["state_dict"]:
        assert torch.equal(ca["state_dict"][key], cb["state_dict"][key]), key
    for i, state in ca["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], cb["optimizer"]["state"][i]["momentum_buffer"])
    if (a / "clusters.pt").exists():
        ka, kb = (torch.load(d / "clusters.pt", weights_only=False) for d in (a, b))
        assert all(torch.equal(x, y) for key in ("im2cluster", "centroids") for x, y in zip(ka[key], kb[key]))
    assert metrics(a) == metrics(b)


def metrics(run_dir):
    """metrics.jsonl without timings."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith("_s") and k not in ("images_per_s", "granularities")}
            for r in rows]


def at_step(monkeypatch, step: int, act):
    """Call ``act()`` right after the step record of global step ``step`` is logged (every step is logged)."""
    log = metrics_log.MetricLogger.log

    def logged(self, kind, **values):
        log(self, kind, **values)
        if kind == "step" and values["step"] == step:
            act()
    monkeypatch.setattr(metrics_log.MetricLogger, "log", logged)


class Killed(BaseException):
    """Stands in for SIGKILL in-process: nothing after it runs."""


@pytest.mark.parametrize("setup", SETUPS)
def test_sigterm_mid_epoch_checkpoints_and_resumes_exactly(straight, tmp_path, monkeypatch, capsys, setup):
    """SIGTERM in epoch 2 (after its E-step): the step ends, last.pt holds it, exit 143; --resume matches."""
    at_step(monkeypatch, 10, lambda: os.kill(os.getpid(), signal.SIGTERM))  # epoch 2, its 4th step
    assert pretrain(tmp_path, setup, *SETUPS[setup]) == 143
    assert "stopped by SIGTERM at epoch 2, step 4 of 7" in capsys.readouterr().err
    ckpt = torch.load(tmp_path / setup / "last.pt", weights_only=False)
    assert (ckpt["epoch"], ckpt["step"]) == (1, 4)
    monkeypatch.undo()
    assert pretrain(tmp_path, setup, *SETUPS[setup], "--resume") == 0
    assert_same_run(straight / setup, tmp_path / setup)


def test_sigint_in_the_e_step_stops_at_once_and_resumes_exactly(straight, tmp_path, monkeypatch, capsys):
    """Ctrl-C during the E-step: no waiting for the clustering, exit 130, last.pt of the epoch before."""
    cluster_epoch = engine.cluster_epoch

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return cluster_epoch(*args, **kwargs)
    monkeypatch.setattr(engine, "cluster_epoch", interrupted)
    setup = "pcl_v2-pil-2-workers"
    assert pretrain(tmp_path, setup, *SETUPS[setup]) == 130
    assert "stopped by SIGINT" in capsys.readouterr().err
    assert torch.load(tmp_path / setup / "last.pt", weights_only=False)["epoch"] == 1
    monkeypatch.undo()
    assert pretrain(tmp_path, setup, *SETUPS[setup], "--resume") == 0
    assert_same_run(straight / setup, tmp_path / setup)


def test_kill_after_a_step_checkpoint_resumes_exactly(straight, tmp_path, monkeypatch):
    """--save-every-steps 3, killed at the 6th step of epoch 2: resumed from its 3rd step, bit-identical."""
    def kill():
        raise Killed
    at_step(monkeypatch, 12, kill)
    setup = "moco_v2-tensor"
    with pytest.raises(Killed):
        pretrain(tmp_path, setup, *SETUPS[setup], "--save-every-steps", "3")
    ckpt = torch.load(tmp_path / setup / "last.pt", weights_only=False)
    assert (ckpt["epoch"], ckpt["step"]) == (1, 3)
    monkeypatch.undo()
    assert pretrain(tmp_path, setup, *SETUPS[setup], "--save-every-steps", "3", "--resume") == 0
    assert_same_run(straight / setup, tmp_path / setup)


def errors(capsys) -> list[str]:
    """The CLI's error lines on stderr (progress bars left out)."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("pcl-bench:")]


def flip_bytes(path, at: float = 0.5, n: int = 8) -> None:
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i:i + n] = bytes(255 - x for x in data[i:i + n])
    path.write_bytes(bytes(data))


def test_evaluating_a_damaged_checkpoint_is_refused(straight, tmp_path, capsys):
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes((straight / "moco_v2-tensor" / "last.pt").read_bytes())
    flip_bytes(damaged)
    assert main(["eval", "knn", "--dataset", "shapes", "--checkpoint", str(damaged)]) == 2
    [line] = errors(capsys)
    assert "is damaged (record" in line and "fails its CRC-32 check" in line


def test_damaged_last_pt_falls_back_to_the_kept_checkpoint(straight, tmp_path, capsys):
    """last.pt truncated and the newest kept checkpoint garbage: resumed from the one before, with a warning,
    and the retrained epoch is bit-identical; nothing readable: one line, exit 2."""
    setup = "moco_v2-tensor"
    assert pretrain(tmp_path, setup, *SETUPS[setup], "--save-every", "1") == 0
    last = tmp_path / setup / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    flip_bytes(tmp_path / setup / "checkpoint_0002.pt")  # torch.load alone would read these as weights
    capsys.readouterr()
    assert pretrain(tmp_path, setup, *SETUPS[setup], "--save-every", "1", "--resume") == 0
    err = capsys.readouterr().err
    assert "last.pt (" in err and "checkpoint_0002.pt (" in err and "resuming from checkpoint_0001.pt" in err
    assert_same_run(straight / setup, tmp_path / setup)

    for path in (tmp_path / setup).glob("*.pt"):
        path.write_bytes(b"")
    assert pretrain(tmp_path, setup, *SETUPS[setup], "--resume") == 2
    [line] = errors(capsys)
    assert "no readable checkpoint" in line


def test_disk_full_keeps_the_last_good_checkpoint(straight, tmp_path, monkeypatch, capsys):
    """ENOSPC while writing epoch 2's checkpoint: one line, exit 1, epoch 1's last.pt intact, resume exact."""
    save = torch.save
    calls = []

    def full_disk(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the checkpoint of epoch 2 (no clusters.pt for moco_v2)
            f.write(b"part of a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, "save", full_disk)
    setup = "moco_v2-tensor"
    assert pretrain(tmp_path, setup, *SETUPS[setup]) == 1
    [line] = errors(capsys)
    assert "no space left on the device writing" in line and "last.pt" in line
    monkeypatch.undo()
    assert torch.load(tmp_path / setup / "last.pt", weights_only=False)["epoch"] == 1
    assert not list((tmp_path / setup).glob(".*.tmp"))
    assert pretrain(tmp_path, setup, *SETUPS[setup], "--resume") == 0
    assert_same_run(straight / setup, tmp_path / setup)


def row(i: int) -> dict:
    return make_row(method="m", checkpoint=f"c{i}", checkpoint_sha256="0" * 16, arch="resnet18", dataset="d",
                    train_split="train", test_split="test", protocol="knn", setting="k=20", metric="top1",
                    mean=float(i), std=0.0, n_runs=1, seeds=[0])


def test_disk_full_store_append_takes_back_its_partial_rows(tmp_path, monkeypatch):
    store = tmp_path / "results.jsonl"
    append_rows([row(0)], store)
    before = store.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiskFull, match="no space left on the device writing .*results.jsonl"):
        append_rows([row(1), row(2)], store)
    monkeypatch.undo()
    assert store.read_bytes() == before
    append_rows([row(3)], store)
    assert list(read_rows(store)["mean"]) == [0.0, 3.0]


def test_malformed_store_line_is_reported_and_the_rest_loads(tmp_path):
    store = tmp_path / "results.jsonl"
    append_rows([row(0)], store)
    with open(store, "a") as f:
        f.write('{"method": "m", "checkp\n')  # a torn line in the middle
    append_rows([row(1)], store)
    with pytest.warns(UserWarning, match=r"results.jsonl:2: skipped a line"):
        rows = read_rows(store)
    assert list(rows["mean"]) == [0.0, 1.0]


class Toy(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.full((3, 32, 32), float(i)), i, i


def features(cache_dir):
    torch.manual_seed(0)
    net = build_encoder("resnet18", stem="small")
    net.fc = torch.nn.Identity()
    return feature_cache.cached_features(net, "a" * 64, Toy(), "toy", "pool", 4, 0, torch.device("cpu"),
                                         cache_dir=cache_dir)


def test_damaged_feature_cache_entry_is_extracted_again(tmp_path):
    good, _ = features(tmp_path)
    [entry] = tmp_path.glob("*.npz")
    for damage in (entry.read_bytes()[:100], b"not an npz file"):
        entry.write_bytes(damage)
        with pytest.warns(UserWarning, match="is damaged"):
            again, _ = features(tmp_path)
        np.testing.assert_array_equal(again, good)


def test_disk_full_feature_cache_leaves_no_entry(tmp_path, monkeypatch):
    def full(f, **arrays):
        f.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(DiskFull, match="no space left"):
        features(tmp_path)
    assert not list(tmp_path.glob("*.npz")) and not list(tmp_path.glob(".*.tmp"))


def _extract_in_process(cache_dir, log, start):
    extract = feature_cache.extract_features

    def counted(*args, **kwargs):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # long enough for the others to find the entry missing
        return extract(*args, **kwargs)
    feature_cache.extract_features = counted
    start.wait()  # all four ask for the entry at once
    np.save(cache_dir / f"out-{os.getpid()}.npy", features(cache_dir)[0])


def test_concurrent_processes_extract_a_cache_entry_once(tmp_path):
    cache, log = tmp_path / "cache", tmp_path / "extractions.log"
    cache.mkdir()
    ctx = multiprocessing.get_context("spawn")  # a forked child of a process with an OpenMP pool can hang
    start = ctx.Barrier(4)
    procs = [ctx.Process(target=_extract_in_process, args=(cache, log, start)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert len(log.read_text().splitlines()) == 1
    outs = [np.load(p) for p in cache.glob("out-*.npy")]
    assert len(outs) == 4 and all(np.array_equal(o, outs[0]) for o in outs)


def test_a_killed_ddp_rank_ends_the_run_and_it_resumes(tmp_path):
    """torchrun, 2 gloo processes; SIGKILL to one of them in epoch 2: the whole run ends within a minute (no
    hang), and --resume with 2 processes completes the run: ShuffleBN across the ranks, E-steps gathered from
    both."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29531",
           "-m", "pcl_bench", "pretrain", *TINY, "--bn-splits", "1", "--method", "pcl_v2", *RUN,
           "--out", str(tmp_path), "--name", "ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen = b""
    while b"epoch 1/3 " not in seen:  # epoch 1 checkpointed
        chunk = proc.stdout.read1(4096)
        assert chunk, seen[-2000:]
        seen += chunk
    workers = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    t0 = time.monotonic()
    proc.communicate(timeout=120)
    assert proc.returncode != 0 and time.monotonic() - t0 < 60
    res = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    ckpt = torch.load(tmp_path / "ddp" / "last.pt", weights_only=False)
    assert ckpt["config"]["bn_splits"] == 1 and ckpt["epoch"] == 3
    clusters = torch.load(tmp_path / "ddp" / "clusters.pt", weights_only=False)
    assert clusters["epoch"] == 2 and [t.numel() for t in clusters["im2cluster"]] == [120, 120]  # no padding


def test_enospc_inside_torch_save_is_a_disk_full(tmp_path, monkeypatch):
    """A real full disk fails the file's write; torch.save then raises a RuntimeError of its own, whose
    cause chain still names ENOSPC: the previous checkpoint stays and the error names the file."""
    path = tmp_path / "last.pt"
    atomic.save_torch({"epoch": 1}, path)
    fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()
    monkeypatch.setattr(os, "fdopen", lambda *a, **k: Full(fdopen(*a, **k)))
    with pytest.raises(DiskFull, match="no space left on the device writing .*last.pt"):
        atomic.save_torch({"epoch": 2, "w": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert torch.load(path) == {"epoch": 1} and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_skip_corrupt_when_the_first_image_is_broken(tmp_path, capsys):
    """The image that sets an ImageFolder's size may itself be unreadable: named without --skip-corrupt, left
    out with it."""
    for split in ("train", "test"):
        for c in range(2):
            (tmp_path / split / f"c{c}").mkdir(parents=True)
            for j in range(4):
                image = Image.fromarray(np.full((32, 32, 3), 60 * c + 10 * j, np.uint8))
                image.save(tmp_path / split / f"c{c}" / f"{j}.jpg")
    first = tmp_path / "train" / "c0" / "0.jpg"
    first.write_bytes(first.read_bytes()[:43])  # cut inside the JPEG header
    cmd = ["eval", "knn", "--dataset", "imagefolder", "--data-root", str(tmp_path), "--checkpoint",
           "random:resnet18", "--results", str(tmp_path / "results.jsonl")]
    assert main(cmd) == 2
    [line] = errors(capsys)
    assert f"unreadable image {first}" in line
    assert main([*cmd, "--skip-corrupt"]) == 0
    assert all(r == [str(first)] for r in read_rows(tmp_path / "results.jsonl")["skipped"])


def test_kill_between_an_epoch_checkpoint_and_its_log_loses_nothing(straight, tmp_path, monkeypatch):
    """The epoch's record is logged before its checkpoint: a kill between the two retrains the epoch and
    logs it again, instead of resuming after an epoch whose record is missing."""
    save = engine.save_checkpoint

    def killed_after_epoch_2(cfg, model, optimizer, epoch, num_samples, point=None):
        save(cfg, model, optimizer, epoch, num_samples, point)
        if point is None and epoch == 1:
            raise Killed
    monkeypatch.setattr(engine, "save_checkpoint", killed_after_epoch_2)
    setup = "moco_v2-tensor"
    with pytest.raises(Killed):
        pretrain(tmp_path, setup, *SETUPS[setup])
    monkeypatch.undo()
    assert pretrain(tmp_path, setup, *SETUPS[setup], "--resume") == 0
    assert_same_run(straight / setup, tmp_path / setup)
