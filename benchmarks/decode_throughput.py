"""JPEG files to training views: PIL in loader processes against ``--decode device``, in one process.

Both paths turn the same JPEG files into two v2 views per image at ``--size`` px, batch by batch, as pretraining
consumes them:

- ``pil``: ``--workers`` loader processes decode each file with PIL and augment it image by image (the default
  pipeline, ``--aug-backend pil``);
- ``device``: the loader processes only read the files' bytes; the training process decodes each batch with
  ``torchvision.io.decode_jpeg`` on ``--device`` and augments it there (``--decode device --aug-backend tensor``).

Images/s are counted over ``--batches`` batches after the first of each path (which starts the processes); the
device path's decoding alone (without the views) is timed too, since on a CPU the batched augmentation of
224 px views, not the decoding, is what limits it.

    python benchmarks/decode_throughput.py --dataset voc07 --data-root ~/data/VOCdevkit --split train
    python benchmarks/decode_throughput.py --dataset imagenet --data-root ~/data/imagenet --device cuda \
        --batch-size 256 --workers 12
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from pcl_bench.data import build_dataset, with_transform
from pcl_bench.data.augment import TwoCropsTransform, pretrain_transform
from pcl_bench.data.batch_augment import BatchAugment
from pcl_bench.data.device_decode import DecodedBatches, FileBytes, collate_bytes
from pcl_bench.runtime.atomic import write_json
from pcl_bench.runtime.device import resolve_device
from pcl_bench.runtime.provenance import machine, provenance


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def images_per_s(batches, make_views, device: torch.device, count: int) -> float:
    """Images/s of ``make_views`` over ``count`` batches of ``batches``, after its first batch."""
    it = iter(batches)
    make_views(next(it))
    sync(device)
    t0, n = time.perf_counter(), 0
    for _ in range(count):
        views = make_views(next(it))
        n += len(views[0])
    sync(device)
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="voc07", help="a dataset of image files (imagefolder, imagenet, voc07)")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=8, help="timed batches per path")
    parser.add_argument("--workers", type=int, default=2, help="loader processes of both paths")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", help="JSON of the figures [default: benchmarks/results/decode_<device>.json]")
    args = parser.parse_args()
    device = resolve_device(args.device)
    ds = build_dataset(args.dataset, args.data_root, args.split, None)
    if len(ds) < (args.batches + 1) * args.batch_size:
        parser.error(f"{len(ds)} images hold fewer than {args.batches + 1} batches of {args.batch_size}")
    common = {"batch_size": args.batch_size, "num_workers": args.workers, "shuffle": True,
              "generator": torch.Generator().manual_seed(0)}

    pil_views = TwoCropsTransform(pretrain_transform("v2", args.size))
    pil_loader = DataLoader(with_transform(ds, pil_views), pin_memory=device.type == "cuda", **common)
    pil = images_per_s(pil_loader, lambda b: [v.to(device, non_blocking=True) for v in b[0]], device, args.batches)

    augment = BatchAugment("v2", args.size)
    files = DecodedBatches(DataLoader(FileBytes(ds), collate_fn=collate_bytes, **common), ds, device)
    on_device = images_per_s(files, lambda b: [augment(b[0]) for _ in range(2)], device, args.batches)
    decode_only = images_per_s(files, lambda b: b[:1], device, args.batches)

    print(f"{args.dataset} {args.split}, {args.size} px, batch {args.batch_size}, {args.workers} loader processes, "
          f"{device} ({machine()})")
    print(f"  PIL in the loader processes   {pil:8.1f} images/s")
    print(f"  --decode device               {on_device:8.1f} images/s  ({on_device / pil:.2f}x)")
    print(f"    its decoding alone          {decode_only:8.1f} images/s")
    out = Path(args.output or Path(__file__).parent / "results" / f"decode_{device.type}.json")
    write_json({"dataset": args.dataset, "split": args.split, "size": args.size, "batch_size": args.batch_size,
                "workers": args.workers, "device": str(device), "machine": machine(), "pil_images_per_s": pil,
                "device_images_per_s": on_device, "decode_only_images_per_s": decode_only, **provenance()}, out)


if __name__ == "__main__":
    main()
