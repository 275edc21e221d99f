"""Training on several processes (GPUs, machines) with PyTorch's own engine.

Run under ``torchrun``: it sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``, and
`setup` then joins the process group (NCCL with ``cuda:LOCAL_RANK`` on GPUs,
gloo on the CPU). Without those variables nothing here is called and no
collective runs: one process trains exactly as before.

The math is that of one process with the same batch:

- ``bs`` stays the *global* batch. Each epoch's permutation is the same on every
  rank (seeded); global batch ``b`` is split into contiguous shards whose sizes
  differ by at most one (`shard`), so any ``bs`` works. A rank's shard is split
  again into micro-batches (``micro_bs`` is per rank: it is a device's memory).
- Each rank's loss is the mean over its shard; before the gradients are summed
  over ranks they are weighted by the shard's share of the global batch, so the
  sum is the gradient of the global batch's mean loss even for a short last
  batch or a shard that lost an unreadable image (`reduce_gradients`).

Why the gradients are not reduced inside DDP's backward: an out-of-memory error
on one rank in the middle of that backward leaves the other ranks waiting for
buckets that never come (a hang). So every micro-batch runs under
``DistributedDataParallel.no_sync()``; after the last one each rank tells the
others whether it ran out of memory (`agree`: two integers, summed on the host
over gloo, so the host never waits for the GPU); if none did, the gradients are
summed in flat buckets, with the batch's loss riding in the first bucket (no
extra collective), else every rank restores its step snapshot and all retry the
batch with the most cautious of the failed ranks' fallbacks (`agree_fallback`).
The price is one tiny host collective per step and no overlap of the gradient
reduction with the backward. DDP itself still broadcasts rank 0's weights when
it wraps the model, so every rank starts from the same weights.

With ``sync_bn`` the BatchNorm layers communicate inside every forward and
backward: an OOM on one rank would leave the others waiting there, so OOM
recovery is off and an OOM ends the job (torchrun stops the other ranks).

Validation is sharded the same way (no sample is seen twice, no padding): each
rank's evaluator (the task's, `snugfit.tasks.evaluation`) keeps sums that add over
samples, and one host all-reduce of them (`reduce_sums`) gives every rank the
whole set's loss and metrics. That is exact for sums (segmentation's pixel counts)
and for values that are means over samples (classification's loss, accuracy,
error rate, accuracy_multi, f1_samples); a user's metric that is not a mean over
samples becomes the mean of the shards' values weighted by their sizes.

Only rank 0 writes files and prints; `is_main` says which rank this is.
"""

from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger("snugfit")

_BUCKET_BYTES = 25 * 2**20  # DDP's default bucket size


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in a torchrun job."""

    rank: int
    world_size: int
    local_rank: int


def env() -> DistEnv | None:
    """The torchrun environment, or None for a single process (or a world of one)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or "RANK" not in os.environ:
        return None
    rank = int(os.environ["RANK"])
    return DistEnv(rank, world, int(os.environ.get("LOCAL_RANK", rank)))


def active() -> bool:
    """Is this process one of several training together?"""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, or a single process: the one that writes files and prints."""
    return rank() == 0


def device_for(device: torch.device) -> torch.device:
    """``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun (one GPU per process)."""
    e = env()
    if e is not None and device.type == "cuda" and device.index is None:
        return torch.device("cuda", e.local_rank)
    return device


_control: list = []  # the gloo group for host-side agreement (one per process group)


def setup(device: torch.device) -> bool:
    """Join the torchrun job (once per process): NCCL for CUDA, gloo for the CPU.

    Returns whether this process trains with others.
    """
    e = env()
    if e is None:
        return False
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
        log.info(f"rank {e.rank} of {e.world_size} on {device}")
    if not is_main():
        logging.getLogger("snugfit").setLevel(logging.ERROR)  # rank 0 speaks for all
    return active()


def _control_group():
    """Host-side messages go over gloo, so reading them never waits for the GPU."""
    if dist.get_backend() == "gloo":
        return None  # the default group already is
    if not _control or _control[0][0] is not dist.group.WORLD:
        _control[:] = [(dist.group.WORLD, dist.new_group(backend="gloo"))]
    return _control[0][1]


def shard(n: int, rank: int, world: int) -> slice:
    """This rank's contiguous part of ``n`` items; sizes differ by at most one.

    >>> [shard(10, r, 4) for r in range(4)]
    [slice(0, 2, None), slice(2, 5, None), slice(5, 7, None), slice(7, 10, None)]
    """
    return slice(rank * n // world, (rank + 1) * n // world)


def wrap(net: nn.Module, device: torch.device) -> nn.Module:
    """``net`` in DistributedDataParallel (rank 0's weights are broadcast now).

    Made for each fit: DDP records which parameters train when it wraps them.
    Buffers are not broadcast in each forward (that collective could not survive
    an OOM on one rank); `average_buffers` evens them out after each epoch.
    """
    if not any(p.requires_grad for p in net.parameters()):
        return net
    ids = [device.index] if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel
    params = inspect.signature(ddp).parameters
    no_sync_in_forward = (
        {"forward_sync_buffers": False}  # torch >= 2.14 (it still syncs them at init)
        if "forward_sync_buffers" in params
        else {"broadcast_buffers": False}
    )
    return ddp(net, device_ids=ids, **no_sync_in_forward)


def agree(oomed: bool, n: int, stop: bool = False) -> tuple[int, int, int]:
    """After a step's micro-batches: ``(ranks that ran out of memory, global samples,
    ranks asked to stop)``.

    ``stop`` is Ctrl-C: each rank gets the signal at its own moment, so the ranks
    must agree on the step after which they all stop, or those still training
    would wait forever for the ones that left. It rides in the same message.
    """
    t = torch.tensor([int(oomed), n, int(stop)], dtype=torch.int64)
    dist.all_reduce(t, group=_control_group())
    return int(t[0]), int(t[1]), int(t[2])


def barrier() -> None:
    """Wait until every rank gets here (on the CPU control group: no GPU wait)."""
    dist.barrier(group=_control_group())


def from_main(obj):
    """``obj`` as rank 0 has it, on every rank (every rank must call it).

    Pickled over the job's own process group: data the ranks produced, never a file.
    """
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0, group=_control_group())
    return box[0]


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is set on any rank (a collective: every rank must call it)."""
    t = torch.tensor([int(flag)], dtype=torch.int64)
    dist.all_reduce(t, group=_control_group())
    return bool(t[0])


