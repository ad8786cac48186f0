"""The pack on core ComfyUI's native Wan (skipped unless COMFYUI_PATH points at a ComfyUI with ``comfy/ldm/wan``).

Runs tests/frontends/comfy_native_wan_check.py in that ComfyUI (one process, ComfyUI imported, CPU) and checks what it
measured: a tiny Wan written with Wan's native names loads through core UNETLoader and matches diffusers on the same
weights; Apply LoRA to MODEL and Apply DualReal to MODEL (the block replace hook ``patches_replace["dit"]``) give the
pack's own patched Wan transformer's output to float rounding, leave the input MODEL untouched, and run in core
KSampler with the StageBlender once per model call; adapters for another model are refused by name.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

COMFY = os.environ.get("COMFYUI_PATH")
pytestmark = [pytest.mark.comfyui,
              pytest.mark.skipif(not COMFY, reason="COMFYUI_PATH is not set (path of a ComfyUI checkout)")]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    from test_comfyui_native import run_check

    comfy = Path(COMFY)
    if not (comfy / "comfy" / "ldm" / "wan" / "model.py").is_file():
        pytest.skip(f"{comfy} has no native Wan (comfy/ldm/wan)")
    return run_check("comfy_native_wan_check.py", comfy, tmp_path_factory.mktemp("native_wan"))


def test_native_wan_file_loads_through_unetloader_and_matches_diffusers(result):
    f = result["fidelity"]
    assert f["native_class"] == "comfy.ldm.wan.model.WanModel" and f["max_abs_diff"] < 1e-4


def test_lora_and_dualreal_on_the_core_wan_model_match_the_packs_patched_transformer(result):
    r = result["patched_call"]
    assert r["lora_vs_pack"] < 1e-4  # Apply LoRA to MODEL (core weight patches) == the pack's LoRA
    assert r["max_abs_effect"] > 1e-2  # the patches change the output...
    assert r["max_abs_diff_vs_pack"] < 1e-4  # ...as the pack's own Wan DA-blocks + LoRA do
    assert r["base_restored_diff"] == 0.0  # the input MODEL is untouched
    assert r["input_model_object_patches"] == 0 and r["input_model_replace_patches"] == 0
    assert r["additional_models"] == ["dualreal"]  # the adapters are loaded / counted by ComfyUI


def test_core_ksampler_runs_on_wan_with_dualreal_and_lora(result):
    k = result["ksampler"]
    assert k["finite"] and k["out_shape"] == [1, 16, 3, 8, 8]
    assert k["model_calls"] >= 3 and k["stageblender_runs"] == k["model_calls"]


def test_adapters_for_another_model_are_refused_by_name(result):
    assert result["refusal"] and "native Wan MODEL" in result["refusal"] and "3 blocks (model: 2)" in result["refusal"]
