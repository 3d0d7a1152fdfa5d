"""Fault injection: every fault class many times at random moments, then one table of what survived.

Pretraining runs are tiny `shapes` runs (120 images, 3 epochs of 7 steps, final kNN, ``--save-every-steps 2``):
pcl_v2 with PIL augmentation in 2 loader workers and moco_v2 with the tensor backend. Each is run once
uninterrupted as the reference. A trial then starts the same run, hits it at a uniformly random moment of the
reference's wall time (imports, set-up, steps, E-steps, checkpoint writes, the final kNN), resumes it with
``--resume`` and compares everything against the reference: weights and buffers (queue, memory bank),
optimizer state, clusters, the kNN result and every logged metric. "lost" counts trials that did not end
bit-identical, rows missing or torn, and damaged data that was used.

Fault classes: ``sigkill``, ``sigterm`` (exit 143 and a step checkpoint expected), ``ddp-kill`` (torchrun, 2
gloo processes, one killed: the other must end within a minute, then resume), ``store-writers`` (processes
appending rows to one results store), ``cache-writers`` (processes extracting the same features into one
cache), ``corrupt-*`` (random truncation, flipped bytes or garbage in a feature-cache entry, last.pt, a
results-store line, an image), ``enospc-*`` (a full disk injected by patching the write path after a random
number of bytes: the previous file must stay intact), ``nan`` (a non-finite loss at a random step).

    python benchmarks/fault_injection.py --quick    # every class a few times (about 10 minutes on 2 cores)
    python benchmarks/fault_injection.py            # the full run: 50 SIGKILLs, 20 SIGTERMs, 8 x 200 rows, ...
"""
from __future__ import annotations

import argparse
import builtins
import contextlib
import errno
import functools
import io
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pcl_bench.eval import feature_cache
from pcl_bench.eval.store import append_rows, make_row, read_rows
from pcl_bench.models.encoders import build_encoder
from pcl_bench.runtime import atomic
from pcl_bench.runtime.errors import DiskFull, UsageError
from pcl_bench.runtime.provenance import machine, provenance
from pcl_bench.train import engine

TINY = ["--dataset", "shapes", "--subset-per-class", "12", "--image-size", "32", "--batch-size", "16",
        "--queue", "32", "--num-cluster", "24,32", "--proto-negatives", "8", "--warmup-epochs", "1",
        "--knn-k", "5", "--epochs", "3", "--save-every", "1", "--save-every-steps", "2"]
SETUPS = {"pcl_v2": ["--method", "pcl_v2", "--aug-backend", "pil", "--workers", "2", "--bn-splits", "2"],
          "moco_v2": ["--method", "moco_v2", "--aug-backend", "tensor", "--workers", "0", "--bn-splits", "2"]}
FULL = {"sigkill": 50, "sigterm": 20, "ddp-kill": 4, "store-writers": 8, "cache-writers": 8, "corrupt": 20,
        "enospc": 20, "nan": 6, "rows": 200}
QUICK = {"sigkill": 4, "sigterm": 2, "ddp-kill": 1, "store-writers": 4, "cache-writers": 4, "corrupt": 3,
         "enospc": 4, "nan": 2, "rows": 50}
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def pretrain_args(out: Path, name: str, setup: str, *extra: str) -> list[str]:
    return ["pretrain", *TINY, *SETUPS[setup], *extra, "--out", str(out), "--name", name]


def pretrain_cmd(out: Path, name: str, setup: str, *extra: str, ddp: bool = False) -> list[str]:
    if ddp:  # 2 gloo processes of 8 images each: one BatchNorm split per process
        launcher = ["-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29541"]
        return [sys.executable, *launcher, "-m", "pcl_bench", *pretrain_args(out, name, setup, *extra,
                                                                             "--bn-splits", "1")]
    return [sys.executable, "-m", "pcl_bench", *pretrain_args(out, name, setup, *extra)]


