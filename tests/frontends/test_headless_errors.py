"""The headless runner names the failing node for any error."""
from __future__ import annotations

import json

import pytest
import torch

from dual_adapter.errors import DualAdapterError

from helpers import ROOT


def test_headless_run_names_the_failing_node_for_any_error(classes):
    from dual_adapter.graph import run_workflow

    class Boom:
        RETURN_TYPES = ()
        FUNCTION = "go"
        OUTPUT_NODE = True

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {}}

        def go(self):
            return 1 / 0

    with pytest.raises(DualAdapterError, match=r"node 7 \(Boom\) failed: ZeroDivisionError"):
        run_workflow({"7": {"class_type": "Boom", "inputs": {}}}, {"Boom": Boom})
    wf = json.loads((ROOT / "workflows" / "api" / "generate_mini.json").read_text())
    loader = next(k for k, v in wf.items() if v["class_type"] == "DualAdapterLoadVideoModel")
    wf[loader]["inputs"]["device"] = "cuda" if not torch.cuda.is_available() else "cpu"
    wf[loader]["inputs"]["model"] = "tiny-nope" if torch.cuda.is_available() else "tiny"
    with pytest.raises(DualAdapterError, match=rf"node {loader} \(DualAdapterLoadVideoModel\)"):
        run_workflow(wf, classes)
