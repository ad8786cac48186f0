"""One CustomTTT node family for every backbone CustomTTT runs on: Prompt Influence, Train LoRA with Block Selection
and TTT Merge take CogVideoX / Wan (transformer blocks) and AnimateDiff (U-Net text layers, the published recipe's
settings as defaults); the AnimateDiff nodes' old names run the same computation as the recipe's library stages.

CPU, tiny models, one or two steps each."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dual_adapter.errors import DualAdapterError

pytestmark = pytest.mark.usefixtures("one_thread")
OLD_API = Path(__file__).resolve().parent / "fixtures" / "old_workflows" / "api" / "animatediff_customttt.json"


@pytest.fixture(scope="module")
def classes():
    from dual_adapter.commands.run import load_node_classes

    return load_node_classes()


def _clip(n=2, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(h, w, 3, generator=g)
    return torch.stack([torch.roll(base, i, dims=1) for i in range(n)])  # a moving clip


@pytest.mark.parametrize("name", ["tiny-animatediff", "tiny"])
def test_influence_selective_loras_and_merge_on_any_model(classes, out_dir, name):
    """Influence -> appearance and motion LoRAs on the recommended blocks -> TTT merge -> Apply LoRA, headless."""
    from dual_adapter.lora import LoraFile

    unet = name == "tiny-animatediff"
    (m,) = classes["DualAdapterLoadVideoModel"]().load(name)
    h, w, f = (32, 32, 2) if unet else (64, 96, 9)
    with torch.inference_mode():
        r = classes["DualAdapterPromptInfluence"]().analyse(m, "a photo of a dog *", "a car is turning", "",
                                                            top_k=1, timesteps="500", seeds="0", frames=f)
        _, _, app_blocks, mot_blocks = r["result"]
        sel = classes["DualAdapterTrainSelectiveLoRA"]()
        app, _ = sel.train(m, "appearance", "a photo of a dog *", blocks=app_blocks, rank=2, steps=1,
                           learning_rate=1e-3, photos=_clip(1, h, w), height=h, width=w)
        mot, _ = sel.train(m, "motion", "a car is turning", blocks=mot_blocks, rank=2, steps=1, learning_rate=1e-3,
                           clip=_clip(f, h, w, seed=1), height=h, width=w)
        merged, plot = classes["DualAdapterTTTMerge"]().merge(m, app, "a photo of a dog *", mot, "a car is turning",
                                                              "a dog * is turning", steps=1, teacher_steps=1,
                                                              teacher_schedule=2, frames=f, height=h, width=w)
        (patched,) = classes["DualAdapterApplyLoRA"]().apply(m, merged, 1.0)
    assert all(isinstance(x, LoraFile) for x in (app, mot, merged)) and plot.ndim == 4
    assert {x.prefix for x in (app, mot, merged)} == {"unet" if unet else "transformer"}
    assert set(merged.modules) == set(app.modules) | set(mot.modules)
    if unet:  # one text layer each: the appearance LoRA on its spatial attention, the motion LoRA on its motion module
        from dual_adapter.backbones import as_backbone

        layers = [b.name for b in as_backbone(m.bundle).text_layers()]
        assert {layers[int(app_blocks)]} == {k.rsplit(".attentions.", 1)[0] for k in app.modules}
        assert all(".motion_modules." in k and k.startswith(layers[int(mot_blocks)]) for k in mot.modules)
    else:
        assert app.blocks == [int(app_blocks)] and mot.blocks == [int(mot_blocks)]
    assert len(patched.patches) == 1
    assert sorted(p.parent.parent.name for p in out_dir.glob("runs/*/*/*.safetensors")) == \
        ["customttt", "lora", "lora"]


def test_animatediff_defaults_are_the_published_recipe(classes, out_dir):
    """On AnimateDiff the nodes' 0 / auto / empty settings are the authors' (layers 2,6 and 2,5, lr 1e-5 / 5e-5,
    TTT lr 1e-6, CFG 9, each teacher its own noise): the nodes give the recipe's library stages' tensors."""
    from dual_adapter import dispatch
    from dual_adapter.customttt import TTTConfig
    from dual_adapter.customttt import unet as R

    (m,) = classes["DualAdapterLoadVideoModel"]().load("tiny-animatediff")
    bb = m.bundle
    photos, clip = _clip(1), _clip(2, seed=1)
    sel = classes["DualAdapterTrainSelectiveLoRA"]()
    with torch.inference_mode():
        app, _ = sel.train(m, "appearance", "a dog", rank=2, steps=2, photos=photos)
        mot, _ = sel.train(m, "motion", "turning", rank=2, steps=2, clip=clip)
        merged, _ = classes["DualAdapterTTTMerge"]().merge(m, app, "a dog", mot, "turning", "a dog turning", steps=2,
                                                           teacher_steps=1, teacher_schedule=2, frames=2)
    cfg = R.CustomTTTUNetConfig(rank=2, appearance_steps=2, motion_steps=2, ttt_steps=2, teacher_steps=1,
                                sampler_steps=2, num_frames=2)
    want_app, _ = R.train_appearance_lora(bb, [photos[0]], "a dog", cfg)
    want_mot, _ = R.train_motion_lora(bb, [clip], "turning", cfg)
    want, _, _ = R.ttt_merge(bb, want_app, want_mot, appearance_prompt="a dog", motion_prompt="turning",
                             prompt="a dog turning", config=cfg)
    for got, ref in ((app, want_app), (mot, want_mot), (merged, want)):
        assert got.state_dict.keys() == ref.state_dict.keys()
        assert all(torch.equal(got.state_dict[k], ref.state_dict[k]) for k in ref.state_dict)
    tc = dispatch.ttt_config(m)
    assert (tc.teacher_cfg, tc.lr, tc.shared_teacher_noise, tc.grad_clip) == (9.0, 1e-6, False, 0.0)
    (dit,) = classes["DualAdapterLoadVideoModel"]().load("tiny")
    assert dispatch.ttt_config(dit) == TTTConfig()  # CogVideoX / Wan keep theirs
    assert dispatch.ttt_config(dit, optimizer="lion").lr == TTTConfig.authors().lr


def test_methods_and_settings_a_backbone_lacks_are_refused_naming_the_input(classes, out_dir):
    (z,) = classes["DualAdapterLoadVideoModel"]().load("tiny-unet3d")
    (ad,) = classes["DualAdapterLoadVideoModel"]().load("tiny-animatediff")
    sel = classes["DualAdapterTrainSelectiveLoRA"]()
    with pytest.raises(DualAdapterError, match=r"^model: CustomTTT is defined on .*AnimateDiff"):
        sel.train(z, "appearance", "a dog", steps=1, photos=_clip(1))
    with pytest.raises(DualAdapterError, match=r"^preset: 'tap' is for motion LoRAs"):
        sel.train(ad, "appearance", "a dog", preset="tap", steps=1, photos=_clip(1))
    with pytest.raises(DualAdapterError, match=r"layers \[9\] out of range: this model has 7 text layers"):
        sel.train(ad, "motion", "turning", blocks="9", steps=1, clip=_clip(2))


def test_old_animatediff_workflow_gives_the_recipe_loras(classes, out_dir, caplog):
    """The old AnimateDiff CustomTTT nodes' workflow (old names) runs through the one family and saves the LoRAs
    the published recipe's library stages give on the same settings and seed, in the old run folders."""
    import logging

    from safetensors.torch import load_file

    from dual_adapter.backbones import load_backbone
    from dual_adapter.customttt import unet as R
    from dual_adapter.graph import load_workflow, run_workflow

    wf = load_workflow(OLD_API)
    with caplog.at_level(logging.WARNING, logger="dual_adapter.nodes"):
        run_workflow(wf, classes)
    notices = [r.getMessage().split()[0] for r in caplog.records if "is an old node name" in r.getMessage()]
    assert {"DualAdapterAnimateDiffPromptInfluence", "DualAdapterAnimateDiffTrainAppearanceLoRA",
            "DualAdapterAnimateDiffTrainMotionLoRA", "DualAdapterAnimateDiffTTTMerge"} <= set(notices)
    inp = {k: v["inputs"] for k, v in json.loads(OLD_API.read_text()).items()}
    a, mo, t = inp["6"], inp["7"], inp["8"]
    photos = classes["DualAdapterLoadPhotos"]().load(**inp["2"])[0]
    clip = classes["DualAdapterLoadClip"]().load(**inp["3"])[0]
    bb = load_backbone("tiny-animatediff")
    cfg = R.CustomTTTUNetConfig(rank=a["rank"], appearance_steps=a["steps"], appearance_lr=a["learning_rate"],
                                motion_steps=mo["steps"], motion_lr=mo["learning_rate"], ttt_steps=t["steps"],
                                ttt_lr=t["learning_rate"], num_frames=t["frames"], teacher_steps=t["teacher_steps"],
                                sampler_steps=t["sampler_steps"])
    app, _ = R.train_appearance_lora(bb, list(photos), a["prompt"], cfg)
    mot, _ = R.train_motion_lora(bb, [clip], mo["prompt"], cfg)
    merged, _, _ = R.ttt_merge(bb, app, mot, appearance_prompt=t["appearance_prompt"],
                               motion_prompt=t["motion_prompt"], prompt=t["prompt"], config=cfg)
    for run, want in (("appearance_lora", app), ("motion_lora", mot), ("customttt", merged)):
        got = load_file(out_dir / "runs" / "unet" / f"{run}_00001_" / f"{run}.safetensors")
        ref = {f"unet.{k}" if not k.startswith("unet.") else k: v for k, v in want.state_dict.items()}
        assert got.keys() == ref.keys(), run
        assert all(torch.equal(got[k], ref[k].float()) for k in ref), run
