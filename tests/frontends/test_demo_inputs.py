"""What a new user meets first in ``python -m dual_adapter demo``: a folder of motion clips is taken as a folder of
photos is; ``--help`` offers only models the demo runs; a wrong ``--model`` names the built-in models (``mini``
included) or says it is a U-Net; a demo that fails leaves no empty ``output/demo_NNNNN_/``."""
from __future__ import annotations

import pytest
import torch

from dual_adapter.cli import main


def _demo_dirs(out_dir):
    return sorted(p.name for p in out_dir.rglob("demo_*"))


def test_a_folder_of_motion_clips_is_its_clips_in_name_order(tmp_path):
    from dual_adapter import media
    from dual_adapter.dualreal import load_motion_clips

    folder = tmp_path / "clips"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for name in ("10.mp4", "2.mp4"):
        media.write_video(torch.rand(9, 32, 32, 3, generator=g), folder / name, fps=8)
    (folder / "notes.txt").write_text("not a clip")
    clips = load_motion_clips([folder], 9)
    assert [c.shape for c in clips] == [torch.Size([9, 32, 32, 3])] * 2
    assert torch.equal(clips[0], load_motion_clips([folder / "2.mp4"], 9)[0])  # natural order: 2 before 10
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Exception, match="contains no clip files"):
        load_motion_clips([empty], 9)


def test_demo_help_offers_no_unet(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = capsys.readouterr().out
    assert "'mini'" in text and "tiny-unet3d" not in text and "tiny-animatediff" not in text


@pytest.mark.parametrize("model, words", [("minni", ["did you mean 'mini'", "'tiny'", "'mini'"]),
                                          ("tiny-unet3d", ["UNet3D", "not CogVideoX", "CogVideoX models only", "'mini'"]),
                                          ("tiny-animatediff", ["AnimateDiff", "CogVideoX models only"])])
def test_demo_with_a_wrong_model_says_so_and_leaves_no_folder(model, words, out_dir, capsys):
    assert main(["demo", "--model", model]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert _demo_dirs(out_dir) == []


def test_a_demo_that_fails_after_reserving_its_folder_removes_it(out_dir, tmp_path, capsys):
    assert main(["demo", "--model", "tiny", "--motion", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert _demo_dirs(out_dir) == []