def timed_run(cmd: list[str], env=ENV) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def difference(a: Path, b: Path) -> str:
    """What differs between runs ``a`` and ``b`` ("" if the final weights, buffers, optimizer, clusters, kNN
    and logged metrics are bit-identical)."""
    ca, cb = (torch.load(d / "last.pt", weights_only=False) for d in (a, b))
    if (ca["epoch"], ca["step"]) != (cb["epoch"], cb["step"]) or not _equal(ca["state_dict"], cb["state_dict"]):
        return "weights"
    if not _equal(ca["optimizer"]["state"], cb["optimizer"]["state"]):
        return "optimizer"
    if (a / "clusters.pt").exists() and not _equal(*(torch.load(d / "clusters.pt", weights_only=False)
                                                     for d in (a, b))):
        return "clusters"
    if json.loads((a / "knn.json").read_text())["knn"] != json.loads((b / "knn.json").read_text())["knn"]:
        return "kNN"
    return "" if _metrics(a) == _metrics(b) else "logged metrics"


def _equal(x, y) -> bool:
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and x.shape == y.shape and torch.equal(x, y)
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(_equal(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return len(x) == len(y) and all(_equal(u, v) for u, v in zip(x, y))
    return x == y


def _metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith("_s") and k not in ("images_per_s", "granularities")}
            for r in rows]


def where(run_dir: Path) -> str:
    """Where a run stood when it was hit, from what it left on disk."""
    if (run_dir / "knn.json").exists():
        return "finished"
    if not (run_dir / "last.pt").exists():
        return "before the first checkpoint"
    ckpt = torch.load(run_dir / "last.pt", weights_only=False)
    if ckpt["epoch"] == 3:
        return "in the final kNN"
    return f"in epoch {ckpt['epoch'] + 1}" + (f" after step {ckpt['step']}" if ckpt["step"] else " (E-step or 1st step)")


def signal_trials(sig: signal.Signals, trials: int, refs: dict, work: Path, rng: random.Random) -> dict:
    failures, places, codes = [], Counter(), Counter()
    for i in range(trials):
        setup = list(SETUPS)[i % len(SETUPS)]
        name = f"{sig.name.lower()}-{i}"
        proc = subprocess.Popen(pretrain_cmd(work, name, setup), env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=rng.uniform(0, refs[setup]["seconds"]))
        except subprocess.TimeoutExpired:
            proc.send_signal(sig)
            proc.wait()
        codes[proc.returncode] += 1
        place = where(work / name)
        places[place] += 1
        again = ["--resume"] if (work / name).exists() else []  # a kill before the run folder: start it again
        resumed = subprocess.run(pretrain_cmd(work, name, setup, *again), env=ENV, capture_output=True, check=False)
        problem = difference(refs[setup]["dir"], work / name) if resumed.returncode == 0 else \
            f"resume exit {resumed.returncode}"
        if sig == signal.SIGTERM and proc.returncode not in (0, 143, -signal.SIGTERM):
            problem = f"exit {proc.returncode} on SIGTERM"  # a signal once training runs ends at a checkpoint
        if problem:
            failures.append(f"{setup} hit {place}: {problem}")
        shutil.rmtree(work / name)
    note = _counts(places) + "; exit codes " + _counts(codes)
    return {"trials": trials, "lost": len(failures), "note": note + "".join(f"; LOST: {f}" for f in failures)}


def _counts(c: Counter) -> str:
    return ", ".join(f"{k} x{n}" for k, n in sorted(c.items(), key=lambda kv: str(kv[0])))


