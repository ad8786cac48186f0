"""The shipped native Wan workflow: its UI file and API twin agree, and it is core ComfyUI's Wan 2.1 text-to-video graph
with the pack's Apply nodes on the MODEL (its run in a real host: tests/frontends/test_comfyui_native_wan.py)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_native_wan_workflow_ui_and_api_twins_agree():
    from dual_adapter.commands.run import load_node_classes
    from dual_adapter.graph import ui_to_api

    spec = importlib.util.spec_from_file_location("bw_wan", ROOT / "workflows" / "build_workflows.py")
    bw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bw)
    ui = json.loads((ROOT / "example_workflows" / "wan_dualreal_lora_ksampler.json").read_text())
    api = json.loads((ROOT / "workflows" / "native" / "api" / "wan_dualreal_lora_ksampler.json").read_text())
    conv = ui_to_api(ui, {**bw.WAN_NATIVE_CORE_SPECS, **load_node_classes()})
    assert {k: v["inputs"] for k, v in conv.items()} == {k: v["inputs"] for k, v in api.items()}
    by_type = {v["class_type"]: v for v in api.values()}
    assert {"UNETLoader", "CLIPLoader", "CLIPTextEncode", "EmptyHunyuanLatentVideo", "KSampler", "VAELoader",
            "VAEDecode", "DualAdapterApplyLoRANative", "DualAdapterDualRealApplyNative"} <= set(by_type)
    assert by_type["CLIPLoader"]["inputs"]["type"] == "wan"
    # the chain: UNETLoader -> Apply LoRA -> Apply DualReal -> ModelSamplingSD3 -> KSampler
    chain, node = [], by_type["KSampler"]
    while "model" in node["inputs"]:
        node = api[node["inputs"]["model"][0]]
        chain.append(node["class_type"])
    assert chain == ["ModelSamplingSD3", "DualAdapterDualRealApplyNative", "DualAdapterApplyLoRANative", "UNETLoader"]
    note = next(n for n in ui["nodes"] if n["type"] == "MarkdownNote")["widgets_values"][0]
    for f in ("models/diffusion_models/", "models/text_encoders/", "models/vae/", "models/clip_vision/"):
        assert f in note
