"""Time the E-step's k-means backends on one problem: faiss (CPU, or GPU with faiss-gpu) against PyTorch.

Random unit vectors stand in for the momentum features (N x D, L2-normalised like the feature pass); with a
fixed number of Lloyd iterations the time does not depend on the data. Prints one row per (backend, K) with
the seconds and the objective (sum of squared distances), and writes them to a JSON file.

    python benchmarks/kmeans_backends.py                                   # CPU, a small problem
    python benchmarks/kmeans_backends.py --n 30000 --ks 1000,2000,4000 --device cuda
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from pcl_bench.runtime.atomic import write_json
from pcl_bench.runtime.provenance import provenance
from pcl_bench.train.kmeans import faiss_gpu_available, kmeans


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=5000, help="points")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--ks", default="250,500,1000", help="comma-separated K, one k-means each (seed = position)")
    p.add_argument("--niter", type=int, default=20)
    p.add_argument("--nredo", type=int, default=5)
    p.add_argument("--device", default="cpu", help="where the torch backend runs (faiss: a GPU index only "
                                                   "with faiss-gpu)")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default: benchmarks/results/"
                                                          "kmeans_backends_<device>.json)")
    args = p.parse_args()
    x = np.random.default_rng(0).normal(size=(args.n, args.dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ks = [int(k) for k in args.ks.split(",")]
    rows = []
    for backend in ("faiss", "torch"):
        kmeans(x[: 20 * max(ks)], max(ks), 0, 1, 1, backend, args.device)  # warm-up: CUDA context, threads
        for seed, k in enumerate(ks):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            _, dist, _ = kmeans(x, k, seed, args.niter, args.nredo, backend, args.device)
            rows.append({"backend": backend, "k": k, "seconds": time.perf_counter() - t0,
                         "objective": float(dist.sum())})
    total = {b: sum(r["seconds"] for r in rows if r["backend"] == b) for b in ("faiss", "torch")}
    out = args.out or Path(__file__).parent / "results" / f"kmeans_backends_{args.device.split(':')[0]}.json"
    write_json({"settings": {**vars(args), "out": str(out), "faiss_gpu": faiss_gpu_available(),
                             "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else
                             "cpu", "threads": torch.get_num_threads()},
                "rows": rows, "total_s": total, "provenance": provenance()}, out)
    print(f"N={args.n} D={args.dim} niter={args.niter} nredo={args.nredo} device={args.device} "
          f"faiss-gpu={faiss_gpu_available()}")
    print(f"{'backend':8} {'K':>7} {'seconds':>8} {'objective':>12}")
    for r in rows:
        print(f"{r['backend']:8} {r['k']:>7} {r['seconds']:>8.2f} {r['objective']:>12.2f}")
    print(f"all K: faiss {total['faiss']:.2f} s, torch {total['torch']:.2f} s, "
          f"faiss / torch = {total['faiss'] / total['torch']:.2f}")
    print(json.dumps({"wrote": str(out)}))


if __name__ == "__main__":
    main()
