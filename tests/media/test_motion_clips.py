"""Motion clips: a still is refused as a motion clip by every trainer, and a looped clip is announced."""
from __future__ import annotations

import pytest
import torch

from dual_adapter.errors import DualAdapterError

from helpers import (
    ROOT,
    stills,  # noqa: F401  (the fixture: a photo and a 1-frame clip)
)


def test_a_still_is_refused_as_a_motion_clip(stills, classes, out_dir):
    from dual_adapter import media

    for p in stills:
        with pytest.raises(DualAdapterError, match="still"):
            media.load_clip(p, num_frames=9, fps=8.0, require_motion=True)
    # through the nodes: Load Clip Frames loops the photo to 9 identical frames; the trainers refuse them
    frames = media.load_clip(stills[0], num_frames=9, fps=8.0)[0]
    (model,) = classes["DualAdapterLoadVideoModel"]().load("tiny")
    with pytest.raises(DualAdapterError, match="still"):
        classes["DualAdapterTrainMotionLoRA"]().train(model, frames, "a dog", steps=1)
    with pytest.raises(DualAdapterError, match="still"):
        classes["DualRealTrain"]().train(model, frames[:1], "dog *", frames, "a dog", 1, 1e-3, 0.5, 8, 1,
                                         "official", 0, "still")
    with pytest.raises(DualAdapterError, match="still"):
        classes["DualAdapterTrainSelectiveLoRA"]().train(model, "motion", "a dog", steps=1, clip=frames[:1])


def test_a_still_is_refused_by_the_u_net_motion_trainers(classes, out_dir):
    """The U-Net trainers use the same check as the CogVideoX ones (media.check_motion_frames)."""
    still = torch.rand(1, 32, 32, 3).expand(4, -1, -1, -1).contiguous()  # 4 identical frames
    (unet3d,) = classes["DualAdapterUNetVideoLoader"]().load("tiny-unet3d")
    with pytest.raises(DualAdapterError, match="still"):
        classes["DualAdapterUNetTrainMotionLoRA"]().train(unet3d, still, "a dog", steps=1)
    (animatediff,) = classes["DualAdapterUNetVideoLoader"]().load("tiny-animatediff")
    with pytest.raises(DualAdapterError, match="still"):
        classes["DualAdapterTrainSelectiveLoRA"]().train(animatediff, "motion", "a dog", steps=1, clip=still)


def test_a_looped_clip_is_announced_and_the_policy_is_a_cli_option(caplog, capsys, tmp_path):
    from dual_adapter import media
    from dual_adapter.cli import main

    clip = ROOT / "examples" / "guitar.mp4"  # 33 frames at 8 fps
    with caplog.at_level("WARNING", logger="dual_adapter.media"):
        media.load_clip(clip, num_frames=49, fps=8.0)
    assert "only 33 of the 49 frames" in caplog.text and "looped" in caplog.text
    rc = main(["train-lora", "--motion", str(clip), "--prompt", "x", "--frames", "49", "--short-policy", "error",
               "--out", str(tmp_path / "o.safetensors")])
    assert rc == 2 and "short_policy='error'" in capsys.readouterr().err
