"""DualReal speed and memory: one joint training step (each phase) and one sampling step, with and
without DA-blocks, on the real CogVideoX-5B / -2B transformer configurations with random weights.

Rows (per config):
  * ``train-dualreal-motion``   a motion step (1 clip, reference embedding, gradient mask);
  * ``train-dualreal-identity`` an identity step (1 photo = 1 latent frame);
  * ``train-lora-r64``          the baseline: a plain rank-64 LoRA (peft) on attention q, k, v, out, same
                                loop, optimiser, checkpointing and clip (small configs: rank = adapter width);
  * ``sample-base``             one CFG sampling step (batch 2 = [negative; positive]) without adapters;
  * ``sample-dualreal``         the same with DA-blocks + StageBlender and a reference embedding.

Targets (one GPU, 49 x 480 x 720, batch 1, 5B): DualReal training peak <= 24 GiB (gradient checkpointing,
precomputed latents and embeddings, 8-bit AdamW); DualReal step <= 1.10 x the LoRA step; sampling with
DA-blocks <= 1.05 x sampling without. The JSON records each ratio and whether the target is met
(``targets`` is only evaluated for the real configs on CUDA).

On CPU (no GPU) it runs small stand-in configs through the same code paths.

Usage:
    python benchmarks/bench_dualreal.py                       # CPU: small configs
    python benchmarks/bench_dualreal.py --device cuda --config 5b,2b
Writes JSON (default ``benchmarks/results/dualreal_<device>.json``) and prints it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import REAL_CONFIGS, StepTimer as _Timer, build_transformer, peak_gib, reset_peak as _reset, small_config, write_result  # noqa: E402

from dual_adapter.backbones.base import parse_dtype  # noqa: E402
from dual_adapter.backbones.cogvideox import CogVideoXBundle, DEFAULT_SCHEDULER_CONFIG  # noqa: E402

CONFIGS = {**REAL_CONFIGS, "small-5b": small_config(6, rope=True), "small-2b": small_config(6)}
TARGETS = {"train_peak_gib": 24.0, "train_vs_lora": 1.10, "sample_vs_base": 1.05}


def _stats(times, warm):
    ts = times[warm:] or times
    return dict(step_s=sum(ts) / len(ts), step_s_median=sorted(ts)[len(ts) // 2], step_s_min=min(ts),
                steps_timed=len(ts))


class _LoraPatch:
    """Plain rank-r LoRA (peft) on attn1.to_q/to_k/to_v/to_out.0 of every block (the baseline)."""

    def __init__(self, rank):
        self.rank = rank

    def apply(self, transformer):
        from peft import LoraConfig, inject_adapter_in_model

        cfg = LoraConfig(r=self.rank, lora_alpha=self.rank, lora_dropout=0.0,
                         target_modules=["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0"])
        inject_adapter_in_model(cfg, transformer)
        for n, p in transformer.named_parameters():
            p.requires_grad_("lora_" in n)
        for n, m in transformer.named_modules():  # LoRA weights in fp32 like the adapters (bf16 autocast on GPU)
            if "lora_" in n and isinstance(m, torch.nn.Linear):
                m.float()


def _train_lora(tr, clip, emb, tc, device, warm, rank=64):
    from dual_adapter.patches import patched_copy
    from dual_adapter.training import diffusion_loss, make_noise_scheduler, train_loop

    model = patched_copy(tr, [_LoraPatch(rank)])
    model.enable_gradient_checkpointing()
    params = [p for p in model.parameters() if p.requires_grad]
    ns = make_noise_scheduler(DEFAULT_SCHEDULER_CONFIG)
    timer = _Timer(device)
    res = train_loop([{"params": params}], lambda step, g: (diffusion_loss(model, ns, clip, emb, generator=g), {}),
                     tc, device_type=device.split(":")[0], callback=timer)
    return dict(_stats(timer.times, warm), trainable_params=sum(p.numel() for p in params),
                optimizer=res.optimizer_name)


def bench_config(name: str, device: str, dtype: torch.dtype, steps: int, warm: int, sample_steps: int,
                 hidden: int | None = None, motion_batch: int = 1, grad_accum: int = 1) -> dict:
    from dual_adapter.dualreal import (DualRealAdapterSet, DualRealData,
                                       DualRealOptions, DualRealPatch, train_dualreal_on_data)
    from dual_adapter.sampling import sample
    from dual_adapter.training import TrainConfig

    cfg = CONFIGS[name]
    F, H, W = cfg["size"]
    T, h, w = (F - 1) // 4 + 1, H // 8, W // 8
    L = cfg.get("max_text_seq_length", 226)
    _reset(device)
    t0 = time.perf_counter()
    tr = build_transformer(cfg, device, dtype)
    build_s = time.perf_counter() - t0
    weights_gib = sum(p.numel() * p.element_size() for p in tr.parameters()) / 2 ** 30
    g = torch.Generator("cpu").manual_seed(0)
    clip = torch.randn(1, T, 16, h, w, generator=g).to(device, dtype)
    photo = torch.randn(1, 1, 16, h, w, generator=g).to(device, dtype)
    emb = torch.randn(1, L, cfg["text_embed_dim"], generator=g).to(device, dtype)
    ref = torch.randn(1, 1024, generator=g)
    groups = min(7, cfg["num_layers"])
    D = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    if hidden is None:  # 64 on the real models; small stand-ins keep 5B's ratio hidden / width = 64 / 3072
        hidden = 64 if name in ("5b", "2b") else max(2, round(64 * D / 3072))
    out = dict(config=name, frames=F, height=H, width=W, latent=[T, 16, h, w], visual_tokens=T * (h // 2) * (w // 2),
               text_tokens=L, blocks=cfg["num_layers"], width_d=D, adapter_hidden=hidden,
               weights_gib=round(weights_gib, 3), dtype=str(dtype), build_s=round(build_s, 2), rows={})
    tc = TrainConfig(steps=steps + warm, warmup_steps=0, checkpoint_every=0, gradient_checkpointing=True)

    # --- training: DualReal motion / identity, LoRA r64 baseline --------------------------------
    data = DualRealData(photo_latents=photo, clip_latents=clip, identity_embeds=emb, motion_embeds=emb,
                        clip_references=ref.to(device))
    for run, ratio in (("train-dualreal-motion", 1.0), ("train-dualreal-identity", 0.0)):
        _reset(device)
        timer = _Timer(device)
        opts = DualRealOptions(motion_ratio=ratio, groups=groups, motion_batch=motion_batch, identity_batch=1,
                               hidden=hidden, grad_accum=grad_accum)
        res = train_dualreal_on_data(tr, DEFAULT_SCHEDULER_CONFIG, data, opts, tc, callback=timer)
        out["rows"][run] = dict(_stats(timer.times, warm), peak_gib=peak_gib(device), optimizer=res.optimizer_name,
                                trainable_params=res.adapters.num_parameters(),
                                batch=motion_batch if ratio else 1, grad_accum=grad_accum)
        print(name, run, json.dumps(out["rows"][run]), flush=True)
        adapters = res.adapters
    _reset(device)
    lora_rank = 64 if name in ("5b", "2b") else hidden  # same rank / width ratio as the adapters on small configs
    out["rows"]["train-lora-r64"] = dict(_train_lora(tr, clip, emb, tc, device, warm, lora_rank),
                                         peak_gib=peak_gib(device), batch=1, rank=lora_rank)
    print(name, "train-lora-r64", json.dumps(out["rows"]["train-lora-r64"]), flush=True)

    # --- sampling: one CFG step with / without DA-blocks ------------------------------------------
    vae = SimpleNamespace(config=SimpleNamespace(block_out_channels=(128, 256, 256, 512), temporal_compression_ratio=4,
                                                 latent_channels=16))
    bundle = CogVideoXBundle(tr, vae, None, None, dict(DEFAULT_SCHEDULER_CONFIG), name=name, device=device, dtype=dtype)
    # non-zero up-projections so that the adapters do real work (the cost does not depend on the values)
    m = adapters.to_module()
    with torch.no_grad():
        for n_, p in m.named_parameters():
            if "up_linear" in n_:
                p.normal_(0, 1e-3)
    adapters = DualRealAdapterSet.from_module(m, **adapters.meta)
    for run, patches in (("sample-base", []), ("sample-dualreal", [DualRealPatch(adapters, ref)])):
        _reset(device)
        timer = _Timer(device)
        sample(bundle, emb, torch.zeros_like(emb), num_frames=F, height=H, width=W, steps=sample_steps + warm, cfg=6.0,
               seed=0, patches=patches, callback=timer)
        out["rows"][run] = dict(_stats(timer.times, warm), peak_gib=peak_gib(device), batch=2)
        print(name, run, json.dumps(out["rows"][run]), flush=True)

    r = out["rows"]
    mo, idn, lo = r["train-dualreal-motion"], r["train-dualreal-identity"], r["train-lora-r64"]
    out["ratios"] = {
        "train_motion_vs_lora": mo["step_s_median"] / lo["step_s_median"],
        "train_identity_vs_lora_same_clip": idn["step_s_median"] / lo["step_s_median"],
        "sample_dualreal_vs_base": r["sample-dualreal"]["step_s_median"] / r["sample-base"]["step_s_median"],
    }
    if device.startswith("cuda") and name in ("5b", "2b"):
        peak = max(mo["peak_gib"], idn["peak_gib"])
        out["targets"] = {
            "train_peak_gib<=24": peak <= TARGETS["train_peak_gib"],
            "train_motion_vs_lora<=1.10": out["ratios"]["train_motion_vs_lora"] <= TARGETS["train_vs_lora"],
            "sample_vs_base<=1.05": out["ratios"]["sample_dualreal_vs_base"] <= TARGETS["sample_vs_base"],
        }
    del tr, clip, emb, photo, bundle, data
    _reset(device)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--config", default=None, help=f"comma-separated from {sorted(CONFIGS)} "
                   "(default: 5b,2b on CUDA, small-5b,small-2b on CPU)")
    p.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"], help="default bf16 on CUDA, fp32 on CPU")
    p.add_argument("--steps", type=int, default=None, help="timed training steps per row (default 5 CUDA, 3 CPU)")
    p.add_argument("--sample-steps", type=int, default=None, help="timed sampling steps (default 5 CUDA, 3 CPU)")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps per row")
    p.add_argument("--motion-batch", type=int, default=1, help="clips per DualReal motion step (1)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per DualReal step (1)")
    p.add_argument("--hidden", type=int, default=None,
                   help="adapter width (default 64 on 5b/2b; small configs: 64 * width / 3072, LoRA rank alike)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--out", default=None, help="JSON output (default benchmarks/results/dualreal_<device>.json)")
    args = p.parse_args(argv)
    on_cuda = args.device.startswith("cuda")
    if on_cuda and not cuda:
        p.error("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = [c.strip() for c in (args.config or ("5b,2b" if on_cuda else "small-5b,small-2b")).split(",") if c.strip()]
    for c in configs:
        if c not in CONFIGS:
            p.error(f"unknown config {c!r}; choose from {sorted(CONFIGS)}")
    dtype = parse_dtype(args.dtype or ("bf16" if on_cuda else "fp32"))
    steps = args.steps or (5 if on_cuda else 3)
    sample_steps = args.sample_steps or 5
    results = [bench_config(c, args.device, dtype, steps, args.warmup, sample_steps, args.hidden, args.motion_batch,
                            args.grad_accum) for c in configs]
    try:
        import bitsandbytes  # noqa: F401
        bnb = True
    except Exception:
        bnb = False
    path = write_result("dualreal", "cuda" if on_cuda else "cpu", "random weights and latents; training step = forward + backward + optimiser step with gradient "
                "checkpointing (bf16 autocast on CUDA), batch 1, optimiser 'auto' (8-bit AdamW on CUDA when "
                "bitsandbytes is installed); sampling step = one DPM step with CFG (batch 2). peak_gib: "
                "torch.cuda.max_memory_allocated on CUDA, process max RSS on CPU (monotonic, not per row).", args.out, bitsandbytes=bnb,
                        targets=TARGETS, results=results)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
