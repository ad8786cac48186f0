"""A real ComfyUI host for the shipped native Wan workflow on tiny random weights (used by
tests/frontends/test_comfyui_native_wan.py; not a pytest module).

``python comfy_wan_workflow_host.py prepare COMFYUI_PATH BASE``: writes, under the ``--base-directory`` BASE, tiny files
with the names the shipped workflow picks (``workflows/native/api/wan_dualreal_lora_ksampler.json``): a native Wan 2.1
transformer (models/diffusion_models), a UMT5 text encoder with its sentencepiece tokenizer (models/text_encoders), a
Wan 2.1 VAE (models/vae), a ViT-H-layout CLIP vision (models/clip_vision), DualReal adapters and a LoRA for that
transformer (output/dualreal, output/loras, as the pack's Save nodes write them) and the reference photo (input).

``python comfy_wan_workflow_host.py serve COMFYUI_PATH MAIN_ARGS...``: runs ComfyUI's ``main.py`` with MAIN_ARGS, core
made to build two models at a tiny size, which is all this harness changes in the host: core's CLIPLoader type ``wan``
builds UMT5-XXL from its own config whatever the file holds (5.7 B parameters, more than a CPU test holds), and core's
CLIP vision loader builds ViT-H (632 M) from its own config; here both configs are made tiny (the file format, names
and loaders are core's). The transformer and the VAE are sized by core from the files as for real weights.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import json
import os
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WORKFLOW = ROOT / "workflows" / "native" / "api" / "wan_dualreal_lora_ksampler.json"

#: core UMT5-XXL config keys replaced (the width 4096 stays: core's Wan reads 4096-wide text)
TINY_UMT5 = {"d_ff": 32, "d_kv": 8, "num_heads": 2, "num_layers": 1, "vocab_size": 96}
#: core's ViT-H config keys replaced (32 layers stay: core recognises ViT-H by a 31st layer; projection 1024 stays)
TINY_VIT_H = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2}
#: core detects UMT5-XXL by this tensor's first dimension (10240) only; the tiny model has no such block, so core
#: reports it as an unused key
UMT5_PROBE = "encoder.block.23.layer.1.DenseReluDense.wi_1.weight"


def _widgets(cls: str) -> dict:
    return next(n["inputs"] for n in json.loads(WORKFLOW.read_text()).values() if n["class_type"] == cls)


# ---------------------------------------------------------------- serve: ComfyUI with two tiny configs


def _patch_clip_vision(mod) -> None:
    orig = mod.ClipVisionModel.__init__

    def init(self, json_config):
        if isinstance(json_config, str) and json_config.endswith("clip_vision_config_h.json"):
            with open(json_config) as f:
                json_config = {**json.load(f), **TINY_VIT_H}
        orig(self, json_config)

    mod.ClipVisionModel.__init__ = init


def _patch_text_encoder(mod) -> None:
    orig = mod.load_clip

    def load_clip(ckpt_paths, embedding_directory=None, clip_type=mod.CLIPType.STABLE_DIFFUSION, model_options={},
                  **kw):
        if clip_type == mod.CLIPType.WAN:
            model_options = {**model_options, "umt5xxl_model_config": dict(TINY_UMT5)}
        return orig(ckpt_paths, embedding_directory, clip_type, model_options, **kw)

    mod.load_clip = load_clip


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs a patch on a module right after its first import (``comfy.sd``, ``comfy.clip_vision``)."""

    PATCHES = {"comfy.sd": _patch_text_encoder, "comfy.clip_vision": _patch_clip_vision}

    def find_spec(self, name, path, target=None):
        if name not in self.PATCHES:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        exec_module, patch = spec.loader.exec_module, self.PATCHES[name]

        def run(module):
            exec_module(module)
            patch(module)

        spec.loader.exec_module = run
        return spec


def serve(comfy: Path, main_args: list[str]) -> None:
    os.chdir(comfy)
    sys.path.insert(0, str(comfy))
    sys.argv = ["main.py", *main_args]
    sys.meta_path.insert(0, _AfterImport())
    runpy.run_path(str(comfy / "main.py"), run_name="__main__")


# ---------------------------------------------------------------- prepare: tiny files under the shipped names


