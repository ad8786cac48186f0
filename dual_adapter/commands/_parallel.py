"""What ``train-dualreal`` and ``train-lora`` share for multi-process runs (``accelerate launch -m dual_adapter ...``).

:func:`add_parallel_options` adds ``--grad-accum``, ``--sync-every`` and ``--fsdp``; :func:`add_memory_options`
``--fp8-base`` and ``--block-swap``; :func:`parallel_run` starts
the process group (a no-op on one process), points this process at its GPU and holds the run's lock and
resume / refuse checks in rank 0 only (the one writer).
"""
from __future__ import annotations

import contextlib
import sys
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


def add_run_dir_option(p) -> None:
    """``--run-dir DIR``: the root of the run folders (:class:`dual_adapter.runs.RunFolder`)."""
    p.add_argument("--run-dir", default=None, metavar="DIR",
                   help="root of the run folders: the run writes DIR/<method>/<out name>_NNNNN_/ (config.json; "
                        "checkpoint.safetensors and state.safetensors while it trains, removed when it finishes; "
                        "losses.jsonl, loss.png, previews/), the layout of the ComfyUI training nodes; the final file "
                        "goes to --out. Default: runs/ beside --out. ComfyUI's output/runs lists the run in the Load "
                        "nodes")


def _stem(out: Path) -> str:
    return out.name[: -len(".safetensors")] if out.name.endswith(".safetensors") else out.stem


def _open_run(args, out: Path, method: str, what: str):
    """Rank 0's run folder (under ``<out>.lock``): the newest stopped run of ``--out``'s name with ``--resume``,
    else a new one, refused while ``--out`` exists or the newest run of that name is stopped."""
    from ..runs import RunFolder
    from ..training import check_run_files

    root = Path(args.run_dir) if getattr(args, "run_dir", None) else out.parent / "runs"
    hints = dict(resume_hint="--resume", rename_hint="another --out")
    if args.resume:
        if out.exists():  # a finished run is never continued: refused as "already exists"
            check_run_files(out, {"state": out}, resume=False, **hints)
        run = RunFolder.start(root, method, _stem(out), resume=True, final=out, what="--out", resume_hint="--resume")
    else:
        runs = RunFolder.runs(root, method, _stem(out), final=out)
        last = runs[-1].files() if runs and runs[-1].stopped else {"state": root / method / "-"}
        check_run_files(out, last, resume=False, **hints)  # --out written, or a stopped run to continue: refused
        run = RunFolder.start(root, method, _stem(out), resume=False, final=out, what="--out")
    run.write_config(vars(args), front_end=f"python -m dual_adapter {what}", method=method)
    return run


@contextlib.contextmanager
def run_folder(args, out: Path, method: str, what: str, rank: int = 0, world: int = 1):
    """The run folder of a training command (:class:`dual_adapter.runs.RunFolder`, under ``--run-dir`` or ``runs/``
    beside ``--out``); yields it. Rank 0 holds ``<out>.lock`` for the run and applies the resume / refuse rules
    (:func:`dual_adapter.training.check_run_files`); a run that never trained leaves no folder. In a data-parallel
    run the other ranks wait for rank 0's folder and use it (only rank 0 writes).

    Raises:
        DualAdapterError: ``--out`` exists; the newest run of that name stopped (continue it with ``--resume``, or
            choose another ``--out``); ``--resume`` and no stopped run; a second process with the same ``--out``.
    """
    from ..io import run_lock
    from ..runs import RunFolder

    if rank != 0:
        import torch.distributed as dist

        dist.barrier()  # rank 0 has made or found the folder
        root = Path(args.run_dir) if getattr(args, "run_dir", None) else out.parent / "runs"
        runs = RunFolder.runs(root, method, _stem(out), final=out)
        if args.resume:
            runs = [r for r in runs if r.stopped]
        if not runs:
            raise FileNotFoundError(f"rank {rank}: no run folder of {str(out)!r} under {str(root)!r}")
        yield runs[-1]
        return
    with run_lock(out, f"{what} run"):
        try:
            run = _open_run(args, out, method, what)
        finally:
            if world > 1:
                import torch.distributed as dist

                dist.barrier()
        with run.held():
            yield run


