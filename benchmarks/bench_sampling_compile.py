"""Sampling step time with and without ``torch.compile`` (``sample(compile=True)``), with DA-blocks, on
the real 5B / 2B transformer configurations with random weights (GPU).

For each config: the eager sampling step, then ``compile=True``: the first call (compiles), a second
call with the same patch (must not recompile: its step time is the compiled one). Peak memory is
``torch.cuda.max_memory_allocated``.

Usage (part of benchmarks/gpu_suite.sh):
    python benchmarks/bench_sampling_compile.py --config 5b,2b --steps 3
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
from common import REAL_CONFIGS, build_transformer, peak_gib, reset_peak, write_result  # noqa: E402


def run(name: str, steps: int, device: str = "cuda") -> dict:
    from dual_adapter.backbones.cogvideox import CogVideoXBundle, DEFAULT_SCHEDULER_CONFIG
    from dual_adapter.dualreal import DualRealAdapters, DualRealAdapterSet, DualRealConfig, DualRealPatch
    from dual_adapter.sampling import sample

    cfg = REAL_CONFIGS[name]
    F, H, W = cfg["size"]
    tr = build_transformer(cfg, device, torch.bfloat16)
    vae = SimpleNamespace(config=SimpleNamespace(block_out_channels=(128, 256, 256, 512), temporal_compression_ratio=4,
                                                 latent_channels=16))
    bundle = CogVideoXBundle(tr, vae, None, None, dict(DEFAULT_SCHEDULER_CONFIG), name=name, device=device,
                             dtype=torch.bfloat16)
    mod = DualRealAdapters(DualRealConfig.for_transformer(tr))
    with torch.no_grad():
        for n, p in mod.named_parameters():
            if "up_linear" in n:
                p.normal_(0, 1e-3)
    patch = DualRealPatch(DualRealAdapterSet.from_module(mod), torch.randn(1, 1024))
    emb = torch.randn(1, cfg["max_text_seq_length"], cfg["text_embed_dim"]).to(device, torch.bfloat16)
    out = {"config": name, "steps": steps}

    def timed(label, **kw):
        reset_peak(device)
        times = []
        last = [time.perf_counter()]

        def cb(step, total, info):
            torch.cuda.synchronize()
            now = time.perf_counter()
            times.append(now - last[0])
            last[0] = now

        t0 = time.perf_counter()
        sample(bundle, emb, torch.zeros_like(emb), num_frames=F, height=H, width=W, steps=steps, cfg=6.0, seed=0,
               patches=[patch], callback=cb, **kw)
        torch.cuda.synchronize()
        out[label] = dict(call_s=time.perf_counter() - t0, step_s=sorted(times)[len(times) // 2],
                          first_step_s=times[0], peak_gib=peak_gib(device))
        print(name, label, json.dumps(out[label]), flush=True)

    timed("eager")
    timed("compiled_first_call", compile=True)
    timed("compiled_second_call", compile=True)
    out["compiled_vs_eager_step"] = out["compiled_second_call"]["step_s"] / out["eager"]["step_s"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="5b,2b")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU")
    results = [run(c.strip(), args.steps) for c in args.config.split(",") if c.strip()]
    write_result("sampling_compile", "cuda", "one CFG sampling call (batch 2) with DA-blocks; step_s = median "
                 "step; compiled_second_call must show no compile time", args.out, results=results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
