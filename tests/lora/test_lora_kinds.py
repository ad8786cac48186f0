"""train-lora's defaults by kind: an appearance LoRA gets CustomTTT's defaults."""
from __future__ import annotations

import pytest

from helpers import ROOT


def test_appearance_lora_gets_customttt_defaults(tmp_path):
    from dual_adapter import lora
    from dual_adapter.cli import main
    from dual_adapter.commands.lora import _defaults

    assert _defaults("appearance", "adamw")["steps"] == 500 and _defaults("motion", "adamw")["steps"] == 1000
    out = tmp_path / "app.safetensors"
    assert main(["train-lora", "--subject", str(ROOT / "examples" / "dog"), "--prompt", "a photo of dog *",
                 "--steps", "1", "--rank", "4", "--quiet", "--out", str(out)]) == 0
    lf = lora.load_lora(out)
    assert "attn1.to_v" in lf.targets and lf.metadata["train"]["lr"] == pytest.approx(1e-4)
