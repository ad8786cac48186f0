"""Checks the pack against a real ComfyUI's native CogVideoX, in one process with ComfyUI imported.

Run by tests/frontends/test_comfyui_native.py as ``python tests/frontends/comfy_native_check.py COMFYUI_PATH WORKDIR`` (cwd =
ComfyUI); prints one JSON object (``RESULT {...}``) with what it measured. Not a pytest module: ComfyUI's
top-level ``nodes`` module and the pack's ``nodes`` package cannot share one interpreter's name, so the pack
is imported here under ``dual_adapter_pack`` the way ComfyUI imports a custom node.
"""
from __future__ import annotations

import json
import logging
import sys

from comfy_check_setup import start  # noqa: E402  (this folder is on sys.path: the script's own)

H = start(sys.argv)
COMFY, WORK, mm, core_nodes, models_dir = H.comfy, H.work, H.mm, H.core_nodes, H.models_dir
nb, nn_nodes = H.bridge, H.native_nodes
import torch  # noqa: E402

from diffusers import CogVideoXTransformer3DModel  # noqa: E402

from dual_adapter import lora as L  # noqa: E402
from dual_adapter.backbones.cogvideox import transformer_forward  # noqa: E402
from dual_adapter.dualreal import DualRealAdapters, DualRealAdapterSet, DualRealConfig, DualRealPatch  # noqa: E402
from dual_adapter.lora import save_lora_native  # noqa: E402
from dual_adapter.native import convert_diffusers_to_native, native_model_divergences  # noqa: E402
from dual_adapter.patches import patched_copy  # noqa: E402


res: dict = {"comfyui": str(COMFY)}

BASE = dict(num_attention_heads=2, attention_head_dim=64, in_channels=16, out_channels=16, time_embed_dim=32,
            text_embed_dim=32, num_layers=2, patch_size=2, max_text_seq_length=16)
CONFIGS = {
    "1.5": dict(BASE, use_rotary_positional_embeddings=True, patch_size_t=2, sample_height=96, sample_width=170,
                sample_frames=81),
    "1.5-no-patch-bias": dict(BASE, use_rotary_positional_embeddings=True, patch_size_t=2, sample_height=96,
                              sample_width=170, sample_frames=81, patch_bias=False),
    "5B-1.0": dict(BASE, use_rotary_positional_embeddings=True, sample_height=60, sample_width=90),
    "2B": dict(BASE, use_rotary_positional_embeddings=False, sample_height=60, sample_width=90),
}


def build(name, seed=0):
    torch.manual_seed(seed)
    t = CogVideoXTransformer3DModel(**CONFIGS[name]).eval().requires_grad_(False)
    for n_, p in t.named_parameters():  # random everywhere (zero-init layers would hide differences)
        p.data.normal_(0, 0.05)
        if "norm" in n_ and n_.endswith("weight") and p.ndim == 1:  # unit-scale norms: sharp attention, RoPE matters
            p.data.add_(1.0)
    folder = WORK / f"diffusers_{name}" / "transformer"
    t.save_pretrained(folder)
    out = convert_diffusers_to_native(folder.parent, models_dir / "diffusion_models" / f"tiny_{name}.safetensors")
    return t, out


def inputs(name, batch=1):
    g = torch.Generator().manual_seed(1)
    T = 4 if name.startswith("1.5") else 3
    x = torch.randn(batch, 16, T, 8, 12, generator=g)
    ctx = torch.randn(batch, 16, 32, generator=g)
    ts = torch.full((batch,), 500.0)
    return x, ctx, ts


def diffusers_out(t, x, ctx, ts):
    return transformer_forward(t, x.permute(0, 2, 1, 3, 4), ctx, ts).permute(0, 2, 1, 3, 4)


def native_out(patcher, x, ctx, ts):
    mm.load_models_gpu([patcher])
    with torch.no_grad():
        return patcher.model.diffusion_model(x, ts, ctx)


# ---- 1. converter -> core UNETLoader, 2. fidelity native vs diffusers on the same weights
fid = {}
loaded = {}
for name in CONFIGS:
    t, path = build(name)
    (m,) = core_nodes.UNETLoader().load_unet(path.name, "default")
    dm = m.model.diffusion_model
    x, ctx, ts = inputs(name)
    with torch.no_grad():
        d = (native_out(m, x, ctx, ts) - diffusers_out(t, x, ctx, ts)).abs().max().item()
    fid[name] = {"native_class": f"{type(dm).__module__}.{type(dm).__name__}", "max_abs_diff": d,
                 "native_rope": bool(dm.use_rotary_positional_embeddings),
                 "bridge_verdict": [(v.severity, str(v)) for v in native_model_divergences(dm)]}
    loaded[name] = (t, m)
res["fidelity"] = fid

# ---- 3. DualReal (+ a LoRA) on the core MODEL == the pack's own patched transformer (1.5-like)
t, m = loaded["1.5"]
torch.manual_seed(5)
ad = DualRealAdapters(DualRealConfig.for_transformer(t, groups=2))
for p in ad.parameters():
    p.data.normal_(0, 0.05)
aset = DualRealAdapterSet.from_module(ad, base_fingerprint=None)
ref = torch.randn(1, 1024)
g = torch.Generator().manual_seed(7)
lsd = {}
for i in range(2):
    for mod, (o, n) in (("attn1.to_q", (128, 128)), ("ff.net.0.proj", (512, 128))):
        lsd[f"transformer.transformer_blocks.{i}.{mod}.lora_A.weight"] = torch.randn(4, n, generator=g) * 0.2
        lsd[f"transformer.transformer_blocks.{i}.{mod}.lora_B.weight"] = torch.randn(o, 4, generator=g) * 0.2
