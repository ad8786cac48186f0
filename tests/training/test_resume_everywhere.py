"""Resume on every training node: a run cancelled part-way and resumed gives the same weights as one run straight
through (bit for bit), the Cancel keeps a state file, a finished run leaves no state file; and the node's live
training view (loss curve, validation preview) is sent while it trains.

CPU, tiny models, a few steps.
"""
from __future__ import annotations

import pytest
import torch

from dual_adapter.errors import InterruptedByUser
from dual_adapter.patches import PatchedModel
from nodes import bridge

pytestmark = pytest.mark.usefixtures("one_thread")


class _StopAt:
    """Patch bridge.Progress.__call__ to raise InterruptedByUser (the Cancel) once the run reaches ``step``."""

    def __init__(self, monkeypatch, step):
        real = bridge.Progress.__call__

        def call(bar, s, total=None, info=None, preview=None):
            real(bar, s, total, info, preview)
            if info and "loss" in info and s >= step:
                raise InterruptedByUser("cancel")

        monkeypatch.setattr(bridge.Progress, "__call__", call)


def _clip(seed=0, shape=(9, 64, 96, 3)):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(*shape[1:], generator=g)
    return torch.stack([torch.roll(base, i, dims=1) for i in range(shape[0])])  # a moving clip


def _states(out_dir):
    return sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*state.safetensors"))


def _resume_equals_straight(monkeypatch, out_dir, run, stop=2):
    """``run(name, resume)`` -> a dict of tensors. Straight run, then a cancelled + resumed one."""
    full = run("straight", False)
    assert _states(out_dir) == []  # a finished run leaves no state file
    with monkeypatch.context() as mp:
        _StopAt(mp, stop)
        with pytest.raises(InterruptedByUser):
            run("again", False)
    assert _states(out_dir), "the Cancel kept no state file"
    resumed = run("again", True)
    assert _states(out_dir) == []
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k


def test_motion_lora_node_resumes_bit_identical(tiny, out_dir, monkeypatch):
    from nodes.lora_nodes import TrainMotionLoRA

    model = PatchedModel(tiny)

    def run(name, resume):
        lf, _ = TrainMotionLoRA().train(model, _clip(), "a person is playing guitar", rank=2, alpha=2.0, steps=4,
                                        gradient_checkpointing=False, name=name, resume=resume, checkpoint_every=1)
        return lf.state_dict

    _resume_equals_straight(monkeypatch, out_dir, run)


def test_selective_lora_node_resumes_bit_identical(tiny, out_dir, monkeypatch):
    from nodes.customttt_nodes import DualAdapterTrainSelectiveLoRA

    model = PatchedModel(tiny)

    def run(name, resume):
        lf, _ = DualAdapterTrainSelectiveLoRA().train(model, "appearance", "dog *", blocks="0", rank=2, steps=4,
                                                      photos=_clip()[:2], name=name, resume=resume, checkpoint_every=1)
        return lf.state_dict

    _resume_equals_straight(monkeypatch, out_dir, run)


def test_ttt_merge_node_resumes_bit_identical(tiny, out_dir, monkeypatch):
    from helpers import random_lora as rand_lora

    from nodes.customttt_nodes import DualAdapterTTTMerge

    model = PatchedModel(tiny)
    a, m = rand_lora(tiny, [0], ["attn1.to_v"], 1), rand_lora(tiny, [1], ["attn1.to_v"], 2)

    def run(name, resume):
        lf, _ = DualAdapterTTTMerge().merge(model, a, "dog *", m, "turning", "dog * turning", steps=4, teacher_steps=1,
                                            teacher_schedule=3, learning_rate=1e-3, gradient_checkpointing=False,
                                            name=name, resume=resume, checkpoint_every=1)
        return lf.state_dict

    _resume_equals_straight(monkeypatch, out_dir, run)


def test_unet_motion_lora_node_resumes_bit_identical(out_dir, monkeypatch):
    from dual_adapter.backbones import load_backbone
    from nodes.lora_nodes import TrainMotionLoRA

    model = PatchedModel(load_backbone("tiny-unet3d"))

    def run(name, resume):
        lf, _ = TrainMotionLoRA().train(model, _clip(1, (2, 32, 32, 3)), "a car turns", rank=2, alpha=2.0, steps=4,
                                        learning_rate=1e-2, spatial_path=True, debiased_loss=True, name=name,
                                        resume=resume, checkpoint_every=1)
        return lf.state_dict

    _resume_equals_straight(monkeypatch, out_dir, run)


@pytest.mark.parametrize("stage", ["appearance", "motion", "ttt"])
def test_customttt_nodes_resume_bit_identical_on_animatediff(stage, out_dir, monkeypatch):
    """The CustomTTT nodes on AnimateDiff (the published recipe's stages and merge)."""
    from dual_adapter.backbones import load_backbone
    from nodes.customttt_nodes import DualAdapterTrainSelectiveLoRA as Sel, DualAdapterTTTMerge as Merge

    ad = load_backbone("tiny-animatediff")
    model = PatchedModel(ad)
    x = _clip(2, (2, 32, 32, 3))
    app = mot = None
    if stage == "ttt":
        app, _ = Sel().train(model, "appearance", "dog *", steps=1, rank=2, photos=x[:1], optimizer="adamw")
        mot, _ = Sel().train(model, "motion", "turns", steps=1, rank=2, clip=x, optimizer="adamw")

    def run(name, resume):
        if stage == "ttt":
            lf, _ = Merge().merge(model, app, "dog *", mot, "turns", "dog * turns", steps=4, learning_rate=1e-3,
                                  frames=2, teacher_steps=1, teacher_schedule=2, optimizer="adamw", name=name,
                                  resume=resume, checkpoint_every=1)
        else:
            data = {"photos": x[:1]} if stage == "appearance" else {"clip": x}
            lf, _ = Sel().train(model, stage, "dog *" if stage == "appearance" else "turns", steps=4, rank=2,
                                optimizer="adamw", learning_rate=1e-3, name=name, resume=resume, checkpoint_every=1,
                                **data)
        return lf.state_dict

    _resume_equals_straight(monkeypatch, out_dir, run)


def test_node_shows_live_loss_curve_and_previews(tiny, out_dir, monkeypatch):
    from nodes.lora_nodes import TrainMotionLoRA

    sent = []

    class Bar:
        def update_absolute(self, value, total, preview=None):
            if preview is not None:
                sent.append(preview)

    real_init = bridge.Progress.__init__

    def init(bar, *a, **kw):
        real_init(bar, *a, **kw)
        bar.bar = Bar()
        bar.plot_every_s = 0.0  # redraw at every step

    monkeypatch.setattr(bridge.Progress, "__init__", init)
    monkeypatch.setattr(bridge, "progress_text", lambda text: None)
    TrainMotionLoRA().train(PatchedModel(tiny), _clip(), "a person is playing guitar", rank=2, alpha=2.0, steps=3,
                            gradient_checkpointing=False, preview_every=2)
    assert len(sent) >= 3 and all(p[0] == "JPEG" for p in sent)  # the live view, step after step
    sizes = {p[1].size for p in sent}
    assert len(sizes) >= 2  # the preview's frames appear above the curve once there is one
    names = sorted(p.name for p in out_dir.rglob("previews/*"))
    assert names == ["preview_000002.webp", "preview_000003.webp", "previews.png"]