def agree_fallback(mine, message: str | None, key) -> tuple[object | None, str]:
    """The setting every rank takes after an OOM: the most cautious (max of ``key``)
    of the failed ranks' next fallbacks; None if a failed rank had nothing left.

    Returns ``(setting, what happened)``, the second naming the ranks that failed.
    """
    got: list = [None] * world_size()
    dist.all_gather_object(got, (message is not None, mine, message), group=_control_group())
    failed = [(r, m, msg) for r, (oomed, m, msg) in enumerate(got) if oomed]
    what = "; ".join(f"rank {r}: {msg}" for r, _, msg in failed)
    if any(m is None for _, m, _ in failed):
        return None, what
    return max((m for _, m, _ in failed), key=key), what


@torch.no_grad()
def reduce_gradients(params: list[nn.Parameter], weight: float, loss_sum: torch.Tensor) -> float:
    """Sum ``weight * grad`` over ranks, in place, and ``loss_sum`` with them.

    ``weight`` is this rank's share of the global batch (its shard's gradients are
    of its own mean loss), so the result is the gradient of the global mean loss.
    A parameter without a gradient here (an empty shard) adds zeros. The loss
    rides in the first bucket, so it costs no collective of its own.

    Returns the summed ``loss_sum`` (a device tensor).
    """
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    buckets: list[list[torch.Tensor]] = []
    size, dtype = _BUCKET_BYTES, None
    for p in params:
        g = p.grad
        if size + g.numel() * g.element_size() > _BUCKET_BYTES or g.dtype != dtype:
            buckets.append([])
            size, dtype = 0, g.dtype
        buckets[-1].append(g)
        size += g.numel() * g.element_size()
    if not buckets:
        buckets = [[]]
    total = None
    for i, grads in enumerate(buckets):
        parts = [g.reshape(-1) for g in grads]
        if i == 0:
            parts.append(loss_sum.reshape(1).to(grads[0].dtype if grads else torch.float32))
        flat = torch.cat(parts)
        n_grad = flat.numel() - (i == 0)
        flat[:n_grad].mul_(weight)
        dist.all_reduce(flat)
        if i == 0:
            total = flat[-1].float()
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
    return total


def gather_batches(
    outs: list[torch.Tensor | None], targs: list[torch.Tensor | None]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's shards of a sharded pass, put back in one process's order.

    Each global batch was split into contiguous shards, one per rank in rank order
    (`shard`), so batch ``b`` is the concatenation of the ranks' ``b``-th pieces;
    a None piece is an empty shard. Returns CPU tensors, the same on every rank.
    """
    mine = [
        None if o is None else (o.detach().cpu(), t.detach().cpu())
        for o, t in zip(outs, targs, strict=True)
    ]
    got: list = [None] * world_size()
    dist.all_gather_object(got, mine, group=_control_group())
    pieces = [piece for b in range(len(mine)) for rank_batches in got
              if (piece := rank_batches[b]) is not None]  # fmt: skip
    return torch.cat([o for o, _ in pieces]), torch.cat([t for _, t in pieces])


def reduce_sums(values: list[float]) -> list[float]:
    """Sums over all ranks (host values; once an epoch)."""
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, group=_control_group())
    return t.tolist()


@torch.no_grad()
def average_buffers(model: nn.Module) -> None:
    """Average floating buffers (BatchNorm running statistics) over ranks."""
    bufs = [b for b in model.buffers() if b.is_floating_point()]
    if not bufs:
        return
    flat = torch.cat([b.reshape(-1).float() for b in bufs])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for b in bufs:
        b.copy_(flat[offset : offset + b.numel()].view_as(b))
        offset += b.numel()


def convert_sync_bn(model: nn.Module) -> nn.Module:
    """BatchNorm layers (timm's with their activation too) as SyncBatchNorm."""
    from timm.layers import convert_sync_batchnorm

    return convert_sync_batchnorm(model)
