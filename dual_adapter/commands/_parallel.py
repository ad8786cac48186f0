"""What ``train-dualreal`` and ``train-lora`` share for multi-process runs (``accelerate launch -m dual_adapter ...``).

:func:`add_parallel_options` adds ``--grad-accum``, ``--sync-every`` and ``--fsdp``; :func:`add_memory_options`
``--fp8-base`` and ``--block-swap``; :func:`parallel_run` starts
the process group (a no-op on one process), points this process at its GPU and holds the run's lock and
resume / refuse checks in rank 0 only (the one writer).
"""
from __future__ import annotations

import contextlib
from pathlib import Path


def add_parallel_options(p, batch_option: str) -> None:
    """``--grad-accum``, ``--sync-every``, ``--fsdp``; ``batch_option`` names the command's batch option in the help."""
    p.add_argument("--grad-accum", type=int, default=1,
                   help=f"run each batch as this many micro-batches with accumulated gradients (1); "
                        f"{batch_option} 3 --grad-accum 3 trains batch 3 within the memory of batch 1")
    p.add_argument("--sync-every", type=int, default=0,
                   help="read the loss back from the GPU every N steps (0 = auto: 10 on CUDA, 1 on CPU)")
    p.add_argument("--fsdp", action="store_true",
                   help="with accelerate launch / torchrun (2+ processes): shard the frozen transformer's weights "
                        "over the processes (PyTorch FSDP2) instead of a whole copy per GPU; the trainable weights "
                        f"stay replicated. {batch_option} x --grad-accum must give every process the same number "
                        "of micro-batches")


def add_memory_options(p) -> None:
    """``--fp8-base`` and ``--block-swap N`` (docs/performance.md, "Memory levers")."""
    p.add_argument("--fp8-base", action="store_true",
                   help="store the frozen base Linear weights in fp8 (e4m3, a scale per row), upcast per layer in "
                        "the forward: those weights take half their bf16 memory (about 1 GB less per 1B parameters); "
                        "the forward differs from bf16 by fp8 rounding of the base weights; the trained file is the "
                        "same kind as without")
    p.add_argument("--block-swap", type=int, default=0, metavar="N",
                   help="keep the frozen weights of the first N transformer blocks on the CPU and copy each to the GPU "
                        "just before it runs, the next one ahead (0 = off): results are bit-identical; saves N - 2 "
                        "blocks of weights with gradient checkpointing on; costs two host-to-device copies of those "
                        "blocks per step, hidden behind compute while a block's compute outlasts its copy")


@contextlib.contextmanager
def parallel_run(args, out: Path, files: dict, what: str):
    """Context for a training command's run; yields ``(rank, world)``.

    Starts the process group when launched by ``accelerate launch`` / ``torchrun`` (:func:`init_distributed`),
    sets ``args.device`` to this process's GPU, and in rank 0 holds ``<out>.lock`` and applies the resume /
    refuse rules (:func:`dual_adapter.training.check_run_files`) over ``files``. Other ranks only read.

    Raises:
        DualAdapterError: ``--fsdp`` on one process; the run rules (another run's files, nothing to resume,
            a second process with the same ``--out``).
    """
    from ..errors import DualAdapterError
    from ..io import run_lock
    from ..training import check_run_files, init_distributed

    rank, world, dev = init_distributed()  # accelerate launch / torchrun: data parallel, one writer (rank 0)
    if getattr(args, "fsdp", False) and world < 2:
        raise DualAdapterError("--fsdp shards the frozen weights over several processes: start the command with "
                               "`accelerate launch --num_processes N -m dual_adapter ...` (N >= 2), or drop --fsdp")
    if world > 1 and dev is not None and str(dev).startswith("cuda"):
        args.device = str(dev)
    with run_lock(out, f"{what} run") if rank == 0 else contextlib.nullcontext():
        if rank == 0:
            check_run_files(out, files, resume=args.resume, resume_hint="--resume", rename_hint="another --out")
        yield rank, world