lf = L.LoraFile.from_state_dict(lsd, {"alpha": 2.0})
x, ctx, ts = inputs("1.5", batch=2)  # the CFG batch
with torch.no_grad():
    base_native = native_out(m, x, ctx, ts)
    (m_lora,) = nn_nodes.ApplyLoRANative().apply(m, lf, strength=0.8)
    (m_dr,) = nn_nodes.DualRealApplyNative().apply(m_lora, aset, clip_vision_output=ref)
    got = native_out(m_dr, x, ctx, ts)
    ref_model = patched_copy(t, [L.LoraPatch(lf, 0.8), DualRealPatch(aset, ref)])
    want = diffusers_out(ref_model, x, ctx, ts)
    m_dr.unpatch_model()
    again = native_out(m, x, ctx, ts)
res["patched_call"] = {"max_abs_diff_vs_pack": (got - want).abs().max().item(),
                       "max_abs_effect": (got - base_native).abs().max().item(),
                       "base_restored_diff": (again - base_native).abs().max().item(),
                       "input_model_object_patches": len(m.object_patches),
                       "additional_models": [k for k in m_dr.additional_models]}

# ---- 4. core KSampler with DualReal + LoRA applied; StageBlender once per model call
calls = {"n": 0, "batches": []}
ctxobj = m_dr.object_patches["diffusion_model.blocks.0"].__dict__["da"].ctx
ctxobj.recorder = []
orig = m_dr.model.diffusion_model.__class__.forward


def count(self, x, *a, **k):
    calls["n"] += 1
    calls["batches"].append(int(x.shape[0]))
    return orig(self, x, *a, **k)


m_dr.model.diffusion_model.__class__.forward = count
pos = [[torch.randn(1, 16, 32, generator=g), {}]]
neg = [[torch.randn(1, 16, 32, generator=g), {}]]
lat = {"samples": torch.randn(1, 16, 4, 8, 12, generator=g)}
(out,) = core_nodes.common_ksampler(m_dr, 1, 3, 6.0, "euler", "simple", pos, neg, lat, denoise=1.0)
m_dr.model.diffusion_model.__class__.forward = orig
res["ksampler"] = {"out_shape": list(out["samples"].shape), "finite": bool(torch.isfinite(out["samples"]).all()),
                   "model_calls": calls["n"], "call_batches": calls["batches"],
                   "stageblender_runs": len(ctxobj.recorder)}

# ---- 5. a LoRA saved with native names loads in core LoraLoaderModelOnly with no "lora key not loaded"
msgs = []


class H(logging.Handler):
    def emit(self, r):
        msgs.append(r.getMessage())


logging.getLogger().addHandler(H())
save_lora_native(models_dir / "loras" / "native_lora.safetensors", lf)
(m_core,) = core_nodes.LoraLoaderModelOnly().load_lora_model_only(m, "native_lora.safetensors", 0.8)
with torch.no_grad():
    a = native_out(m_core, x, ctx, ts)
    m_core.unpatch_model()
    (m_pack,) = nn_nodes.ApplyLoRANative().apply(m, lf, strength=0.8)
    b = native_out(m_pack, x, ctx, ts)
    m_pack.unpatch_model()
    want_l = diffusers_out(patched_copy(t, [L.LoraPatch(lf, 0.8)]), x, ctx, ts)
lsd2 = {k.replace("to_q", "to_v").replace("ff.net.0.proj", "ff.net.2"): v.flip(0) for k, v in lsd.items()
        if "to_q" in k}
lf2 = L.LoraFile.from_state_dict(lsd2)
with torch.no_grad():
    (m_s,) = core_nodes.LoraLoaderModelOnly().load_lora_model_only(m, "native_lora.safetensors", 0.5)
    (m_s2,) = nn_nodes.ApplyLoRANative().apply(m_s, lf2, strength=0.7)
    c = native_out(m_s2, x, ctx, ts)
    m_s2.unpatch_model()
    want_s = diffusers_out(patched_copy(t, [L.LoraPatch(lf, 0.5), L.LoraPatch(lf2, 0.7)]), x, ctx, ts)
res["lora_stack_core_then_pack_vs_pack"] = (c - want_s).abs().max().item()
res["lora"] = {"not_loaded_messages": [s for s in msgs if "lora key not loaded" in s],
               "patches": len(m_core.patches), "core_loader_vs_pack_node": (a - b).abs().max().item(),
               "core_loader_vs_pack_model": (a - want_l).abs().max().item(),
               "pack_reads_native_file": sorted(L.load_lora(models_dir / "loras" / "native_lora.safetensors").modules)
               == sorted(lf.modules)}

# ---- 6. the refusal names the cause (2B-like built by core as RoPE)
try:
    from dual_adapter.backbones.cogvideox import config_fingerprint

    nb.apply_dualreal(loaded["2B"][1], DualRealAdapterSet.from_module(
        DualRealAdapters(DualRealConfig.for_transformer(loaded["2B"][0], groups=2)),
        base_fingerprint=config_fingerprint(loaded["2B"][0])))
    res["refusal_2b"] = None
except Exception as e:  # noqa: BLE001
    res["refusal_2b"] = f"{type(e).__name__}: {e}"
print("RESULT " + json.dumps(res))
