"""Data-parallel training over processes (torch DistributedDataParallel): the helpers train() calls.

    rank, world = world()                     # (0, 1) in a plain process: every helper is then a no-op
    idx, share = shard(perm[i * bs:(i + 1) * bs], w, rank, world)

cotune.launch starts the processes (torchrun); each calls init(), then the pipeline as usual. What N processes
do with one run, train.batch_size being the GLOBAL batch:
- every rank draws the same permutation per epoch (same seed) and takes rows r::N of each global batch;
- each rank's mean loss is scaled by N x its share of the batch's rows (or of its sample weights), so DDP's mean
  of the N gradients is the one-process gradient of the whole batch, up to float summation order, whatever the
  ragged last batch or the weights (the last batch is dropped when it would leave a rank under 2 rows);
- dropout and augmentation (mixup's lambda included) draw from a per-rank seed derived from (run seed, epoch, rank);
- batch norm: SyncBatchNorm on CUDA (the statistics of the whole batch, as in one process); on CPU (torch has no
  CPU SyncBatchNorm) each rank normalizes by its own rows, and the running statistics are rank 0's (DDP
  broadcasts buffers), so a batch-norm model differs from its one-process run;
- rank 0 alone validates, checkpoints and writes; the others take its decisions (best epoch, stop) each epoch.
"""
from __future__ import annotations

import math
import os

import torch
import torch.distributed as dist

from cotune.errors import ConfigError, invalid


def world() -> tuple[int, int]:
    """(rank, number of processes) of this process's group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process writes the run directory: rank 0, or a plain process."""
    return world()[0] == 0


def init(device: str) -> None:
    """Join the group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, ... in the environment): nccl on CUDA,
    each rank on its own GPU (cuda:LOCAL_RANK, so 'cuda' means it), gloo on CPU."""
    cuda = device.startswith("cuda") or device == "auto" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")


def close() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def devices(device: str) -> tuple[int, str]:
    """How many processes `device` can hold (one per GPU on CUDA, per CPU core otherwise) and what they are."""
    if device.startswith("cuda") or device == "auto" and torch.cuda.is_available():
        return torch.cuda.device_count(), "GPUs"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1, "CPU cores"


def check_nproc(n, device: str, name: str = "--nproc") -> None:
    """A one-line ConfigError unless 1 <= n <= the GPUs (CUDA) or the CPU cores (CPU) here."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(invalid(name, "an integer >= 1 (the training processes)", n, f"pass {name} 1 for one process"))
    have, what = devices(device)
    if n > have:
        raise ConfigError(f"{name} {n} asks for more training processes than the {have} {what} here; "
                          f"pass {name} {have} or fewer.")


def check_batch(bs: int, world: int) -> None:
    """Each of the `world` processes needs at least 2 rows of every global batch of `bs` (batch norm)."""
    if world > 1 and bs < 2 * world:
        raise ConfigError(f"A global batch of {bs} rows (train.batch_size, or the training rows when fewer) leaves "
                          f"some of the {world} training processes under 2 rows per step; set train.batch_size >= "
                          f"{2 * world} or use fewer processes.")


def steps(n: int, bs: int, world: int = 1) -> int:
    """Steps per epoch over n rows in global batches of bs: the ragged last batch is dropped when it would give a
    process fewer than 2 rows (in one process: never a lone 1-sample batch, for batch norm)."""
    return max(1, n // bs if 0 < n % bs < 2 * world else math.ceil(n / bs))


def reseed(base: int, rank: int, world: int) -> None:
    """With several processes, dropout and augmentation draw from the rank's own stream, seeded by (base, rank).
    In one process they go on with the epoch's stream, as always."""
    if world > 1:
        torch.manual_seed((base * 1_000_033 + rank) % 2**63)


def shard(batch: torch.Tensor, w: torch.Tensor | None, rank: int, world: int):
    """(this rank's rows of a global batch of indices, the factor on its mean loss or None in one process). The
    factor is world x the rank's share of the batch's rows (or sample weights): DDP averages the ranks'
    gradients, and the mean of the scaled losses is the mean loss of the whole batch."""
    if world == 1:
        return batch, None
    idx = batch[rank::world]
    return idx, (world * len(idx) / len(batch) if w is None else world * w[idx].sum() / w[batch].sum())


def wrap(net: torch.nn.Module, runtime, find_unused: bool = False) -> torch.nn.Module:
    """The module the training steps call: DDP around `net` with several processes (its batch norms made
    SyncBatchNorm first on CUDA, in place), `net` itself in one. find_unused: parameters may go without
    gradients in a step (train.freeze_epochs)."""
    if world()[1] == 1:
        return net
    if runtime.is_cuda:
        for name, child in list(net.named_children()):
            setattr(net, name, torch.nn.SyncBatchNorm.convert_sync_batchnorm(child))
    from torch.nn.parallel import DistributedDataParallel
    ids = [torch.cuda.current_device()] if runtime.is_cuda else None
    return DistributedDataParallel(net, device_ids=ids, find_unused_parameters=find_unused)


def mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of t over the processes (t itself in one)."""
    n = world()[1]
    if n == 1:
        return t
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / n


def follow(best_epoch: int, stop: bool, device) -> tuple[int, bool]:
    """Rank 0's best epoch and stop decision, on every rank, so that all stop together with the same weights."""
    t = torch.tensor([best_epoch, int(stop)], device=device)
    dist.broadcast(t, src=0)
    return int(t[0]), bool(t[1])
