"""The nodes' path policy: saves stay inside the output folder, loads read only the input and models folders
and do not reveal what exists outside them."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dual_adapter.errors import DualAdapterError

from helpers import error_of as _err, files_under as _files, node_bridge as _bridge, tiny_lora_file as _tiny_lora


@pytest.mark.parametrize("prefix", ["{abs}/escaped", "../../escaped", "a/../../escaped", "..", "C:/escaped"])
def test_save_nodes_refuse_prefixes_that_leave_the_output_folder(classes, out_dir, tmp_path, prefix):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    prefix = prefix.format(abs=outside)
    frames = torch.rand(2, 8, 8, 3)
    before = _files(tmp_path)
    calls = [
        lambda: classes["DualAdapterSaveLoRA"]().save(_tiny_lora(), prefix, folder="output"),
        lambda: classes["DualAdapterSaveLoRA"]().save(_tiny_lora(), prefix, folder="models/loras"),
        lambda: classes["SaveImage"]().save_images(frames, prefix),
        lambda: classes["SaveAnimatedWEBP"]().save_images(frames, prefix),
        lambda: classes["SaveAnimatedPNG"]().save_images(frames, prefix),
    ]
    for call in calls:
        with pytest.raises(DualAdapterError, match="only written inside"):
            call()
    assert _files(tmp_path) == before, "a refused save wrote a file"


def test_dualreal_save_refuses_absolute_prefix(classes, out_dir, tmp_path):
    (adapters,) = classes["DualRealLoad"]().load("examples/dualreal_tiny_dog_guitar.safetensors")
    with pytest.raises(DualAdapterError, match="only written inside"):
        classes["DualRealSave"]().save(adapters, str(tmp_path / "x"))
    assert not list(tmp_path.glob("x_*"))


def test_save_inside_subfolders_still_works(classes, out_dir):
    r = classes["DualAdapterSaveLoRA"]().save(_tiny_lora(), "tap/guitar", folder="output")
    p = Path(r["result"][0])
    assert p.is_file() and p.parent == out_dir / "loras" / "tap" and p.name == "guitar_00001_.safetensors"


def test_load_nodes_read_only_the_input_folder_and_do_not_reveal_existence(classes, out_dir, tmp_path, data_dir):
    photo = next((data_dir / "identity" / "dog").iterdir())
    clip = next(p for p in (data_dir / "motion").rglob("*.mp4"))
    missing = tmp_path / "nope" / "missing.png"
    photos, clips = classes["DualAdapterLoadPhotos"](), classes["DualAdapterLoadClip"]()
    for load in (lambda p: photos.load(p, 64, 96), lambda p: clips.load(path=p, frames=5, height=64, width=96),
                 lambda p: classes["LoadImage"]().load_image(p)):
        existing, absent = _err(lambda: load(str(photo))), _err(lambda: load(str(missing)))
        # the same message, whether the file exists or not (only the echoed path differs)
        assert existing.replace(str(photo), "P") == absent.replace(str(missing), "P")
        rel = "../" * 12 + str(photo).lstrip("/")
        assert _err(lambda: load(rel)).replace(rel, "P") == absent.replace(str(missing), "P")
    # a file inside the input folder is read, by relative or absolute name
    inp = tmp_path / "input"
    inp.mkdir()
    (inp / "dog.png").write_bytes(photo.read_bytes())
    assert photos.load("dog.png", 64, 96)[1] == 1
    assert photos.load(str(inp / "dog.png"), 64, 96)[1] == 1
    # the shipped examples stay readable; nothing else of the pack is
    assert photos.load("examples/dog", 64, 96)[1] == 3
    _err(lambda: clips.load(path="examples/../nodes/bridge.py", frames=5))
    _err(lambda: clips.load(video="../" * 12 + str(clip).lstrip("/"), frames=5))


def test_absolute_paths_need_the_documented_opt_in(classes, out_dir, data_dir, monkeypatch):
    photo = next((data_dir / "identity" / "dog").iterdir())
    _err(lambda: classes["DualAdapterLoadPhotos"]().load(str(photo), 64, 96))
    monkeypatch.setenv("DUAL_ADAPTER_ALLOW_ABSOLUTE_PATHS", "1")
    assert classes["DualAdapterLoadPhotos"]().load(str(photo), 64, 96)[1] == 1


def test_bridge_resolve_never_falls_back_to_the_raw_path(out_dir, tmp_path):
    bridge = _bridge()
    secret = tmp_path / "secret.safetensors"
    secret.write_bytes(b"x")
    (tmp_path / "models" / "loras").mkdir(parents=True)
    (tmp_path / "models" / "loras" / "ok.safetensors").write_bytes(b"x")
    assert bridge.resolve("loras", "ok.safetensors") == tmp_path / "models" / "loras" / "ok.safetensors"
    a = _err(lambda: bridge.resolve("loras", str(secret)))
    b = _err(lambda: bridge.resolve("loras", "../../secret.safetensors"))
    c = _err(lambda: bridge.resolve("loras", "missing.safetensors"))
    assert a.replace(str(secret), "P") == b.replace("../../secret.safetensors", "P") == c.replace("missing.safetensors", "P")
