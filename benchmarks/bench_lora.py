"""Motion-LoRA (TAP) training step time and peak memory, beside the DualReal step, in one run.

On a CUDA GPU: the real CogVideoX-5B and -2B transformer configurations (random weights, bf16) at
49 x 480 x 720 (13 latent frames, 17,550 visual + 226 text tokens), precomputed random latents and
prompt embeddings (no VAE / T5 in memory), gradient checkpointing, bf16 autocast; rows:

  * ``lora-tap-r32``: TAP preset (attn1.to_q, to_k), rank 32 (the authors' setting);
  * ``lora-full-r64``: q, k, v, out at rank 64 (what public CogVideoX LoRA trainers report:
    about 20 GB peak on 5B with checkpointing and precomputed latents);
  * ``dualreal-motion``: a DualReal motion step (batch 3 clips, docs/dualreal.md);
  * ``dualreal-identity``: a DualReal identity step (1 photo = 1 latent frame).

Without a GPU: the same rows on small configurations on CPU (shape checks and relative cost only).

Usage: ``python benchmarks/bench_lora.py [--configs 5b,2b] [--steps 6] [--out FILE.json]``.
Writes JSON (default ``benchmarks/results/lora_<cpu|cuda>.json``) and prints it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import REAL_CONFIGS, StepTimer as _Timer, build_transformer, peak_gib, reset_peak as _reset, small_config, write_result  # noqa: E402

from dual_adapter.backbones.cogvideox import DEFAULT_SCHEDULER_CONFIG  # noqa: E402

CONFIGS = {**REAL_CONFIGS, "small-5b": small_config(4, rope=True), "small-2b": small_config(4)}


def _row(name, timer, steps_warm, device, extra):
    ts = timer.times[steps_warm:] or timer.times
    med = sorted(ts)[len(ts) // 2]
    return dict(run=name, step_s=sum(ts) / len(ts), step_s_median=med, step_s_min=min(ts), steps_timed=len(ts),
                peak_gib=peak_gib(device),
                peak_kind="torch.cuda.max_memory_allocated" if device == "cuda" else "process max RSS", **extra)


def bench_config(name: str, device: str, dtype: torch.dtype, steps: int, warm: int, rows_wanted: list[str]) -> list[dict]:
    from dual_adapter import lora
    from dual_adapter.training import TrainConfig

    cfg = CONFIGS[name]
    F, H, W = cfg["size"]
    T, h, w = (F - 1) // 4 + 1, H // 8, W // 8
    L = cfg.get("max_text_seq_length", 226)
    rows = []
    _reset(device)
    t0 = time.perf_counter()
    tr = build_transformer(cfg, device, dtype)
    weights_gib = sum(p.numel() * p.element_size() for p in tr.parameters()) / 2 ** 30
    build_s = time.perf_counter() - t0
    g = torch.Generator("cpu").manual_seed(0)
    clip = torch.randn(1, T, 16, h, w, generator=g).to(device, dtype)
    emb = torch.randn(1, L, cfg["text_embed_dim"], generator=g).to(device, dtype)
    common = dict(config=name, frames=F, height=H, width=W, latent=[T, 16, h, w],
                  tokens=T * (h // 2) * (w // 2) + L, weights_gib=round(weights_gib, 3), dtype=str(dtype))
    total = steps + warm
    for run, preset, rank in (("lora-tap-r32", "tap", 32), ("lora-full-r64", "full", 64)):
        if run not in rows_wanted:
            continue
        _reset(device)
        timer = _Timer(device)
        spec = lora.LoraSpec.from_preset(preset, rank=rank, alpha=rank, dropout=0.1)
        tc = lora.lora_train_config(steps=total, checkpoint_every=0, gradient_checkpointing=True)
        _, res = lora.train_lora_on_latents(tr, DEFAULT_SCHEDULER_CONFIG, latents=[clip], prompt_embeds=emb, spec=spec,
                                            cfg=tc, callback=timer)
        n_params = sum(v.numel() for v in _.state_dict.values())
        rows.append(_row(run, timer, warm, device, dict(common, preset=preset, rank=rank, lora_params=n_params,
                                                        optimizer=res.optimizer_name, batch=1)))
        print(json.dumps(rows[-1]), flush=True)
    try:
        from dual_adapter.dualreal.trainer import DualRealData, DualRealOptions, train_dualreal_on_data
    except Exception as e:  # the DualReal module is not there (yet)
        rows.append(dict(run="dualreal", config=name, skipped=f"dual_adapter.dualreal not importable: {e}"))
        DualRealData = None
    if DualRealData is not None:
        for run, ratio in (("dualreal-motion", 1.0), ("dualreal-identity", 0.0)):
            if run not in rows_wanted:
                continue
            opts = DualRealOptions(motion_ratio=ratio, groups=min(7, cfg["num_layers"]))  # motion batch 3, identity 1
            data = DualRealData(photo_latents=torch.randn(1, 1, 16, h, w, generator=g).to(device, dtype),
                                clip_latents=torch.randn(opts.motion_batch, T, 16, h, w, generator=g).to(device, dtype),
                                identity_embeds=emb, motion_embeds=emb,
                                clip_references=torch.randn(opts.motion_batch, 1024, generator=g).to(device, dtype))
            _reset(device)
            timer = _Timer(device)
            tc = TrainConfig(steps=total, checkpoint_every=0, warmup_steps=0)
            res = train_dualreal_on_data(tr, DEFAULT_SCHEDULER_CONFIG, data, opts, tc, callback=timer)
            rows.append(_row(run, timer, warm, device, dict(common, batch=opts.motion_batch if ratio else
                                                            opts.identity_batch, optimizer=res.optimizer_name)))
            print(json.dumps(rows[-1]), flush=True)
    for r in rows:
        r.setdefault("build_s", round(build_s, 2))
    del tr, clip, emb
    _reset(device)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    p.add_argument("--configs", default="5b,2b" if cuda else "small-5b,small-2b",
                   help=f"comma-separated, from {sorted(CONFIGS)}")
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--dtype", default="bf16" if cuda else "fp32", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--steps", type=int, default=6 if cuda else 4, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps per row")
    p.add_argument("--rows", default="lora-tap-r32,lora-full-r64,dualreal-motion,dualreal-identity")
    p.add_argument("--out", default=None, help="JSON output (default benchmarks/results/lora_<device>.json)")
    args = p.parse_args(argv)
    from dual_adapter.backbones.base import parse_dtype

    dtype = parse_dtype(args.dtype)
    rows = []
    for name in [c.strip() for c in args.configs.split(",") if c.strip()]:
        if name not in CONFIGS:
            p.error(f"unknown config {name!r}; choose from {sorted(CONFIGS)}")
        rows += bench_config(name, args.device, dtype, args.steps, args.warmup, args.rows.split(","))
    write_result("lora", args.device, "random weights and latents; step = forward + backward + optimiser step, gradient checkpointing on, "
                "bf16 autocast on CUDA; DualReal uses its default optimiser (8-bit AdamW on CUDA with bitsandbytes, "
                "else AdamW). Reference: public CogVideoX-5B LoRA trainers report ~20 GB peak at rank 64 with "
                "checkpointing and precomputed latents (compare lora-full-r64 on 5b).", args.out, rows=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
