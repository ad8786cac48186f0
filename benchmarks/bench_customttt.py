"""CustomTTT cost: TTT-merge wall time against the two layer-selective LoRA trainings it merges.

The authors (CustomTTT sup., A6000, AnimateDiff U-Net) report about 3 minutes for the TTT merge against
4 + 4 minutes for training the appearance and motion LoRAs (500 steps each). This script measures the
same three things on CogVideoX with random weights:

  * ``train_appearance``: a LoRA (preset full: q, k, v, out; rank 32) on 2 blocks, trained on one photo
    latent (1 latent frame) -- :func:`dual_adapter.lora.train_lora_on_latents`, precomputed latents;
  * ``train_motion``: the same on 2 other blocks, trained on one clip latent (13 latent frames at 49 frames);
  * ``ttt_merge``: :func:`dual_adapter.customttt.ttt_merge` with its defaults (two teachers, f = 5 of a
    25-step DDIM schedule, CFG 6; 30 student steps, both LoRAs trainable, batch of the 2 references);
  * ``prompt_influence`` (optional): one draw, every block scored, two concepts.

Training steps are timed for ``--train-steps`` steps and extrapolated to ``--authors-steps`` (500); the
TTT merge runs in full. On a CUDA GPU: the real 2B / 5B transformer configurations at 49 x 480 x 720, bf16,
gradient checkpointing; the text encoder is a 1-layer T5 of the right width and the VAE a tiny one (only the
transformer's cost is measured: the teachers and the student never touch the VAE). Without a GPU: a small
configuration on CPU (relative cost only).

Usage: ``python benchmarks/bench_customttt.py [--configs 2b,5b] [--train-steps 10] [--out FILE.json]``.
Writes JSON (default ``benchmarks/results/customttt_<cpu|cuda>.json``) and prints it.
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
from common import REAL_CONFIGS, StepTimer as _Timer, peak_gib, reset_peak as _reset, small_config, sync as _sync, write_result  # noqa: E402

CONFIGS = {**{k: {a: b for a, b in v.items() if a != "size"} for k, v in REAL_CONFIGS.items()},
           "small": {a: b for a, b in small_config(8).items() if a != "size"}}
# blocks of the two LoRAs: the authors' layer choice {2, 6} / {2, 5} where the model has them
BLOCKS = {"appearance": [2, 6], "motion": [2, 5]}


def build_bundle(cfg: dict, device: str, dtype: torch.dtype):
    """A CogVideoXBundle: real-size transformer (random), 1-layer T5 of width text_embed_dim, tiny VAE."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    from dual_adapter.backbones.cogvideox import CogVideoXBundle, DEFAULT_SCHEDULER_CONFIG, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    old = torch.get_default_dtype()
    torch.manual_seed(0)
    try:
        torch.set_default_dtype(dtype)
        with torch.device(device):
            tr = CogVideoXTransformer3DModel(patch_size=2, temporal_compression_ratio=4, **cfg)
    finally:
        torch.set_default_dtype(old)
    D = cfg["text_embed_dim"]
    te = T5EncoderModel(T5Config(vocab_size=len(tok), d_model=D, d_ff=256, d_kv=64, num_layers=1, num_heads=8,
                                 relative_attention_num_buckets=8, dropout_rate=0.0))
    vae = AutoencoderKLCogVideoX(in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
                                 up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8),
                                 latent_channels=16, layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4)
    for m in (tr, te, vae):
        m.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return CogVideoXBundle(tr, vae, te, tok, dict(DEFAULT_SCHEDULER_CONFIG), name="random", device=device, dtype=dtype)


