"""Validation previews while training (dual_adapter/previews.py, the hook of training.train_loop): cadence and
files, the node's live preview, and weights bit-identical with and without previews, for every trainer.

CPU, tiny models, a few steps.
"""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from dual_adapter.backbone import encode_prompt
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
