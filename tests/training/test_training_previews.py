"""Validation previews while training (dual_adapter/previews.py, the hook of training.train_loop): cadence and
files, the node's live preview, and weights bit-identical with and without previews, for every trainer.

CPU, tiny models, a few steps.
"""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from dual_adapter.backbones.cogvideox import encode_prompt
from dual_adapter.dualreal import DualRealData, DualRealOptions, train_dualreal_on_data
from dual_adapter.previews import PreviewOptions, Previewer, backbone_renderer
from dual_adapter.training import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "a person is playing guitar"


def _cfg(steps, **kw):
    kw.setdefault("gradient_checkpointing", False)
    kw.setdefault("warmup_steps", 0)
    kw.setdefault("checkpoint_every", 0)
    return TrainConfig(steps=steps, **kw)


@pytest.fixture(scope="module")
def data(tiny):
    g = torch.Generator().manual_seed(0)
    return DualRealData(torch.randn(2, 1, 4, 8, 12, generator=g), torch.randn(1, 3, 4, 8, 12, generator=g),
                        encode_prompt(tiny, "dog *"), encode_prompt(tiny, PROMPT),
                        torch.randn(1, 1024, generator=g), "dog *", PROMPT, "test")


def _previewer(tiny, folder=None, every=2, seen=None):
    opts = PreviewOptions(every=every, steps=2, cfg=1.0, folder=folder,
                          on_preview=(lambda s, f: seen.append((s, f.shape))) if seen is not None else None)
    return Previewer(opts, backbone_renderer(tiny, encode_prompt(tiny, PROMPT), opts, height=64, width=96))


def _dualreal(tiny, data, steps=5, **kw):
    return train_dualreal_on_data(tiny.transformer, tiny.scheduler_config, data, DualRealOptions(groups=2, motion_batch=1),
                                  _cfg(steps), **kw)


def _same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_dualreal_previews_cadence_files_and_identical_weights(tiny, data, tmp_path):
    seen: list = []
    plain = _dualreal(tiny, data)
    pv = _previewer(tiny, tmp_path / "previews", every=2, seen=seen)
    withp = _dualreal(tiny, data, preview=pv)
    _same(plain.adapters.state_dict, withp.adapters.state_dict)  # previews leave the training bit-identical
    assert [r["loss"] for r in plain.losses] == [r["loss"] for r in withp.losses]
    assert [s for s, _ in seen] == [2, 4, 5]  # every 2 steps and after the last
    assert seen[0][1][0] == 9 and tuple(seen[0][1][1:]) == (64, 96, 3)  # a short video [F, H, W, 3]
    names = sorted(p.name for p in (tmp_path / "previews").iterdir())
    assert names == ["preview_000002.webp", "preview_000004.webp", "preview_000005.webp", "previews.png"]
    with Image.open(tmp_path / "previews" / "preview_000004.webp") as im:
        assert getattr(im, "n_frames", 1) == 9
    with Image.open(tmp_path / "previews" / "previews.png") as im:
        assert im.size[1] >= 3 * 128  # one row per preview
    assert withp.preview_seconds > 0 and pv.count == 3


def test_previews_see_the_current_weights(tiny, data):
    frames: list = []
    pv = _previewer(tiny, every=2, seen=None)
    pv.options.on_preview = lambda s, f: frames.append(f)
    _dualreal(tiny, data, steps=4, preview=pv)
    assert not torch.equal(frames[0], frames[1])  # later weights, another video (same seed and prompt)


# ------------------------------------------------------------------------------------------ every other trainer


def _clip(seed=0, shape=(9, 64, 96, 3)):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _opts(seen, folder=None, every=2):
    return PreviewOptions(every=every, steps=2, cfg=1.0, folder=folder, on_preview=lambda s, f: seen.append(s))


def test_motion_lora_previews_cadence_and_identical_weights(tiny, tmp_path):
    from dual_adapter import lora as L

    kw = dict(clips=[_clip()], prompt=PROMPT, spec=L.LoraSpec(rank=2, alpha=2.0, dropout=0.1),
              cfg=L.lora_train_config(steps=3, gradient_checkpointing=False), spatial_path=True)
    plain, _ = L.train_lora(tiny, **kw)
    seen: list = []
    withp, res = L.train_lora(tiny, preview=_opts(seen, tmp_path / "p"), **kw)
    _same(plain.state_dict, withp.state_dict)  # dropout on: the preview's eval mode and forked RNG leave it alone
    assert seen == [2, 3] and res.preview_seconds > 0
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["preview_000002.webp", "preview_000003.webp",
                                                                   "previews.png"]


