"""What the benchmarks share: the released CogVideoX transformer configurations, building a
random-weight transformer of a configuration, timing steps and reading peak memory."""
from __future__ import annotations

import gc
import resource
import time

import torch

# transformer configurations of the released models (diffusers' transformer/config.json) and their
# training video size (frames, height, width)
REAL_CONFIGS = {
    "5b": dict(num_attention_heads=48, attention_head_dim=64, num_layers=42, time_embed_dim=512, text_embed_dim=4096,
               in_channels=16, out_channels=16, sample_frames=49, sample_height=60, sample_width=90,
               use_rotary_positional_embeddings=True, max_text_seq_length=226, size=(49, 480, 720)),
    "2b": dict(num_attention_heads=30, attention_head_dim=64, num_layers=30, time_embed_dim=512, text_embed_dim=4096,
               in_channels=16, out_channels=16, sample_frames=49, sample_height=60, sample_width=90,
               use_rotary_positional_embeddings=False, max_text_seq_length=226, size=(49, 480, 720)),
}


def small_config(num_layers: int = 4, rope: bool = False, **over) -> dict:
    """A CPU stand-in: the same code paths as the real configs at a laptop-core size (9 x 128 x 192)."""
    cfg = dict(num_attention_heads=4, attention_head_dim=32, num_layers=num_layers, time_embed_dim=64,
               text_embed_dim=64, in_channels=16, out_channels=16, sample_frames=9, sample_height=16, sample_width=24,
               use_rotary_positional_embeddings=rope, max_text_seq_length=32, size=(9, 128, 192))
    cfg.update(over)
    return cfg


def build_transformer(cfg: dict, device: str, dtype: torch.dtype):
    """A seeded random-weight CogVideoXTransformer3DModel of ``cfg`` (``size`` ignored), frozen, built on ``device``."""
    from diffusers import CogVideoXTransformer3DModel

    kw = {k: v for k, v in cfg.items() if k != "size"}
    old = torch.get_default_dtype()
    torch.manual_seed(0)
    try:
        torch.set_default_dtype(dtype if dtype.is_floating_point else torch.float32)
        with torch.device(device):
            t = CogVideoXTransformer3DModel(**kw)
    finally:
        torch.set_default_dtype(old)
    t = t.to(device=device, dtype=dtype).eval()
    t.requires_grad_(False)
    return t


def sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device) -> None:
    gc.collect()
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device) -> float:
    """Peak memory in GiB: torch.cuda.max_memory_allocated on CUDA, else the process's max RSS (monotonic)."""
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


class StepTimer:
    """A train_loop / sampler callback recording the wall time of every step."""

    def __init__(self, device):
        self.device, self.t, self.times = device, time.perf_counter(), []

    def __call__(self, step, total, info):
        sync(self.device)
        now = time.perf_counter()
        self.times.append(now - self.t)
        self.t = now


def write_result(benchmark: str, device: str, note: str, out: str | None, **fields):
    """Write a benchmark's JSON (machine, torch, threads, note, and ``fields``) to ``out`` or
    ``benchmarks/results/<benchmark>_<cpu|cuda>.json``; returns the path."""
    import json
    import platform
    from pathlib import Path

    on_cuda = str(device).startswith("cuda")
    doc = {"benchmark": f"bench_{benchmark}",
           "device": torch.cuda.get_device_name(0) if on_cuda else (platform.processor() or "cpu"),
           "torch": torch.__version__, "threads": torch.get_num_threads(), "note": note, **fields}
    path = Path(out) if out else Path(__file__).resolve().parent / "results" / f"{benchmark}_{'cuda' if on_cuda else 'cpu'}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {path}")
    return path
