"""benchmarks/scale.py's Wan counting on a small Wan config: FLOPs on meta, fake-tensor memory with bf16 and fp8
frozen weights, the block-swap arithmetic."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scale():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("bench_scale_wan", ROOT / "benchmarks" / "scale.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.pop(0)
    return mod


def _small(scale):
    return dict(model=dict(scale._WAN_COMMON, num_attention_heads=2, attention_head_dim=64, num_layers=4, ffn_dim=256,
                           in_channels=16, out_channels=16, text_dim=64), size=(9, 64, 96), vae=(4, 8), text_tokens=8)


def test_wan_shapes_of_the_released_configs(scale):
    c = scale.WAN_CONFIGS
    assert scale.wan_latent_shape(c["wan2.1-14b"]) == (16, 21, 60, 104)
    assert scale.wan_tokens(c["wan2.1-14b"], 21) == 32760
    assert scale.wan_latent_shape(c["wan2.2-ti2v-5b"]) == (48, 31, 44, 80)
    assert scale.wan_tokens(c["wan2.2-ti2v-5b"], 31) == 27280


def test_wan_counting_small_config(scale):
    """FLOPs: DualReal's stand-in adds FLOPs to sampling, LoRA r64 costs more than TAP; memory: fp8 storage keeps
    the same activations and lowers the peak by the weights it saves (less one layer's upcast copies)."""
    cfg = _small(scale)
    s0, s1 = scale.count_wan_flops(cfg, "sampling_base"), scale.count_wan_flops(cfg, "sampling_dualreal")
    assert s1["flops"] > s0["flops"] > 0
    tap, r64 = scale.count_wan_flops(cfg, "tap_r32"), scale.count_wan_flops(cfg, "lora_r64")
    assert r64["flops"] > tap["flops"] > 2 * s0["flops"] / 2
    b16, f8 = scale.measure_wan_memory(cfg, "tap_r32"), scale.measure_wan_memory(cfg, "tap_r32", fp8=True)
    assert f8["weights_gib"] < 0.75 * b16["weights_gib"]
    assert f8["fwd_kept_gib"] == pytest.approx(b16["fwd_kept_gib"], rel=1e-6)
    saved = b16["weights_gib"] - f8["weights_gib"]
    layer = 2 * 256 * 128 / 2 ** 30  # the largest Linear in bf16: its upcast and the scaled product live at once
    assert saved - 2 * layer - 1e-9 <= b16["peak_gib_adamw"] - f8["peak_gib_adamw"] <= saved + 1e-9
    # block swap: two blocks stay; all four swapped frees two blocks' frozen weights
    sw = scale.with_block_swap(b16, 4, 4)
    assert sw["peak_gib_adamw"] == pytest.approx(b16["peak_gib_adamw"] - 2 * b16["block_frozen_gib"])
    assert scale.swap_needed(b16, 4, 80) == 0
