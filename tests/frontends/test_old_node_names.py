"""One node family for every backbone, and the node names of earlier versions still run.

tests/frontends/fixtures/old_workflows/ holds the shipped workflows as they were before the two model families
(COGVIDEOX_MODEL, UNET_VIDEO_MODEL) became one (VIDEO_MODEL): their UI files convert with the old names' widget order,
their API files validate and run headless, and the first use of an old name logs one line naming the new node."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

OLD = Path(__file__).resolve().parent / "fixtures" / "old_workflows"
OLD_API = sorted((OLD / "api").glob("*.json"))
#: the U-Net workflows run in seconds (tiny models); the others train on mini (half a minute each on one core)
FAST = ("zeroscope_tap_ah", "animatediff_customttt")


@pytest.fixture(scope="module")
def classes():
    from dual_adapter.commands.run import load_node_classes

    return load_node_classes()


def _reset_notices(classes) -> None:
    """Forget which old names were noticed, in the node package the runner loaded (``dual_adapter_pack_nodes``)."""
    import sys

    pkg = classes["DualAdapterUNetSampler"].__module__.rsplit(".", 1)[0]
    sys.modules[f"{pkg}.common"]._NOTICED.clear()


def test_the_fixtures_hold_the_old_names():
    types = {n["class_type"] for p in OLD_API for n in json.loads(p.read_text()).values()}
    assert {"DualAdapterCogVideoXLoader", "DualAdapterUNetVideoLoader", "DualAdapterUNetSampler",
            "DualAdapterUNetTrainMotionLoRA", "DualAdapterUNetSaveLoRA"} <= types


def test_one_model_type_and_old_names_are_deprecated_subclasses(classes):
    import nodes

    from nodes import old_names

    for key, cls in nodes.NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        types = [v[0] for sec in ("required", "optional") for v in (spec.get(sec) or {}).values()
                 if isinstance(v[0], str)] + list(cls.RETURN_TYPES)
        assert not {"COGVIDEOX_MODEL", "UNET_VIDEO_MODEL", "UNET_LORA", "COGVIDEOX_EMBEDS"} & set(types), key
    for old, (new, title, _) in old_names.OLD_NAMES.items():
        cls = nodes.NODE_CLASS_MAPPINGS[old]
        assert cls.DEPRECATED is True and issubclass(cls, nodes.NODE_CLASS_MAPPINGS[new])
        assert nodes.NODE_DISPLAY_NAME_MAPPINGS[old] == f"{title} (old name)"
        assert not getattr(nodes.NODE_CLASS_MAPPINGS[new], "DEPRECATED", False)


@pytest.mark.parametrize("path", [p for p in sorted((OLD / "ui").glob("*.json")) if (OLD / "api" / p.name).is_file()],
                         ids=lambda p: p.stem)
def test_old_ui_workflows_convert_as_before(path, classes):
    """A UI file stores widget values by position: the old names keep their old inputs in their old order. (The
    native workflow, of core nodes only, is checked in a real ComfyUI: tests/frontends/test_comfyui_native.py.)"""
    from dual_adapter.graph import ui_to_api, validate_workflow

    api = json.loads((OLD / "api" / path.name).read_text())
    conv = ui_to_api(json.loads(path.read_text()), classes)
    assert {k: v["inputs"] for k, v in conv.items()} == {k: v["inputs"] for k, v in api.items()}
    assert validate_workflow(api, classes) == []


@pytest.mark.parametrize("path", [p if p.stem in FAST else pytest.param(p, marks=pytest.mark.slow) for p in OLD_API],
                         ids=lambda p: p.stem)
def test_old_api_workflows_run_headless(path, classes, out_dir, caplog):
    from dual_adapter.graph import load_workflow, run_workflow

    _reset_notices(classes)
    wf = load_workflow(path)
    old = {n["class_type"] for n in wf.values()} & set(__import__("nodes.old_names").old_names.OLD_NAMES)
    with caplog.at_level(logging.WARNING, logger="dual_adapter.nodes"):
        out = run_workflow(wf, classes)
    saved = [e for k, v in out.items() if k.startswith("ui:") for e in v.get("images", [])]
    assert saved and all((out_dir / e["subfolder"] / e["filename"]).stat().st_size > 0 for e in saved)
    notices = [r.getMessage() for r in caplog.records if "is an old node name" in r.getMessage()]
    assert sorted(n.split()[0] for n in notices) == sorted(old)  # one line per old name, however often it is used


def test_the_notice_is_logged_once_per_process(classes, caplog):
    _reset_notices(classes)
    with caplog.at_level(logging.WARNING, logger="dual_adapter.nodes"):
        for _ in range(3):
            (m,) = classes["DualAdapterUNetVideoLoader"]().run_old_name(model="tiny-unet3d", dtype="auto",
                                                                        device="auto")
    lines = [r.getMessage() for r in caplog.records if "is an old node name" in r.getMessage()]
    assert lines == ["DualAdapterUNetVideoLoader is an old node name: it runs as 'Load Video Model' "
                     "(DualAdapterLoadVideoModel); re-save the workflow to use the new node"]
    assert m.bundle.kind == "unet3d"


@pytest.mark.parametrize("name", ["tiny", "tiny-wan", "tiny-unet3d"])
def test_one_loader_encoder_sampler_and_decoder_serve_every_backbone(classes, name):
    with torch.inference_mode():
        (m,) = classes["DualAdapterLoadVideoModel"]().load(name)
        (e,) = classes["DualAdapterTextEncode"]().encode(m, "a dog", "")
        (lat,) = classes["DualAdapterSampler"]().run(m, e, frames=0, height=32, width=32, steps=1, seed=1)
        (frames,) = classes["DualAdapterVAEDecode"]().decode(m, lat)
        (lat2,) = classes["DualAdapterVAEEncode"]().encode(m, frames, 32, 32)
    assert frames.ndim == 4 and frames.shape[1:] == (32, 32, 3)
    assert lat2["samples"].shape[1:2] == lat["samples"].shape[1:2]


def test_the_unet_sampler_old_name_gives_the_old_latents(classes):
    """The old U-Net sampler (prompts in, its own defaults) equals the new sampler fed with separate encodings."""
    from dual_adapter import sampling

    (m,) = classes["DualAdapterLoadVideoModel"]().load("tiny-unet3d")
    (old,) = classes["DualAdapterUNetSampler"]().run_old_name(model=m, prompt="a dog", negative_prompt="", frames=2,
                                                              height=32, width=32, steps=2, cfg=9.0, seed=3,
                                                              scheduler="ddim")
    bb = m.bundle
    want = sampling.sample(bb, bb.encode_prompt("a dog"), bb.encode_prompt(""), num_frames=2, height=32, width=32,
                           steps=2, cfg=9.0, seed=3, scheduler="ddim")
    assert torch.equal(old["samples"], want.float().cpu())


def test_methods_a_backbone_lacks_are_refused_naming_the_input(classes):
    from dual_adapter.errors import DualAdapterError

    (unet,) = classes["DualAdapterLoadVideoModel"]().load("tiny-unet3d")
    (dit,) = classes["DualAdapterLoadVideoModel"]().load("tiny")
    with pytest.raises(DualAdapterError, match=r"^model: dualreal is defined on CogVideoX"):
        classes["DualRealApply"]().apply(unet, adapters=None)
    with pytest.raises(DualAdapterError, match=r"^model: appearance highway is defined on ZeroScope"):
        classes["DualAdapterApplyAH"]().apply(dit)


def test_one_lora_family_trains_saves_loads_and_applies_on_both_kinds(classes, out_dir):
    """Train Motion LoRA (TAP preset auto: the backbone's), Save / Load / Apply LoRA on a DiT and a U-Net; a LoRA of
    one kind is refused on the other, naming the input."""
    from dual_adapter import dispatch
    from dual_adapter.errors import DualAdapterError
    from dual_adapter.lora import LoraFile
    from dual_adapter.unet_motion import UNetLora

    torch.manual_seed(0)
    got = {}
    for name, kind, preset in (("tiny", LoraFile, "tap"), ("tiny-unet3d", UNetLora, "k_out")):
        (m,) = classes["DualAdapterLoadVideoModel"]().load(name)
        h, w = (64, 96) if name == "tiny" else (32, 32)
        clip = torch.rand(9 if name == "tiny" else 2, h, w, 3)
        assert dispatch.motion_preset(m, "auto") == preset
        lf, plot = classes["DualAdapterTrainMotionLoRA"]().train(m, clip, "a dog runs", rank=2, alpha=2.0, steps=1,
                                                                 name=f"t_{name}")
        assert isinstance(lf, kind) and plot.ndim == 4
        res = classes["DualAdapterSaveLoRA"]().save(lf, filename_prefix=f"x_{name}", folder="output",
                                                    precision="fp32")
        path = Path(res["result"][0])
        (back,) = classes["DualAdapterLoadLoRA"]().load("output/" + path.relative_to(out_dir).as_posix())
        assert isinstance(back, kind)
        (m2,) = classes["DualAdapterApplyLoRA"]().apply(m, back, 0.5)
        assert len(m2.patches) == 1 and not m.patches
        got[name] = (m, back)
    with pytest.raises(DualAdapterError, match=r"^lora: .* is a U-Net LoRA; the model"):
        classes["DualAdapterApplyLoRA"]().apply(got["tiny"][0], got["tiny-unet3d"][1])
    with pytest.raises(DualAdapterError, match=r"^key_format: "):
        classes["DualAdapterSaveLoRA"]().save(got["tiny-unet3d"][1], folder="output", key_format="comfyui_native")
