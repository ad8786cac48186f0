"""The pack on core ComfyUI's native Wan (skipped unless COMFYUI_PATH points at a ComfyUI with ``comfy/ldm/wan``).

Runs tests/frontends/comfy_native_wan_check.py in that ComfyUI (one process, ComfyUI imported, CPU) and checks what it
measured: a tiny Wan written with Wan's native names loads through core UNETLoader and matches diffusers on the same
weights; Apply LoRA to MODEL and Apply DualReal to MODEL (the block replace hook ``patches_replace["dit"]``) give the
pack's own patched Wan transformer's output to float rounding, leave the input MODEL untouched, and run in core
KSampler with the StageBlender once per model call; adapters for another model are refused by name. The shipped
native Wan workflow runs in a real ComfyUI server (tests/frontends/comfy_wan_workflow_host.py) on tiny random files
under the names it picks.
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


# ---- the shipped native Wan workflow in a real ComfyUI server (tiny random files under the shipped names)
WF = Path(__file__).resolve().parents[2] / "workflows" / "native" / "api" / "wan_dualreal_lora_ksampler.json"
#: what the run changes in the shipped graph: a small video and two steps (a CPU pipeline check)
SMALL = {"EmptyHunyuanLatentVideo": {"width": 64, "height": 64, "length": 5}, "KSampler": {"steps": 2}}


@pytest.fixture(scope="module")
def wan_server(tmp_path_factory):
    import subprocess
    import sys

    from test_comfyui_host import comfy_server

    comfy = Path(COMFY)
    if not (comfy / "comfy" / "ldm" / "wan" / "model.py").is_file():
        pytest.skip(f"{comfy} has no native Wan (comfy/ldm/wan)")
    host = Path(__file__).resolve().parent / "comfy_wan_workflow_host.py"
    base = tmp_path_factory.mktemp("wan_host")
    env = {"OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, str(host), "prepare", str(comfy), str(base)], cwd=comfy, capture_output=True,
                       text=True, timeout=600, env={**os.environ, **env})
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    (base / "custom_nodes").mkdir(exist_ok=True)  # the pack installed in this base directory only
    (base / "custom_nodes" / "comfyui-dual-adapter").symlink_to(WF.parents[3], target_is_directory=True)
    with comfy_server([sys.executable, str(host), "serve", str(comfy)], ["--base-directory", str(base)], comfy,
                      base / "comfyui.log", "/object_info/DualAdapterDualRealApplyNative", env) as url:
        yield {"url": url, "out": base / "output", "log": base / "comfyui.log"}


def test_shipped_native_wan_workflow_runs_in_the_host(wan_server):
    """The shipped API graph as is (file names, nodes, links), with a small video and two steps: core UNETLoader,
    CLIPLoader (wan), CLIPVisionLoader, VAELoader load the tiny files; Apply LoRA and Apply DualReal to MODEL patch the
    core Wan; core KSampler, VAEDecode and SaveAnimatedWEBP write the video."""
    import json

    from test_comfyui_host import output_files, run_prompt

    prompt = json.loads(WF.read_text())
    for node in prompt.values():
        node["inputs"].update(SMALL.get(node["class_type"], {}))
    h = run_prompt(wan_server["url"], prompt, "the native Wan workflow", 600)
    assert h["status"]["status_str"] == "success", json.dumps(h["status"]["messages"])[-3000:]
    files = output_files(h, wan_server["out"])
    assert len(files) == 1 and files[0].name.startswith("native_wan_dualreal") and files[0].stat().st_size > 0
    log = wan_server["log"].read_text()
    assert "Traceback" not in log and "lora key not loaded" not in log, log[-3000:]
    assert "Requested to load DualRealAdapters" in log  # Apply DualReal's adapters load with the core model