def _randomise(module, seed: int) -> None:
    """Core builds these models without initialising their weights: fill them (fan-in scaled, norms at 1)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in module.named_parameters():
            if p.ndim == 1 or n.endswith("gamma"):  # norms (the VAE's RMS gammas are [C, 1, 1(, 1)]) and biases
                p.copy_(torch.ones_like(p) if n.endswith(("weight", "gamma")) else torch.zeros_like(p))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / max(1, p[0].numel()) ** 0.5)


def _tokenizer_proto() -> bytes:
    """A small sentencepiece model with UMT5's special ids (pad 0, end 1)."""
    import io

    import sentencepiece as spm

    words = ("a dog is playing guitar in the park the person cat runs on grass with sun photo of video and slow "
             "motion camera moves left right").split()
    lines = [" ".join(words[i:] + words[:i]) for i in range(len(words))] * 4
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, vocab_size=TINY_UMT5["vocab_size"],
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, model_type="unigram",
                                   hard_vocab_limit=False, minloglevel=2)
    return buf.getvalue()


def prepare(host: Path, base: Path) -> None:
    sys.path.insert(0, str(HERE))
    from comfy_check_setup import start, write_tiny_native_wan

    start(["prepare", str(host), str(base / "scratch")])
    import comfy.clip_vision as cv
    import comfy.ldm.wan.vae as wan_vae
    import comfy.ops as ops
    import comfy.text_encoders.t5 as t5
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from dual_adapter import lora as L
    from dual_adapter.dualreal import DualRealAdapters, DualRealConfig, save_adapters

    models = base / "models"
    dirs = {k: models / k for k in ("diffusion_models", "text_encoders", "vae", "clip_vision")}
    for d in [*dirs.values(), base / "output" / "dualreal", base / "output" / "loras" / "tap", base / "input"]:
        d.mkdir(parents=True, exist_ok=True)
    t = write_tiny_native_wan(dirs["diffusion_models"] / _widgets("UNETLoader")["unet_name"])

    cfg = json.loads((host / "comfy" / "text_encoders" / "umt5_config_xxl.json").read_text())
    te = t5.T5({**cfg, **TINY_UMT5}, torch.float32, "cpu", ops.manual_cast)
    _randomise(te, 1)
    sd = {k: v.contiguous() for k, v in te.state_dict().items()}
    sd["spiece_model"] = torch.frombuffer(bytearray(_tokenizer_proto()), dtype=torch.uint8)
    sd[UMT5_PROBE] = torch.zeros(10240, 1)
    save_file(sd, str(dirs["text_encoders"] / _widgets("CLIPLoader")["clip_name"]))

    vae = wan_vae.WanVAE(dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                         temperal_downsample=[False, True, True], image_channels=3, conv_out_channels=3)
    _randomise(vae, 2)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()},
              str(dirs["vae"] / _widgets("VAELoader")["vae_name"]))

    vit = cv.ClipVisionModel({**json.loads((host / "comfy" / "clip_vision_config_h.json").read_text()), **TINY_VIT_H})
    _randomise(vit.model, 3)
    save_file({k: v.contiguous() for k, v in vit.model.state_dict().items()},
              str(dirs["clip_vision"] / _widgets("CLIPVisionLoader")["clip_name"]))

    torch.manual_seed(5)
    ad = DualRealAdapters(DualRealConfig.for_transformer(t, groups=2))
    for p in ad.parameters():
        p.data.normal_(0, 0.05)
    save_adapters(ad, base / _widgets("DualRealLoad")["adapters_name"])
    g = torch.Generator().manual_seed(6)
    lsd = {}
    for i in range(len(t.blocks)):
        lsd[f"transformer.blocks.{i}.attn1.to_q.lora_A.weight"] = torch.randn(4, 256, generator=g) * 0.2
        lsd[f"transformer.blocks.{i}.attn1.to_q.lora_B.weight"] = torch.randn(256, 4, generator=g) * 0.2
    L.LoraFile.from_state_dict(lsd, {"alpha": 4.0}).save(base / _widgets("DualAdapterLoadLoRA")["lora_name"])
    photo = np.asarray(Image.open(ROOT / "examples" / "dog" / "00.png").convert("RGB"))
    Image.fromarray(photo).save(base / "input" / _widgets("LoadImage")["image"])
    print("prepared", base)


if __name__ == "__main__":
    mode, comfy_path, *rest = sys.argv[1:]
    if mode == "prepare":
        prepare(Path(comfy_path).resolve(), Path(rest[0]).resolve())
    else:
        serve(Path(comfy_path).resolve(), rest)
