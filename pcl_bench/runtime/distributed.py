"""The few collective operations the methods need, working unchanged in one process and under torchrun.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; :func:`init` then joins the process group (nccl on GPU, gloo
on CPU). Without those variables everything runs as a world of one and the collectives are identities.
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def init(device_type: str) -> None:
    """Join the torchrun process group if launched by torchrun."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        # k-means on rank 0 can take long at ImageNet scale while the other ranks wait.
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=2))


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


@torch.no_grad()
def all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (B, ...) from every rank along dim 0, in rank order; no gradient."""
    if not is_dist():
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Like :func:`all_gather` but gradients flow back to every rank's ``x`` (SimCLR's global negatives)."""
    if not is_dist():
        return x
    import torch.distributed.nn.functional as dist_fn
    return torch.cat(dist_fn.all_gather(x.contiguous()))


def broadcast_(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    if is_dist():
        dist.broadcast(x, src)
    return x


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is True on any rank (a stop request that every rank must act on)."""
    if not is_dist():
        return flag
    x = torch.tensor([float(flag)], device=device)
    dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return bool(x.item())


def gather_objects(obj: object) -> list:
    """``obj`` of every rank, in rank order, on every rank (picklable objects, e.g. RNG states)."""
    if not is_dist():
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if is_dist():
        x = x.clone()
        dist.all_reduce(x)
        x /= world_size()
    return x


class ShardSampler(Sampler[int]):
    """Indices rank, rank + W, rank + 2W, ... of 0..n-1: every index exactly once over all ranks.

    Unlike DistributedSampler there is no padding, so gathered features have no duplicated rows (the
    reference pads and then halves rows whose norm exceeds 1.5, which assumes exactly two copies).
    """

    def __init__(self, n: int, rank: int = 0, world: int = 1):
        self.n, self.rank, self.world = n, rank, world

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))