def ddp_trials(trials: int, work: Path, rng: random.Random) -> dict:
    ref = work / "ddp-ref"
    env = {**ENV, "OMP_NUM_THREADS": "1"}
    seconds = timed_run(pretrain_cmd(work, "ddp-ref", "moco_v2", ddp=True), env)
    lost, waits = 0, []
    for i in range(trials):
        name = f"ddp-{i}"
        proc = subprocess.Popen(pretrain_cmd(work, name, "moco_v2", ddp=True), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.4, 0.9) * seconds)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        if children:
            os.kill(int(rng.choice(children)), signal.SIGKILL)
        t0 = time.perf_counter()
        proc.wait()
        waits.append(time.perf_counter() - t0)
        resumed = subprocess.run(pretrain_cmd(work, name, "moco_v2", "--resume", ddp=True), env=env,
                                 capture_output=True, check=False)
        lost += not (resumed.returncode == 0 and waits[-1] < 60 and not difference(ref, work / name))
        shutil.rmtree(work / name)
    return {"trials": trials, "lost": lost, "note": f"the other rank ended {min(waits):.1f}-{max(waits):.1f} s "
                                                    f"after the kill"}


def _row(writer: int, i: int) -> dict:
    return make_row(method=f"w{writer}", checkpoint=f"c{i}", checkpoint_sha256="0" * 16, arch="resnet18",
                    dataset="d", train_split="train", test_split="test", protocol="knn", setting=f"{writer}:{i}",
                    metric="top1", mean=float(i), std=0.0, n_runs=1, seeds=[0])


def _append_worker(store: Path, writer: int, rows: int, seed: int, start) -> None:
    rng, i = random.Random(seed), 0
    start.wait()  # all writers start appending together
    while i < rows:
        n = min(rng.randint(1, 5), rows - i)
        append_rows([_row(writer, j) for j in range(i, i + n)], store)
        i += n


