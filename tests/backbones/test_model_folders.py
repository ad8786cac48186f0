"""Model folders and devices are checked before any weight loads."""
from __future__ import annotations

import pytest
import torch

from dual_adapter.errors import DualAdapterError

from helpers import fake_model_folder as _fake_folder


def test_model_folder_configs_are_checked_before_loading(tiny, tmp_path):
    from dual_adapter import models

    cases = [
        (dict(transformer={"num_layers": "30"}), r"num_layers=\"30\".*positive integer"),
        (dict(transformer={"patch_size": None}), r"patch_size=null"),
        (dict(scheduler="{not json"), r"scheduler_config.json.*not valid JSON"),
        (dict(scheduler='{"beta_schedule": "banana"}'), r"does not make a CogVideoXDPMScheduler"),
        # channels that fit neither text-to-video (4 -> 4) nor image-to-video (8 -> 4) with the 4-channel VAE
        (dict(transformer={"in_channels": 6}), r"maps 6 -> 4 channels"),
    ]
    for k, (kw, msg) in enumerate(cases):
        root = _fake_folder(tmp_path / f"m{k}", tiny, **kw)
        with pytest.raises(DualAdapterError, match=msg):
            models.load_cogvideox(root, device="cpu")
    info = models.inspect_model(_fake_folder(tmp_path / "ok", tiny))  # what the CLI checks inputs against
    assert info.default_size == tiny.default_size and info.vae_scale_temporal == 4


def test_devices_are_checked(tiny):
    from dual_adapter import models
    from dual_adapter.backbones.base import check_device

    with pytest.raises(DualAdapterError, match="'banana' is not a device"):
        models.load_model("tiny", device="banana")
    with pytest.raises(DualAdapterError, match="CUDA"):
        check_device("cuda:99")
    if not torch.cuda.is_available():
        with pytest.raises(DualAdapterError, match="no CUDA GPU is visible"):
            models.load_model("tiny", device="cuda")
    assert check_device("auto") is None and check_device("cpu") == "cpu"