def bench(name: str, device: str, dtype, train_steps: int, authors_steps: int, ttt_steps: int, influence: bool) -> dict:
    from dual_adapter import customttt as C
    from dual_adapter.backbones.cogvideox import encode_prompt
    from dual_adapter.lora import train_lora_on_latents

    cfg = CONFIGS[name]
    t0 = time.perf_counter()
    bundle = build_bundle(cfg, device, dtype)
    build_s = time.perf_counter() - t0
    F, H, W = bundle.default_size
    T, h, w = (F - 1) // 4 + 1, H // 8, W // 8
    n = cfg["num_layers"]
    blocks = {k: [b % n for b in v] for k, v in BLOCKS.items()}
    g = torch.Generator("cpu").manual_seed(0)
    photo = torch.randn(1, 1, 16, h, w, generator=g).to(device, dtype)
    clip = torch.randn(1, T, 16, h, w, generator=g).to(device, dtype)
    row: dict = dict(config=name, frames=F, height=H, width=W, latent=[T, 16, h, w], blocks=n,
                     width_D=cfg["num_attention_heads"] * cfg["attention_head_dim"], dtype=str(dtype),
                     build_s=round(build_s, 1), lora_blocks=blocks)
    loras = {}
    for kind, lat in (("appearance", photo), ("motion", clip)):
        emb = encode_prompt(bundle, "a photo of dog *" if kind == "appearance" else "a car is turning on a road")
        spec = C.selective_spec(kind, blocks[kind], rank=32)
        tc = C.selective_train_config(kind, steps=train_steps, checkpoint_every=0)
        _reset(device)
        timer = _Timer(device)
        lf, res = train_lora_on_latents(bundle.transformer, bundle.scheduler_config, latents=[lat], prompt_embeds=emb,
                                        kinds=["photo" if kind == "appearance" else "clip"], spec=spec, cfg=tc,
                                        callback=timer)
        ts = timer.times[2:] if len(timer.times) > 4 else timer.times
        step = sorted(ts)[len(ts) // 2]
        row[f"train_{kind}"] = dict(steps_measured=len(timer.times), step_s_median=round(step, 4),
                                    measured_s=round(sum(timer.times), 2),
                                    extrapolated_s=round(step * authors_steps, 1), extrapolated_steps=authors_steps,
                                    peak_gib=round(peak_gib(device), 2), optimizer=res.optimizer_name,
                                    lora_params=sum(v.numel() for v in lf.state_dict.values()))
        loras[kind] = lf
        print(json.dumps({kind: row[f"train_{kind}"]}), flush=True)
    _reset(device)
    t0 = time.perf_counter()
    res = C.ttt_merge(bundle, loras["appearance"], loras["motion"], appearance_prompt="a photo of dog *",
                      motion_prompt="a car is turning on a road", prompt="dog * is turning on a road",
                      config=C.TTTConfig(steps=ttt_steps))
    _sync(device)
    wall = time.perf_counter() - t0
    ttt_steps_done = max(1, res.train.steps_done)
    row["ttt_merge"] = dict(total_s=round(wall, 2), teachers_s=round(res.seconds["teachers"], 2),
                            student_s=round(res.seconds["ttt"], 2), steps=res.train.steps_done,
                            student_step_s=round(res.seconds["ttt"] / ttt_steps_done, 4),
                            teacher_calls=2 * 5, peak_gib=round(peak_gib(device), 2), merged_modules=len(res.lora.modules))
    print(json.dumps({"ttt_merge": row["ttt_merge"]}), flush=True)
    trains = row["train_appearance"]["extrapolated_s"] + row["train_motion"]["extrapolated_s"]
    row["ttt_vs_training"] = dict(ttt_s=round(wall, 1), trainings_s=round(trains, 1), ratio=round(wall / trains, 3),
                                  authors_ratio=round(3 / (4 + 4), 3))
    if influence:
        _reset(device)
        t0 = time.perf_counter()
        C.prompt_influence(bundle, {"appearance": "a photo of dog *", "motion": "a car is turning on a road"},
                           timesteps=(500,), seeds=(0,), top_k=2)
        _sync(device)
        row["prompt_influence"] = dict(total_s=round(time.perf_counter() - t0, 2), draws=1, groups=n,
                                       forward_calls=1 + 2 * (1 + n), peak_gib=round(peak_gib(device), 2))
        print(json.dumps({"prompt_influence": row["prompt_influence"]}), flush=True)
    del bundle, loras, res
    _reset(device)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    p.add_argument("--configs", default="2b,5b" if cuda else "small", help=f"comma-separated, from {sorted(CONFIGS)}")
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--dtype", default="bf16" if cuda else "fp32", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--train-steps", type=int, default=10 if cuda else 100,
                   help="LoRA training steps actually timed (then extrapolated)")
    p.add_argument("--authors-steps", type=int, default=500, help="training steps to extrapolate to (authors: 500)")
    p.add_argument("--ttt-steps", type=int, default=30, help="TTT steps (authors: 30)")
    p.add_argument("--no-influence", action="store_true", help="skip the prompt-influence row")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--out", default=None, help="JSON output (default benchmarks/results/customttt_<device>.json)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from dual_adapter.backbones.base import parse_dtype

    dtype = parse_dtype(args.dtype)
    rows = []
    for name in [c.strip() for c in args.configs.split(",") if c.strip()]:
        if name not in CONFIGS:
            p.error(f"unknown config {name!r}; choose from {sorted(CONFIGS)}")
        rows.append(bench(name, args.device, dtype, args.train_steps, args.authors_steps, args.ttt_steps,
                          not args.no_influence))
    write_result("customttt", args.device, "random weights; trainings on precomputed latents (rank 32, full preset, 2 blocks each, AdamW), times "
                "extrapolated from the median step; TTT merge = 2 teachers x 5 DDIM steps with CFG + 30 student steps "
                "(batch 2, both LoRAs trainable), run in full; gradient checkpointing on; bf16 autocast on CUDA. "
                "Authors (A6000, AnimateDiff U-Net): TTT ~3 min vs 4 + 4 min of training (ratio 0.375).", args.out, rows=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
