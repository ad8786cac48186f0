"""``python -m dual_adapter convert-native SRC OUT``: a diffusers CogVideoX transformer -> one native
ComfyUI safetensors (for core UNETLoader), streamed shard by shard (see :mod:`dual_adapter.native`)."""
from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("convert-native", help="convert a diffusers CogVideoX transformer to ComfyUI's native single file",
                       description="Convert the transformer of a diffusers CogVideoX folder (sharded or not) into one "
                                   "safetensors with core ComfyUI's native key names (load it with UNETLoader from "
                                   "models/diffusion_models/). Streamed: RAM stays near the largest tensor.")
    p.add_argument("src", help="diffusers CogVideoX folder (with transformer/) or its transformer/ folder")
    p.add_argument("out", help="output .safetensors (refused if it exists)")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None,
                   help="cast floating tensors (default: keep the stored dtype)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from ..native import convert_diffusers_to_native, native_divergences

    step = {"n": 0}

    def cb(done, total):
        if done * 10 // total > step["n"]:
            step["n"] = done * 10 // total
            print(f"  {done}/{total} tensors", file=sys.stderr)

    out = convert_diffusers_to_native(args.src, args.out, dtype=args.dtype, callback=cb)
    print(f"wrote {out}")
    from ..io import read_safetensors_metadata
    import json

    cfg = read_safetensors_metadata(out).get("config")
    cfg = json.loads(cfg) if isinstance(cfg, str) else (cfg or {})
    for d in native_divergences(cfg):
        print(f"note ({d.severity}): core ComfyUI's port differs from diffusers for this model: {d}")
    return 0
