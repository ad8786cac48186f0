"""What a node offers when added from the menu: Load CogVideoX picks a model that draws something (the first model
folder found, else the pretrained mini; never a random tiny), Load Clip Frames has an upload button, and Train
DualReal's description names the checkpoint file as it is written (with its run counter)."""
from __future__ import annotations


def test_load_cogvideox_defaults_to_a_real_model_else_mini(out_dir, tmp_path):
    from nodes.core_nodes import LoadVideoModel

    def default():
        return LoadVideoModel.INPUT_TYPES()["required"]["model"][1]["default"]

    assert default() == "mini"
    (tmp_path / "models" / "CogVideo" / "CogVideoX-5b").mkdir(parents=True)
    assert default() == "CogVideoX-5b"
    assert default() in LoadVideoModel.INPUT_TYPES()["required"]["model"][0]


def test_load_clip_frames_has_a_video_upload_button():
    from nodes.core_nodes import LoadClipFrames

    assert LoadClipFrames.INPUT_TYPES()["required"]["video"][1].get("video_upload") is True


def test_train_dualreal_description_names_the_counted_checkpoint():
    from nodes.dualreal_nodes import DualRealTrain

    assert "output/runs/dualreal/<name>_NNNNN_/" in DualRealTrain.DESCRIPTION
