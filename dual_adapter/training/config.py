"""The shared loop's settings (:class:`TrainConfig`, with their checks) and what a run returns
(:class:`TrainResult`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import DualAdapterError
from ..limits import MAX_TRAIN_STEPS


@dataclass
class TrainConfig:
    """Hyper-parameters of the shared loop. Defaults are DualReal's (docs/dualreal.md).

    Attributes:
        steps: optimiser steps. lr: peak learning rate.
        betas, weight_decay, eps: optimiser settings (AdamW; Lion uses betas and weight_decay).
        optimizer: ``"auto"`` (8-bit AdamW when bitsandbytes runs on the device, else AdamW),
            ``"adamw"``, ``"adamw8bit"``, ``"lion"`` (needs the ``lion-pytorch`` package).
        lr_schedule: ``"cosine_with_restarts"``, ``"cosine"`` or ``"constant"`` (all after
            ``warmup_steps`` of linear warm-up). num_cycles: restarts of the cosine schedule.
        grad_clip: max global grad norm (0 = off).
        mixed_precision: ``"auto"`` (bf16 autocast on CUDA, fp32 on CPU), ``"bf16"``, ``"fp32"``.
        gradient_checkpointing: recompute block activations in backward (less memory).
        seed: seeds every step's randomness (step ``k`` uses ``seed`` and ``k``).
        checkpoint_every: call the checkpoint function every N steps (0 = only at the end / on stop).
        sync_every: read the loss back from the accelerator every N steps (0 = auto: 10 on CUDA, 1
            elsewhere), so that steps do not wait for the GPU; the callback then receives the records
            of those steps together, and a non-finite loss is detected at the read-back (the run stops
            without writing a checkpoint of the diverged weights; the last periodic one is kept).
        fsdp: in a multi-process run (``accelerate launch`` / ``torchrun``), shard the frozen transformer's
            weights over the processes with FSDP (:func:`shard_frozen_weights`) instead of keeping a whole
            copy in each; the trainable weights stay replicated (plain data parallel). Needs 2+ processes
            and a batch every process gets an equal share of (:func:`check_micro_batches`).
        fsdp_release_loaded: with ``fsdp``, free the loaded transformer's own full weights once the trainer's
            copy is sharded, so that the per-process training peak holds only the shards (the command-line
            trainers set it: their process ends after training). The loaded model is unusable afterwards;
            library callers that keep the model (ComfyUI) leave it False. It also frees the loaded weights that
            ``fp8_base`` replaced.
        fp8_base: store the frozen base Linear weights in fp8 (e4m3, a scale per row) in the trainer's copy,
            upcast per layer in the forward (:func:`dual_adapter.memory.store_fp8`): the frozen Linears take half
            their bf16 memory; the forward differs from bf16 by fp8 rounding of the weights (docs/performance.md).
        block_swap: keep the frozen weights of the first N transformer blocks on the CPU and copy each in just
            before it runs, the next one ahead on a side stream (:class:`dual_adapter.memory.BlockSwap`; 0 = off):
            bit-identical results; saves memory with ``gradient_checkpointing`` on; costs host-to-device copies
            of those blocks twice per step (forward and recompute).
    """

    steps: int = 1000
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 1e-4
    eps: float = 1e-8
    optimizer: str = "auto"
    lr_schedule: str = "cosine_with_restarts"
    warmup_steps: int = 200
    num_cycles: int = 1
    grad_clip: float = 1.0
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = True
    seed: int = 0
    checkpoint_every: int = 100
    sync_every: int = 0
    fsdp: bool = False
    fsdp_release_loaded: bool = False
    fp8_base: bool = False
    block_swap: int = 0

    def validate(self, min_steps: int = 0) -> None:
        """Raise :class:`DualAdapterError` naming the first invalid field.

        ``min_steps``: trainers whose result would be untrained with 0 steps (DualReal, LoRA) pass 1.
        """
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < min_steps:
            what = "nothing would be trained" if min_steps >= 1 and isinstance(self.steps, int) and \
                not isinstance(self.steps, bool) and self.steps >= 0 else "not a step count"
            raise DualAdapterError(f"steps={self.steps!r}: must be an integer >= {min_steps} ({what})")
        for k in ("steps", "warmup_steps"):  # the bound shared with the nodes' widgets (docs/limits.md)
            if isinstance(getattr(self, k), int) and getattr(self, k) > MAX_TRAIN_STEPS:
                raise DualAdapterError(f"{k}={getattr(self, k)}: at most {MAX_TRAIN_STEPS} (see docs/limits.md)")
        if not isinstance(self.lr, (int, float)) or isinstance(self.lr, bool) or not math.isfinite(self.lr) \
                or not self.lr > 0:
            raise DualAdapterError(f"lr={self.lr!r}: the learning rate must be a finite number > 0 (e.g. 1e-3)")
        for k in ("checkpoint_every", "warmup_steps", "num_cycles"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if k == "num_cycles" else 0):
                raise DualAdapterError(f"{k}={v!r}: must be an integer >= {1 if k == 'num_cycles' else 0}"
                                       + (" (0 = only at the end and when the run stops)"
                                          if k == "checkpoint_every" else ""))
        for k in ("grad_clip", "weight_decay", "eps"):
            v = getattr(self, k)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise DualAdapterError(f"{k}={v!r}: must be a finite number >= 0")
        if self.optimizer not in ("auto", "adamw", "adamw8bit", "lion"):
            raise DualAdapterError(f"optimizer={self.optimizer!r}: expected auto, adamw, adamw8bit or lion")
        if self.lr_schedule not in ("cosine_with_restarts", "cosine", "constant"):
            raise DualAdapterError(f"lr_schedule={self.lr_schedule!r}: expected cosine_with_restarts, cosine or constant")
        if isinstance(self.sync_every, bool) or not isinstance(self.sync_every, int) or self.sync_every < 0:
            raise DualAdapterError(f"sync_every={self.sync_every!r}: must be an integer >= 0")
        if isinstance(self.block_swap, bool) or not isinstance(self.block_swap, int) or self.block_swap < 0:
            raise DualAdapterError(f"block_swap={self.block_swap!r}: must be an integer >= 0 (transformer blocks "
                                   f"kept on the CPU; 0 = off)")
        if self.block_swap and self.fsdp:
            raise DualAdapterError("block_swap with fsdp: FSDP already keeps only a share of each block per "
                                   "process; use one of them")
        for k in ("fsdp", "fsdp_release_loaded", "fp8_base"):
            if not isinstance(getattr(self, k), bool):
                raise DualAdapterError(f"{k}={getattr(self, k)!r}: must be True or False")
        if self.mixed_precision not in ("auto", "bf16", "fp32"):
            raise DualAdapterError(f"mixed_precision={self.mixed_precision!r}: expected auto, bf16 or fp32")


@dataclass
class TrainResult:
    """What :func:`train_loop` returns: per-step records and whether it ran to the end."""

    losses: list[dict] = field(default_factory=list)
    completed: bool = True
    steps_done: int = 0
    seconds: float = 0.0
    optimizer_name: str = ""
    checkpoint_error: str = ""  # set when the last checkpoint could not be written (a full disk)
    preview_seconds: float = 0.0  # time spent on validation previews (not in ``seconds``)
