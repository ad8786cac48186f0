"""The one training loop every trainer shares (DualReal, TAP / motion LoRA, CustomTTT).

It owns: the backbone's objective, the optimiser (AdamW, 8-bit when bitsandbytes works on the
device, or Lion for CustomTTT), the learning-rate schedule (cosine with restarts after a warm-up),
gradient clipping, bf16 autocast on GPU, per-step seeding (so a resumed run replays the same
batches), periodic checkpoints through a caller-supplied function, resume, and one callback for
progress, loss and interrupt. Trainers supply only ``step_fn`` (make a batch, return the loss)
and, where a method needs it, ``before_optimizer_step`` (DualReal's gradient mask).

Run lifecycle (the same for every trainer and front end):

* :func:`training_run` holds a lock on the run's output (``<out>.lock``, :func:`dual_adapter.io.run_lock`)
  and applies the resume / refuse rules (:func:`check_run_files`): a run's files are never replaced
  by a new run; ``resume`` needs a state file.
* The state file (:func:`save_train_state`) holds the trainable weights as well as the optimiser
  and schedule, so it alone is a consistent resume point: a kill between writing a trainer's
  weights checkpoint and its state file cannot give a mismatched pair.
* Divergence: every step checks the loss and, after the update, the weights; on a non-finite value
  the run stops with :class:`~dual_adapter.errors.TrainingDiverged` and writes nothing, so the last
  checkpoint on disk (finite weights) is kept. A checkpoint is also written only when it is *sane*
  (:class:`SanityCheck`: loss and weight norm within bounds of the run so far); an insane one stops the
  run the same way, so that the kept checkpoint is one a resume with a lower learning rate recovers from.
* A full disk (:class:`~dual_adapter.errors.DiskFull`) during a periodic checkpoint is reported and the
  run goes on (the previous checkpoint stays whole); at the end of the run it is reported and the
  trained weights are still returned, so the caller can write (smaller) output or keep them in memory.
* SIGTERM is handled like Ctrl-C (SIGINT): the checkpoint is written, then the run stops with
  :class:`~dual_adapter.errors.InterruptedByUser` (main thread only; see :func:`sigterm_as_interrupt`).
"""
from __future__ import annotations

from .config import TrainConfig, TrainResult
from .distributed import (all_reduce_grads, check_micro_batches, dist_rank_world, init_distributed, micro_batches,
                          shard_frozen_weights)
from .loop import SanityCheck, train_loop
from .loop import StepFn, _all_finite, autocast_context  # noqa: F401 (importable from dual_adapter.training)
from .objective import batch_diffusion_loss, diffusion_loss, make_noise_scheduler, step_generator
from .optim import make_lr_schedule, make_optimizer
from .state import (check_run_files, load_train_state, loss_summary, save_train_state, sigterm_as_interrupt,
                    training_run, write_loss_log)

__all__ = ["TrainConfig", "TrainResult", "diffusion_loss", "make_noise_scheduler", "make_optimizer",
           "make_lr_schedule", "train_loop", "save_train_state", "load_train_state", "step_generator",
           "write_loss_log", "loss_summary", "check_run_files", "training_run", "sigterm_as_interrupt",
           "init_distributed", "dist_rank_world", "micro_batches", "check_micro_batches", "batch_diffusion_loss",
           "shard_frozen_weights", "all_reduce_grads", "SanityCheck"]

