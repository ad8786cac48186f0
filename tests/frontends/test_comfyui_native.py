"""The pack on core ComfyUI's native CogVideoX (skipped unless COMFYUI_PATH points at a ComfyUI with
``comfy/ldm/cogvideo``, i.e. 0.19+; 0.8.0 has no native CogVideoX).

Runs tests/frontends/comfy_native_check.py in that ComfyUI (one process, ComfyUI imported, CPU) and checks what it
measured: a tiny native checkpoint written by the converter loads through core UNETLoader; native vs diffusers
on the same weights (1.5-, 5B-1.0-, 2B-like); one model call with DualReal + a LoRA patched on the core MODEL
equals the pack's own patched transformer; core KSampler runs with both applied (StageBlender once per
model call); a LoRA saved with native names loads in core LoraLoaderModelOnly with no "lora key not loaded".
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMFY = os.environ.get("COMFYUI_PATH")
pytestmark = [pytest.mark.comfyui,
              pytest.mark.skipif(not COMFY, reason="COMFYUI_PATH is not set (path of a ComfyUI checkout)")]


def run_check(script: str, comfy: Path, work: Path) -> dict:
    """Run ``tests/frontends/<script>`` in the ComfyUI at ``comfy`` (cwd there) and return its ``RESULT`` JSON object."""
    p = subprocess.run([sys.executable, str(Path(__file__).resolve().parent / script), str(comfy), str(work)],
                       cwd=comfy, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    assert p.returncode == 0 and lines, (p.stdout + p.stderr)[-4000:]
    res = json.loads(lines[-1][len("RESULT "):])
    print(json.dumps(res, indent=1))
    return res


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    comfy = Path(COMFY)
    if not (comfy / "comfy" / "ldm" / "cogvideo" / "model.py").is_file():
        pytest.skip(f"{comfy} has no native CogVideoX (comfy/ldm/cogvideo; ComfyUI < 0.19)")
    return run_check("comfy_native_check.py", comfy, tmp_path_factory.mktemp("native"))


def test_converted_checkpoint_loads_through_unetloader_and_matches_where_expected(result):
    f = result["fidelity"]
    for name in f:
        assert f[name]["native_class"] == "comfy.ldm.cogvideo.model.CogVideoXTransformer3DModel"
    assert f["1.5"]["max_abs_diff"] < 1e-5 and f["1.5"]["bridge_verdict"] == []
    assert f["1.5-no-patch-bias"]["max_abs_diff"] < 1e-5
    # 5B-1.0: core scales the RoPE grid -> a measurable difference, and the bridge warns naming it
    assert f["5B-1.0"]["max_abs_diff"] > 1e-3
    assert [v[0] for v in f["5B-1.0"]["bridge_verdict"]] == ["warn"]
    assert "spatial_interpolation_scale" in f["5B-1.0"]["bridge_verdict"][0][1]
    # 2B-like (sincos): core builds it with RoPE -> large difference; refused when the adapters say so
    assert f["2B"]["native_rope"] is True and f["2B"]["max_abs_diff"] > 1e-2
    assert result["refusal_2b"] and "sincos" in result["refusal_2b"] and "RoPE" in result["refusal_2b"]


def test_patched_core_model_call_matches_the_packs_patched_transformer(result):
    r = result["patched_call"]
    assert r["max_abs_effect"] > 1e-2  # the patches change the output...
    assert r["max_abs_diff_vs_pack"] < 1e-5  # ...exactly as the pack's own DA-blocks + LoRA do
    assert r["base_restored_diff"] == 0.0 and r["input_model_object_patches"] == 0  # the input MODEL is untouched
    assert r["additional_models"] == ["dualreal"]  # the adapters are loaded / counted by ComfyUI


def test_core_ksampler_runs_with_dualreal_and_lora(result):
    k = result["ksampler"]
    assert k["finite"] and k["out_shape"] == [1, 16, 4, 8, 12]
    assert k["model_calls"] >= 3 and k["stageblender_runs"] == k["model_calls"]


def test_native_lora_file_loads_in_core_loraloadermodelonly(result):
    r = result["lora"]
    assert r["not_loaded_messages"] == [] and r["patches"] == 4
    assert r["core_loader_vs_pack_node"] < 1e-6 and r["core_loader_vs_pack_model"] < 1e-5
    assert r["pack_reads_native_file"]
    assert result["lora_stack_core_then_pack_vs_pack"] < 1e-5  # core LoraLoaderModelOnly + the pack's node stack