def store_writer_trial(writers: int, rows: int, work: Path) -> dict:
    store = work / "store.jsonl"
    ctx = multiprocessing.get_context("spawn")  # a forked child of a process with an OpenMP pool can hang
    start = ctx.Barrier(writers)
    procs = [ctx.Process(target=_append_worker, args=(store, w, rows, w, start)) for w in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    lines = store.read_bytes().splitlines()
    torn = sum(1 for line in lines if not _is_row(line))
    found = {json.loads(line)["setting"] for line in lines if _is_row(line)}
    lost = writers * rows - len(found) + torn
    return {"trials": writers * rows, "lost": lost, "note": f"{writers} processes x {rows} rows, {len(lines)} "
                                                            f"lines, {torn} torn"}


def _is_row(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


class _Toy(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        return torch.full((3, 32, 32), i / 64.0), i, i


def _features(cache_dir: Path) -> np.ndarray:
    torch.manual_seed(0)
    net = build_encoder("resnet18", stem="small")
    net.fc = torch.nn.Identity()
    return feature_cache.cached_features(net, "a" * 64, _Toy(), "toy", "pool", 16, 0, torch.device("cpu"),
                                         cache_dir=cache_dir)[0]


def _cache_worker(cache: Path, log: Path, start) -> None:
    torch.set_num_threads(1)
    extract = feature_cache.extract_features

    def counted(*args, **kwargs):
        with open(log, "a") as f:
            f.write("x\n")
        return extract(*args, **kwargs)
    feature_cache.extract_features = counted
    start.wait()  # every process asks for the entry at once
    np.save(cache / f"out-{os.getpid()}.npy", _features(cache))


def cache_writer_trial(processes: int, work: Path) -> dict:
    cache, log = work / "cache", work / "extractions.log"
    cache.mkdir()
    ctx = multiprocessing.get_context("spawn")  # a forked child of a process with an OpenMP pool can hang
    start = ctx.Barrier(processes)
    procs = [ctx.Process(target=_cache_worker, args=(cache, log, start)) for _ in range(processes)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    outs = [np.load(p) for p in cache.glob("out-*.npy")]
    entry_ok = np.array_equal(np.load(next(cache.glob("*.npz")))["features"], outs[0]) if outs else False
    same = len(outs) == processes and all(np.array_equal(o, outs[0]) for o in outs)
    extractions = len(log.read_text().splitlines())
    return {"trials": processes, "lost": int(not (same and entry_ok and extractions == 1)),
            "note": f"{processes} processes, {extractions} extraction(s), entry valid: {entry_ok}"}


def damage(path: Path, rng: random.Random) -> str:
    data = bytearray(path.read_bytes())
    kind = rng.choice(["truncate", "flip", "garbage"])
    if kind == "truncate":
        path.write_bytes(bytes(data[: rng.randrange(len(data))]))
    elif kind == "flip":
        i = rng.randrange(len(data))
        data[i:i + 8] = bytes(255 - x for x in data[i:i + 8])
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(rng.randbytes(rng.randint(0, 4096)))
    return kind


def corrupt_cache_trials(trials: int, work: Path, rng: random.Random) -> dict:
    cache = work / "corrupt-cache"
    good = _features(cache)
    entry = next(cache.glob("*.npz"))
    original, lost, kinds = entry.read_bytes(), 0, Counter()
    for _ in range(trials):
        entry.write_bytes(original)
        kinds[damage(entry, rng)] += 1
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            lost += not np.array_equal(_features(cache), good)  # damaged data never served
    return {"trials": trials, "lost": lost, "note": _counts(kinds)}


def corrupt_checkpoint_trials(trials: int, refs: dict, work: Path, rng: random.Random) -> dict:
    """Damage last.pt of a finished run: resuming must read a sound checkpoint (the same state as the file
    held before, or an earlier kept one), never a changed state; evaluating the damaged file must refuse."""
    ref = refs["moco_v2"]["dir"]
    sound = {p.name: torch.load(p, weights_only=False)["state_dict"] for p in ref.glob("*.pt")}
    lost, kinds, outcomes = 0, Counter(), Counter()
    for i in range(trials):
        run = work / f"corrupt-ckpt-{i}"
        shutil.copytree(ref, run)
        kinds[damage(run / "last.pt", rng)] += 1
        try:
            state = engine.read_last_checkpoint(run)["state_dict"]
            used = any(_equal(state, s) for s in sound.values())
            outcomes["resumed from a sound file" if used else "DAMAGED STATE USED"] += 1
            lost += not used
        except UsageError:
            outcomes["refused"] += 1
        shutil.rmtree(run)
    return {"trials": trials, "lost": lost, "note": _counts(kinds) + "; " + _counts(outcomes)}


def corrupt_store_trials(trials: int, work: Path, rng: random.Random) -> dict:
    lost = 0
    for i in range(trials):
        store = work / f"corrupt-store-{i}.jsonl"
        append_rows([_row(0, j) for j in range(20)], store)
        lines = store.read_bytes().splitlines(keepends=True)
        at = rng.randrange(len(lines))
        bad = lines[at][: rng.randrange(1, len(lines[at]) - 1)].rstrip(b"\n") + b"\n"
        store.write_bytes(b"".join(lines[:at] + [bad] + lines[at:]))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rows = read_rows(store)
        named = any(f":{at + 1}: skipped" in str(w.message) for w in caught)
        append_rows([_row(1, 0)], store)
        lost += not (named and len(rows) == 20 and len(read_rows(store)) == 21)
    return {"trials": trials, "lost": lost, "note": "a torn line at a random position: named by line number, "
                                                    "20 of 20 rows loaded, next append kept"}


def corrupt_image_trials(trials: int, work: Path, rng: random.Random) -> dict:
    root = work / "images"
    for split in ("train", "test"):
        for c in range(2):
            (root / split / f"c{c}").mkdir(parents=True)
            for j in range(6):
                image = np.full((32, 32, 3), 40 * c + 5 * j, np.uint8)
                Image.fromarray(image).save(root / split / f"c{c}" / f"{j}.jpg")
    failures = []
    for i in range(trials):
        victim = root / "train" / f"c{rng.randrange(2)}" / f"{rng.randrange(6)}.jpg"
        original = victim.read_bytes()
        victim.write_bytes(original[: rng.randrange(0, len(original) // 2)])
        cmd = [sys.executable, "-m", "pcl_bench", "eval", "knn", "--dataset", "imagefolder", "--data-root",
               str(root), "--checkpoint", "random:resnet18", "--results", str(work / f"img-{i}.jsonl")]
        plain = subprocess.run(cmd, env=ENV, capture_output=True, text=True, check=False)
        skipped = subprocess.run([*cmd, "--skip-corrupt"], env=ENV, capture_output=True, text=True, check=False)
        rows = read_rows(work / f"img-{i}.jsonl")
        ok = (plain.returncode == 2 and str(victim) in plain.stderr and skipped.returncode == 0
              and len(rows) and all(str(victim) in r for r in rows["skipped"]))
        if not ok:
            failures.append(f"{victim.name} cut to {len(victim.read_bytes())} bytes: exit {plain.returncode} "
                            f"({plain.stderr.strip().splitlines()[-1:]}), --skip-corrupt exit {skipped.returncode}")
        victim.write_bytes(original)
    return {"trials": trials, "lost": len(failures), "note": "; ".join(failures) or "a truncated JPEG: exit 2 "
                                                             "naming it; --skip-corrupt records it with the rows"}


WRITERS = {"checkpoint": lambda path: atomic.save_torch({"w": torch.randn(2048)}, path),
           "cache": lambda path: atomic.save_npz(path, features=np.random.rand(512, 8)),
           "store": lambda path: append_rows([_row(0, j) for j in range(40)], path)}


def enospc_trials(trials: int, work: Path, rng: random.Random) -> dict:
    """A write that fails with ENOSPC after a random number of bytes, for each writer of the suite."""
    lost, which = 0, Counter()
    for i in range(trials):
        kind = ["checkpoint", "cache", "store"][i % 3]
        which[kind] += 1
        cut = rng.randint(0, 4096)
        target = work / f"enospc-{i}" / {"checkpoint": "last.pt", "cache": "f.npz", "store": "r.jsonl"}[kind]
        write = functools.partial(WRITERS[kind], target)
        write()
        before = target.read_bytes()
        with _full_disk_after(cut):
            try:
                write()
                raised = False
            except DiskFull:
                raised = True
        leftovers = [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]
        lost += not (raised and target.read_bytes() == before and not leftovers)
    return {"trials": trials, "lost": lost, "note": _counts(which) + "; failing after 0-4096 bytes"}


class _FullFile:
    """A writable file whose writes fail with ENOSPC once ``budget[0]`` bytes are used up."""

    def __init__(self, f, budget: list[int]):
        self._f, self._budget = f, budget

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self._budget[0]:
            self._f.write(data[: self._budget[0]])
            self._budget[0] = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._budget[0] -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@contextlib.contextmanager
def _full_disk_after(n: int):
    """Files opened for writing in the block (``open``, ``os.fdopen``: every write path of the suite) fail
    with ENOSPC after ``n`` bytes in all."""
    budget, real_open, real_fdopen = [n], builtins.open, os.fdopen

    def opened(real):
        def open_(file, mode="r", *args, **kwargs):
            f = real(file, mode, *args, **kwargs)
            return _FullFile(f, budget) if any(m in mode for m in "wax+") else f
        return open_
    builtins.open, os.fdopen = opened(real_open), opened(real_fdopen)
    try:
        yield
    finally:
        builtins.open, os.fdopen = real_open, real_fdopen


def nan_trials(trials: int, work: Path, rng: random.Random) -> dict:
    from pcl_bench.cli import main
    lost = 0
    for i in range(trials):
        poison_at = rng.randrange(1, 21)  # a step of epochs 1-3 (7 steps each)
        forward = engine.METHODS["moco_v2"].forward
        calls = []

        def poisoned(self, views, index, clusters=None, forward=forward, calls=calls, at=poison_at):
            out = forward(self, views, index, clusters)
            calls.append(1)
            if len(calls) >= at:
                out["loss"] = out["loss"] * float("nan")
            return out
        engine.METHODS["moco_v2"].forward = poisoned
        try:
            code = main(pretrain_args(work, f"nan-{i}", "moco_v2"))
        finally:
            engine.METHODS["moco_v2"].forward = forward
        last = work / f"nan-{i}" / "last.pt"
        sound = True
        if last.exists():
            ckpt = torch.load(last, weights_only=False)
            sound = all(torch.isfinite(t).all() for t in ckpt["state_dict"].values() if t.is_floating_point())
            sound &= ckpt["epoch"] * 7 + ckpt["step"] < poison_at
        lost += not (code == 1 and sound)
    return {"trials": trials, "lost": lost, "note": "loss poisoned at a random step: exit 1, last.pt finite "
                                                    "and from before that step"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="every class a few times")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=None, help="comma-separated fault classes to run")
    parser.add_argument("--output", default="benchmarks/results/fault_injection.json",
                        help="where the full run writes its table (--quick writes nothing)")
    args = parser.parse_args()
    n = QUICK if args.quick else FULL
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="pcl-bench-faults-"))
    os.environ["PCL_BENCH_CACHE"] = str(work / "cache-home")  # features of the kNN checks stay in here
    ENV["PCL_BENCH_CACHE"] = os.environ["PCL_BENCH_CACHE"]
    t_start = time.perf_counter()
    print(f"fault injection ({'quick' if args.quick else 'full'}, seed {args.seed}) on {machine()}; "
          f"work folder {work}", flush=True)
    refs: dict = {}

    def references() -> dict:  # the uninterrupted runs, made when a class first needs them
        for setup in SETUPS:
            if setup not in refs:
                seconds = timed_run(pretrain_cmd(work, f"ref-{setup}", setup))
                refs[setup] = {"dir": work / f"ref-{setup}", "seconds": seconds}
                print(f"reference {setup}: {seconds:.1f} s", flush=True)
        return refs
    plan = {
        "sigkill": lambda: signal_trials(signal.SIGKILL, n["sigkill"], references(), work, rng),
        "sigterm": lambda: signal_trials(signal.SIGTERM, n["sigterm"], references(), work, rng),
        "ddp-kill": lambda: ddp_trials(n["ddp-kill"], work, rng),
        "store-writers": lambda: store_writer_trial(n["store-writers"], n["rows"], work),
        "cache-writers": lambda: cache_writer_trial(n["cache-writers"], work),
        "corrupt-cache": lambda: corrupt_cache_trials(n["corrupt"], work, rng),
        "corrupt-checkpoint": lambda: corrupt_checkpoint_trials(n["corrupt"], references(), work, rng),
        "corrupt-store": lambda: corrupt_store_trials(n["corrupt"], work, rng),
        "corrupt-image": lambda: corrupt_image_trials(max(1, n["corrupt"] // 4), work, rng),
        "enospc": lambda: enospc_trials(n["enospc"], work, rng),
        "nan": lambda: nan_trials(n["nan"], work, rng),
    }
    only = args.only.split(",") if args.only else list(plan)
    results = {}
    for name in only:
        t0 = time.perf_counter()
        quiet = io.StringIO()  # progress bars, warnings and epoch lines of in-process calls
        with contextlib.redirect_stderr(quiet), contextlib.redirect_stdout(quiet):
            results[name] = plan[name]()
        print(f"{name}: {results[name]['trials'] - results[name]['lost']} of {results[name]['trials']} survived "
              f"({time.perf_counter() - t0:.0f} s; {results[name]['note']})", flush=True)
    print("\n| fault | trials | survived | lost | details |\n|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['trials']} | {r['trials'] - r['lost']} | {r['lost']} | {r['note']} |")
    lost = sum(r["lost"] for r in results.values())
    seconds = time.perf_counter() - t_start
    print(f"\n{len(results)} fault classes, {sum(r['trials'] for r in results.values())} trials in "
          f"{seconds:.0f} s: " + ("0 lost" if lost == 0 else f"{lost} LOST"))
    if not args.quick:
        atomic.write_json({"seed": args.seed, "seconds": seconds, "machine": machine(), **provenance(),
                           "results": results}, args.output)
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if lost == 0 else 1)


if __name__ == "__main__":
    main()
