"""Checks the pack against a real ComfyUI's native Wan (``comfy/ldm/wan``), in one process with ComfyUI imported.

Run by tests/frontends/test_comfyui_native_wan.py as ``python tests/frontends/comfy_native_wan_check.py COMFYUI_PATH WORKDIR`` (cwd =
ComfyUI); prints one JSON object (``RESULT {...}``) with what it measured: a tiny diffusers Wan, written with Wan's
native names, loads through core UNETLoader and computes what diffusers computes; one model call with DualReal + a
LoRA applied by the pack's native nodes (block replace hook, core weight patches) equals the pack's own patched Wan
transformer on the same weights; core KSampler runs with both (StageBlender once per model call). Not a pytest
module (ComfyUI's top-level ``nodes`` and the pack's ``nodes`` cannot share one interpreter; see
tests/frontends/comfy_native_check.py).
"""
from __future__ import annotations

import copy
import json
import sys

from comfy_check_setup import start, write_tiny_native_wan  # noqa: E402  (this folder is on sys.path: the script's own)

H = start(sys.argv)
COMFY, WORK, mm, core_nodes, models_dir = H.comfy, H.work, H.mm, H.core_nodes, H.models_dir
nb, nn_nodes = H.bridge, H.native_nodes
import torch  # noqa: E402

from dual_adapter import lora as L  # noqa: E402
from dual_adapter.dualreal import DualRealAdapters, DualRealAdapterSet, DualRealConfig, DualRealPatch  # noqa: E402
from dual_adapter.patches import patched_copy  # noqa: E402


res: dict = {"comfyui": str(COMFY)}

t = write_tiny_native_wan(models_dir / "diffusion_models" / "tiny_wan_native.safetensors")
(m,) = core_nodes.UNETLoader().load_unet("tiny_wan_native.safetensors", "default")
dm = m.model.diffusion_model

g = torch.Generator().manual_seed(1)
x = torch.randn(2, 16, 3, 8, 8, generator=g)  # a CFG batch
ctx = torch.randn(2, 16, 4096, generator=g)
ts = torch.tensor([700.0, 700.0])


def diffusers_out(model):
    with torch.no_grad():
        return model(hidden_states=x, timestep=ts, encoder_hidden_states=ctx, return_dict=False)[0]


def native_out(patcher):
    mm.load_models_gpu([patcher])
    opts = copy.copy(patcher.model_options.get("transformer_options", {}))
    with torch.no_grad():
        return patcher.model.diffusion_model(x, ts, ctx, transformer_options=opts)


base_native = native_out(m)
res["fidelity"] = {"native_class": f"{type(dm).__module__}.{type(dm).__name__}",
                   "max_abs_diff": (base_native - diffusers_out(t)).abs().max().item()}

# ---- DualReal (+ a LoRA) on the core MODEL == the pack's own patched Wan transformer
torch.manual_seed(5)
ad = DualRealAdapters(DualRealConfig.for_transformer(t, groups=2))
for p in ad.parameters():
    p.data.normal_(0, 0.05)
aset = DualRealAdapterSet.from_module(ad, base_fingerprint=None)
ref = torch.randn(1, 1024)
lsd = {}
for i in range(2):
    for mod, (o, n) in (("attn1.to_q", (256, 256)), ("ffn.net.0.proj", (64, 256))):
        lsd[f"transformer.blocks.{i}.{mod}.lora_A.weight"] = torch.randn(4, n, generator=g) * 0.2
        lsd[f"transformer.blocks.{i}.{mod}.lora_B.weight"] = torch.randn(o, 4, generator=g) * 0.2
lf = L.LoraFile.from_state_dict(lsd, {"alpha": 2.0})
(m_lora,) = nn_nodes.ApplyLoRANative().apply(m, lf, strength=0.8)
lora_only = native_out(m_lora)
m_lora.unpatch_model()
want_lora = diffusers_out(patched_copy(t, [L.LoraPatch(lf, 0.8)]))
(m_dr,) = nn_nodes.DualRealApplyNative().apply(m_lora, aset, clip_vision_output=ref)
got = native_out(m_dr)
want = diffusers_out(patched_copy(t, [L.LoraPatch(lf, 0.8), DualRealPatch(aset, ref)]))
m_dr.unpatch_model()
again = native_out(m)
res["patched_call"] = {"lora_vs_pack": (lora_only - want_lora).abs().max().item(),
                       "max_abs_diff_vs_pack": (got - want).abs().max().item(),
                       "max_abs_effect": (got - base_native).abs().max().item(),
                       "base_restored_diff": (again - base_native).abs().max().item(),
                       "input_model_object_patches": len(m.object_patches),
                       "input_model_replace_patches": len(m.model_options.get("transformer_options", {})
                                                          .get("patches_replace", {})),
                       "additional_models": list(m_dr.additional_models)}

# ---- core KSampler with DualReal + LoRA applied; StageBlender once per model call
rep = m_dr.model_options["transformer_options"]["patches_replace"]["dit"][("double_block", 0)]
ctxobj = rep.da.ctx
ctxobj.recorder = []
calls = {"n": 0}
orig = type(dm).forward


def count(self, *a, **k):
    calls["n"] += 1
    return orig(self, *a, **k)


type(dm).forward = count
pos = [[torch.randn(1, 16, 4096, generator=g), {}]]
neg = [[torch.randn(1, 16, 4096, generator=g), {}]]
lat = {"samples": torch.randn(1, 16, 3, 8, 8, generator=g)}
(out,) = core_nodes.common_ksampler(m_dr, 1, 3, 5.0, "euler", "simple", pos, neg, lat, denoise=1.0)
type(dm).forward = orig
res["ksampler"] = {"out_shape": list(out["samples"].shape), "finite": bool(torch.isfinite(out["samples"]).all()),
                   "model_calls": calls["n"], "stageblender_runs": len(ctxobj.recorder)}

# ---- adapters of another size are refused by name
try:
    nn_nodes.DualRealApplyNative().apply(m, DualRealAdapterSet.from_module(
        DualRealAdapters(DualRealConfig(num_blocks=3, dim=256, time_embed_dim=256, groups=1)), base_fingerprint=None))
    res["refusal"] = None
except Exception as e:  # noqa: BLE001
    res["refusal"] = f"{type(e).__name__}: {e}"
print("RESULT " + json.dumps(res))
