"""The TTT merge of CustomTTT's AnimateDiff recipe on the tiny AnimateDiff: its per-step losses and the merged LoRA's
fingerprint (docs/results/customttt_animatediff.md).

Inputs: the recipe's appearance LoRA (layers 2, 6) and motion LoRA (layers 2, 5), rank 32, with random weights
(N(0, 0.05^2), seeds 1 and 2), so that the merge starts away from zero; 4 TTT steps of AdamW at lr 1e-4, the
recipe's other settings (teachers 5 of 25 DDIM steps, CFG 9, seed 0). CPU, one thread.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/customttt_unet_merge.py``.
"""
from __future__ import annotations

import hashlib
import json

import torch

from dual_adapter import customttt_unet as CT
from dual_adapter.backbones import load_backbone


def main() -> None:
    torch.set_num_threads(1)
    bb = load_backbone("tiny-animatediff")
    f0, h, w = bb.default_size
    cfg = CT.CustomTTTUNetConfig(appearance_steps=3, motion_steps=3, ttt_steps=4, optimizer="adamw", ttt_lr=1e-4,
                                 num_frames=f0, height=h, width=w, seed=0)
    g = torch.Generator().manual_seed(0)
    photos = [torch.rand(h, w, 3, generator=g) for _ in range(2)]
    clip = torch.rand(f0, h, w, 3, generator=g)
    a, _ = CT.train_appearance_lora(bb, photos, "a photo of a sks dog", cfg)
    m, _ = CT.train_motion_lora(bb, [clip], "a person is playing guitar", cfg)
    for lf, seed in ((a, 1), (m, 2)):  # random weights: every module of the recipe, away from zero
        gg = torch.Generator().manual_seed(seed)
        for k in lf.state_dict:
            lf.state_dict[k] = torch.randn(lf.state_dict[k].shape, generator=gg) * 0.05
    merged, losses, _ = CT.ttt_merge(bb, a, m, appearance_prompt="a photo of a sks dog",
                                     motion_prompt="a person is playing guitar", prompt="a sks dog is playing guitar",
                                     config=cfg)
    for r in losses:
        print(json.dumps({k: round(r[k], 4) for k in ("step", "loss", "loss_appearance", "loss_motion")}))
    digest = hashlib.sha256()
    for k in sorted(merged.state_dict):
        digest.update(k.encode())
        digest.update(merged.state_dict[k].float().numpy().tobytes())
    print(f"merged LoRA: {len(merged.modules)} modules, tensors sha256 {digest.hexdigest()}")


if __name__ == "__main__":
    main()