@contextlib.contextmanager
def parallel_run(args, out: Path, method: str, what: str):
    """Context for a training command's run; yields ``(rank, world, run)``.

    Starts the process group when launched by ``accelerate launch`` / ``torchrun`` (:func:`init_distributed`),
    sets ``args.device`` to this process's GPU, and opens the run folder (:func:`run_folder`: rank 0 holds
    ``<out>.lock`` and applies the resume / refuse rules; other ranks only read).

    Raises:
        DualAdapterError: ``--fsdp`` on one process; the run rules (another run's files, nothing to resume,
            a second process with the same ``--out``).
    """
    from ..errors import DualAdapterError
    from ..training import init_distributed

    rank, world, dev = init_distributed()  # accelerate launch / torchrun: data parallel, one writer (rank 0)
    if getattr(args, "fsdp", False) and world < 2:
        raise DualAdapterError("--fsdp shards the frozen weights over several processes: start the command with "
                               "`accelerate launch --num_processes N -m dual_adapter ...` (N >= 2), or drop --fsdp")
    if world > 1 and dev is not None and str(dev).startswith("cuda"):
        args.device = str(dev)
    with run_folder(args, out, method, what, rank, world) as run:
        yield rank, world, run


def _has_stopped_run(args, out: Path, method: str) -> bool:
    from ..runs import RunFolder

    root = Path(args.run_dir) if getattr(args, "run_dir", None) else out.parent / "runs"
    return any(r.stopped for r in RunFolder.runs(root, method, _stem(out), final=out))


def train_runs(args, out: Path, method: str, what: str, train_one) -> list:
    """Run a training command: ``train_one(args, model, out, rank, run)`` inside :func:`parallel_run` once, or, on a
    Wan 2.2 A14B ``--model``, once per expert (``model`` that expert's one-transformer backbone, trained on the
    timesteps it serves; ``out`` :func:`dual_adapter.experts.denoiser_path` ``(--out, expert)``, e.g.
    ``X_high_noise.safetensors``, each with its own run folder). Returns ``train_one``'s results.

    With ``--resume`` an expert whose file is written is kept, one with a stopped run continues it, another starts
    afresh; without, an expert file that exists or a stopped expert run is refused before anything trains.

    Raises:
        DualAdapterError: see :func:`parallel_run`; an expert's file or stopped run without ``--resume``.
    """
    import argparse

    from ..backbones import as_backbone
    from ..errors import DualAdapterError
    from ..experts import denoiser_path, expert_names
    from ._common import load_bundle

    names = expert_names(args.model)
    if not names:
        with parallel_run(args, out, method, what) as (rank, world, run):
            return [train_one(args, load_bundle(args), out, rank, run)]
    outs = {n: denoiser_path(out, n) for n in names}
    if not args.resume:
        taken = [str(p) for p in outs.values() if p.exists()]
        stopped = [str(p) for p in outs.values() if _has_stopped_run(args, p, method)]
        if taken or stopped:
            raise DualAdapterError(f"--out {str(out)!r}: " + (f"{', '.join(taken)} already exist(s); choose another "
                                   f"--out" if taken else f"a stopped run of {', '.join(stopped)} is there; "
                                   f"continue it with --resume or choose another --out"))
    bundle, res = None, []
    for n in names:
        if args.resume and outs[n].exists():
            print(f"{outs[n]}: this expert's run finished before; kept", file=sys.stderr)
            continue
        a = argparse.Namespace(**{**vars(args), "resume": bool(args.resume) and _has_stopped_run(args, outs[n],
                                                                                                     method)})
        with parallel_run(a, outs[n], method, what) as (rank, world, run):
            bundle = bundle if bundle is not None else load_bundle(args)
            print(f"{n} expert -> {outs[n]}", file=sys.stderr)
            res.append(train_one(a, as_backbone(bundle).expert(n), outs[n], rank, run))
    return res
