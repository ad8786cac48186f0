"""How far a DualReal run's weight norm moves with the learning rate: the figures behind the sanity bound
of the training loop (docs/training.md, "Sane checkpoints": a checkpoint's norm must stay within 1000 times
the norm at the start or at the last sane checkpoint).

Tiny CogVideoX, DualReal on random latents (the same run as ``tests/training/test_sane_checkpoints.py``), constant
learning rate, no warm-up, CPU. For each learning rate, prints the norm at the start, after each of the
given steps, and the norm ratio; a run that turns non-finite says at which step.

Usage: ``python benchmarks/weight_norm_growth.py [--lrs 1e-3,1e-1,1e9] [--steps 40]``.
"""
from __future__ import annotations

import argparse
import math

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lrs", default="1e-3,1e-1,1e9")
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(1)
    import dual_adapter.dualreal.trainer as trainer
    from dual_adapter.backbones.cogvideox import build_tiny, encode_prompt
    from dual_adapter.dualreal import DualRealData, DualRealOptions, train_dualreal_on_data
    from dual_adapter.errors import TrainingDiverged
    from dual_adapter.training import SanityCheck, TrainConfig

    tiny = build_tiny("tiny", seed=0)
    g = torch.Generator().manual_seed(0)
    data = DualRealData(torch.randn(2, 1, 4, 8, 12, generator=g), torch.randn(1, 3, 4, 8, 12, generator=g),
                        encode_prompt(tiny, "dog *"), encode_prompt(tiny, "a person is playing guitar"),
                        torch.randn(1, 1024, generator=g), "dog *", "a person is playing guitar", "test")
    loop = trainer.train_loop
    for lr in (float(x) for x in args.lrs.split(",")):
        norms: list[float] = []

        def watched(groups, step_fn, cfg, **kw):
            chk = SanityCheck([p for grp in groups for p in grp["params"]])
            norms.append(chk.norm())
            kw["callback"] = lambda step, total, rec: norms.append(chk.norm())
            return loop(groups, step_fn, cfg, **kw)

        trainer.train_loop = watched
        end = ""
        try:
            train_dualreal_on_data(tiny.transformer, tiny.scheduler_config, data, DualRealOptions(groups=2, motion_batch=1),
                                   TrainConfig(steps=args.steps, lr=lr, warmup_steps=0, lr_schedule="constant",
                                               checkpoint_every=0, gradient_checkpointing=False))
        except TrainingDiverged as e:
            end = f"  (stopped: {str(e).split('.')[0]})"
        finally:
            trainer.train_loop = loop
        ratios = [n / norms[0] for n in norms if math.isfinite(n)]
        print(f"lr {lr:g}: norm {norms[0]:.4g} at start, {norms[-1]:.4g} after {len(norms) - 1} steps; ratio after "
              f"step 1 {ratios[1] if len(ratios) > 1 else float('nan'):.3g}, largest {max(ratios):.3g}{end}")


if __name__ == "__main__":
    main()