def test_selective_lora_passes_previews_through(tiny):
    from dual_adapter import customttt as C
    from dual_adapter.lora import lora_train_config

    seen: list = []
    C.train_selective_lora(tiny, "appearance", [0], prompt="dog *", photos=[_clip()[0]],
                           cfg=lora_train_config(steps=2, gradient_checkpointing=False), preview=_opts(seen, every=1))
    assert seen == [1, 2]


def test_ttt_merge_previews_and_identical_weights(tiny):
    from dual_adapter import customttt as C
    from helpers import random_lora as rand_lora

    a = rand_lora(tiny, [0], ["attn1.to_v"], 1)
    m = rand_lora(tiny, [1], ["attn1.to_v"], 2)
    cfg = C.TTTConfig(steps=3, lr=1e-3, teacher_steps=1, teacher_schedule=3, eval_draws=0, dropout=0.1)
    kw = dict(appearance_prompt="dog *", motion_prompt="turning", prompt="dog * turning", config=cfg)
    plain = C.ttt_merge(tiny, a, m, **kw)
    seen: list = []
    withp = C.ttt_merge(tiny, a, m, preview=_opts(seen), **kw)
    _same(plain.lora.state_dict, withp.lora.state_dict)
    assert seen == [2, 3]


def test_unet_motion_lora_previews_and_identical_weights(tmp_path):
    from dual_adapter import unet_motion as UM
    from dual_adapter.backbones import load_backbone

    u3d = load_backbone("tiny-unet3d")
    x = _clip(1, (2, 32, 32, 3))
    cfg = UM.UNetMotionTrainConfig(rank=2, steps=3, lr=1e-2, dropout=0.1, spatial_path=True, spatial_skip_prob=0.0)
    seen: list = []
    with torch.random.fork_rng():  # the LoRA's random init draws from the global generator
        torch.manual_seed(0)
        plain, _, _ = UM.train_unet_motion_lora(u3d, [x], "a car turns", cfg)
        torch.manual_seed(0)
        withp, _, _ = UM.train_unet_motion_lora(u3d, [x], "a car turns", cfg, preview=_opts(seen, tmp_path))
    _same(plain.state_dict, withp.state_dict)
    assert seen == [2, 3] and (tmp_path / "previews.png").is_file()


def test_animatediff_customttt_stages_preview(tmp_path):
    from dual_adapter import customttt_unet as CT
    from dual_adapter.backbones import load_backbone

    ad = load_backbone("tiny-animatediff")
    cfg = CT.CustomTTTUNetConfig(appearance_steps=2, motion_steps=2, ttt_steps=2, rank=2, optimizer="adamw",
                                 num_frames=2, height=32, width=32, teacher_steps=1, sampler_steps=2)
    seen: list = []
    run = CT.StageRun(preview=_opts(seen, every=1))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        plain, _ = CT.train_appearance_lora(ad, [_clip(2, (32, 32, 3))], "a photo of dog *", cfg)
        torch.manual_seed(0)
        withp, _ = CT.train_appearance_lora(ad, [_clip(2, (32, 32, 3))], "a photo of dog *", cfg, run=run)
    _same(plain.state_dict, withp.state_dict)
    assert seen == [1, 2]


# ------------------------------------------------------------------------------------------ commands


def test_train_lora_command_writes_previews_beside_the_output(tmp_path, capsys):
    from pathlib import Path

    from dual_adapter.cli import main

    guitar = Path(__file__).resolve().parents[2] / "examples" / "guitar.mp4"
    out = tmp_path / "m.safetensors"
    assert main(["train-lora", "--model", "tiny", "--motion", str(guitar), "--prompt", PROMPT, "--rank", "2",
                 "--steps", "3", "--no-gradient-checkpointing", "--preview-every", "2", "--out", str(out)]) == 0
    run = tmp_path / "runs" / "lora" / "m_00001_"
    assert sorted(p.name for p in (run / "previews").iterdir()) == ["preview_000002.webp", "preview_000003.webp",
                                                                    "previews.png"]
    assert "% of the training time" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*state.safetensors"))  # a finished run keeps no state file
