"""Model names resolve in one place (``dual_adapter.models``), above the backbones, the miniature world and the
native interop; the backbone itself loads tiny variants and diffusers folders only."""
from __future__ import annotations

import importlib
import sys
import warnings

import pytest

from dual_adapter.errors import DualAdapterError


def test_models_resolves_every_kind_of_name():
    from dual_adapter import models
    from dual_adapter.backbones.cogvideox import CogVideoXBackbone

    assert models.load_model("tiny").name == "tiny"
    mini = models.load_backbone("mini")
    assert isinstance(mini, CogVideoXBackbone) and mini.bundle.name == "mini"
    assert type(models.load_backbone("tiny-unet3d")).__name__ != "CogVideoXBackbone"
    assert models.inspect_model("mini").name == "mini"
    assert "mini" in models.BUILTIN_MODELS and "tiny" in models.BUILTIN_MODELS


def test_the_backbone_refuses_what_only_models_resolves(tmp_path):
    from dual_adapter.backbones import cogvideox

    with pytest.raises(DualAdapterError, match="dual_adapter.models"):
        cogvideox.load("mini")
    with pytest.raises(DualAdapterError, match="dual_adapter.models.load_cogvideox"):
        _load_folder_with_file(cogvideox, tmp_path)


def _load_folder_with_file(cogvideox, tmp_path):
    """A complete tiny diffusers folder, loaded with a native file name but no loaded transformer."""
    import json

    import torch
    from safetensors.torch import save_file

    tiny = cogvideox.build_tiny()
    root = tmp_path / "m"
    tiny.transformer.save_pretrained(root / "transformer", safe_serialization=True)
    tiny.vae.save_pretrained(root / "vae", safe_serialization=True)
    tiny.text_encoder.save_pretrained(root / "text_encoder", safe_serialization=True)
    tiny.tokenizer.save_pretrained(root / "tokenizer")
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(tiny.scheduler_config))
    f = tmp_path / "t.safetensors"
    save_file({"x": torch.zeros(1)}, str(f), metadata={"config": json.dumps(dict(tiny.transformer.config))})
    cogvideox.load_cogvideox(root, dtype="fp32", device="cpu", transformer_file=f)


def test_the_deprecated_re_export_still_gives_the_old_names():
    sys.modules.pop("dual_adapter.backbone", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = importlib.import_module("dual_adapter.backbone")
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    from dual_adapter import models
    from dual_adapter.backbones import cogvideox

    assert old.load_model is models.load_model and old.load_cogvideox is models.load_cogvideox
    assert old.encode_prompt is cogvideox.encode_prompt and old.CogVideoXBundle is cogvideox.CogVideoXBundle
    assert sorted(old.__all__) == sorted(n for n in old.__all__ if hasattr(old, n))
