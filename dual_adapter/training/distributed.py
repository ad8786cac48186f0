"""Multi-process training (``accelerate launch`` / ``torchrun``): the process group, each process's share of a
batch (:func:`micro_batches`), FSDP sharding of the frozen weights and the all-reduce of the trainable gradients.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch

from ..errors import DualAdapterError


def init_distributed() -> tuple[int, int, Any]:
    """``(rank, world_size, device)``: starts the process group through accelerate when this process was
    launched by ``accelerate launch`` / ``torchrun`` (``WORLD_SIZE`` > 1; NCCL on GPUs, gloo on CPU), else
    ``(0, 1, None)``."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, None
    from accelerate import PartialState

    st = PartialState()  # starts the process group from the launcher's environment
    rank, world = dist_rank_world()  # (accelerate's own counters read 0 / 1 on CPU processes)
    return rank, world, st.device


def dist_rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the running process group, ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def micro_batches(batch: int, grad_accum: int = 1) -> list[torch.Tensor]:
    """This process's micro-batches of a global batch of ``batch`` samples: index tensors (``[b_i]``, int64).

    The batch is cut into ``min(batch, grad_accum * world_size)`` near-equal parts, dealt round-robin to
    the processes of the running group (all parts in one process). A process may get none (batch 1 on 2
    processes): its gradients are then zero for that step (:func:`all_reduce_grads` fills them in)."""
    rank, world = dist_rank_world()
    n = min(int(batch), max(int(grad_accum), 1) * world)
    return list(torch.arange(int(batch)).tensor_split(n))[rank::world]


def check_micro_batches(batch: int, grad_accum: int, what: str) -> None:
    """With sharded weights (``TrainConfig.fsdp``) every process must run the same number of forward passes
    (each one gathers the shards from all processes); raise :class:`DualAdapterError` naming ``what`` (the
    batch option, e.g. ``"motion_batch"``) when ``batch`` with ``grad_accum`` would leave them unequal."""
    world = dist_rank_world()[1]
    n = min(int(batch), max(int(grad_accum), 1) * world)
    if n % world:
        raise DualAdapterError(
            f"{what}={batch} with grad_accum={grad_accum} on {world} processes gives {n} micro-batches, which "
            f"cannot be shared equally; FSDP needs every process to run the same number of forward passes: "
            f"use a {what} that is a multiple of {world}, or at least {world * max(int(grad_accum), 1)} "
            f"(processes x grad_accum)")


def shard_frozen_weights(model: torch.nn.Module, trainable: Iterable[torch.Tensor], device=None,
                         release_loaded: bool = False) -> torch.nn.Module:
    """FSDP (``TrainConfig.fsdp``): shard ``model``'s frozen weights over the running process group with
    PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``), one unit per transformer block plus the root.

    Each process keeps ``1/N`` of the frozen weights and gathers a block's weights just before it runs
    (again in backward), so the frozen transformer (10.4 GiB in bf16 at 5B) no longer sits whole on every
    GPU. The ``trainable`` parameters (adapters, LoRA) are left out of the sharding: they stay whole in
    every process and their gradients are summed by :func:`train_loop` as in plain data parallel, so
    checkpoints, resume and the gradient mask work unchanged. ``model`` must be the trainer's own copy
    (its modules are changed in place; the weights it shares with the loaded model are replaced by shards
    in the copy only: the loaded model keeps its full weights unless ``release_loaded``, which then frees
    their storage (the shards are copies), leaving the loaded model unusable: for a process that ends
    after training). Works on CPU (gloo) and CUDA (NCCL).

    Raises:
        DualAdapterError: no process group (FSDP needs ``accelerate launch`` / ``torchrun`` with 2 or more
            processes), or a model without ``transformer_blocks``.
    """
    rank, world = dist_rank_world()
    if world < 2:
        raise DualAdapterError("FSDP (--fsdp / TrainConfig.fsdp) shards the weights over several processes: start "
                               "the run with `accelerate launch --num_processes N -m dual_adapter ...` (N >= 2) or "
                               "torchrun, or train without --fsdp on one process")
    blocks = getattr(model, "transformer_blocks", None)
    if blocks is None:
        raise DualAdapterError(f"FSDP: {type(model).__name__} has no transformer_blocks to shard")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dev = torch.device(device) if device is not None else next(model.parameters()).device
    mesh = init_device_mesh(dev.type, (world,))
    keep = {p for p in trainable}
    loaded = [p for p in model.parameters() if p not in keep]
    for blk in blocks:
        fully_shard(blk, mesh=mesh, ignored_params={p for p in blk.parameters() if p in keep})
    fully_shard(model, mesh=mesh, ignored_params={p for p in model.parameters() if p in keep})
    if release_loaded:
        with torch.no_grad():
            for p in loaded:  # the copy now holds its shards (copies); only the loaded model referenced these
                p.data = torch.empty(0, dtype=p.dtype, device=p.device)
    return model


def all_reduce_grads(params: Sequence[torch.Tensor]) -> None:
    """Sum the gradients over the process group (each process's loss is its share of the global batch).
    Parameters without a gradient in every process keep ``grad = None`` (AdamW then skips them)."""
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    req = [p for p in params if p.requires_grad]
    if not req:
        return
    has = torch.tensor([float(p.grad is not None) for p in req], device=req[0].device)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    sel = [p for p, h in zip(req, has.tolist()) if h]
    for p in sel:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not sel:
        return
    flat = _flatten_dense_tensors([p.grad for p in sel])
    dist.all_reduce(flat)
    for p, g in zip(sel, _unflatten_dense_tensors(flat, [p.grad for p in sel])):
        p.grad.copy_(g)
