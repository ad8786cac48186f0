"""The default StageBlender group count fits every model: the paper's 7, or one per block on a smaller model,
without the 'groups asked for a model with N blocks' warning (library, node, CLI and shipped workflows alike)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")


def test_default_options_give_a_small_model_the_groups_it_has(tiny, caplog):
    from dual_adapter.backbones.cogvideox import encode_prompt
    from dual_adapter.dualreal import DualRealData, DualRealOptions, train_dualreal_on_data
    from dual_adapter.training import TrainConfig

    g = torch.Generator().manual_seed(0)
    data = DualRealData(torch.randn(1, 1, 4, 8, 12, generator=g), torch.randn(1, 3, 4, 8, 12, generator=g),
                        encode_prompt(tiny, "dog *"), encode_prompt(tiny, "a dog runs"), None, "dog *", "a dog runs",
                        "test")
    with caplog.at_level(logging.WARNING):
        res = train_dualreal_on_data(tiny.transformer, tiny.scheduler_config, data, DualRealOptions(motion_batch=1),
                                     TrainConfig(steps=1, warmup_steps=0, checkpoint_every=0))
    assert res.adapters.config.groups == 4  # tiny has 4 blocks
    assert "weight groups asked" not in caplog.text


def test_node_cli_and_workflows_default_to_the_fitting_count():
    from dual_adapter.cli import build_parser
    from nodes import dualreal_nodes as N

    assert N.DualRealTrain.INPUT_TYPES()["required"]["groups"][1]["default"] == 0
    ns = build_parser().parse_args(["train-dualreal", "--subject", "p.png", "--identity-prompt", "x", "--motion",
                                    "c.mp4", "--motion-prompt", "y", "--out", "o.safetensors"])
    assert ns.groups == 0
    for wf in (ROOT / "workflows" / "api").glob("*.json"):
        for node in json.loads(wf.read_text()).values():
            if node["class_type"] == "DualRealTrain" and node["inputs"].get("model", [None])[0]:
                assert node["inputs"]["groups"] in (0, 1, 2, 4), (wf.name, node["inputs"]["groups"])
