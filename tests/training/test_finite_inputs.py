"""Non-finite inputs and outputs are refused by name, in training and sampling."""
from __future__ import annotations

import pytest
import torch

from dual_adapter.backbones.cogvideox import encode_prompt
from dual_adapter.dualreal import DualRealAdapters, DualRealAdapterSet, DualRealConfig, DualRealPatch
from dual_adapter.errors import DualAdapterError

from helpers import (
    fresh_tiny,  # noqa: F401  (the fixture bundle: a tiny model of this module's own)
    random_full_lora as _lora,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread in this module


def test_non_finite_inputs_and_outputs_are_refused(bundle, tmp_path):
    from dual_adapter.cli import main
    from dual_adapter.lora import LoraPatch
    from dual_adapter.sampling import decode_latents, sample

    emb = encode_prompt(bundle, "a dog")
    kw = dict(steps=2, seed=0, num_frames=5, height=32, width=48)
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(DualAdapterError, match="cfg"):
            sample(bundle, emb, cfg=bad, **kw)
    with pytest.raises(DualAdapterError, match="prompt embeddings.*non-finite"):
        sample(bundle, emb * float("nan"), cfg=1.0, **kw)
    mod = DualRealAdapters(DualRealConfig.for_transformer(bundle.transformer, groups=2))
    nan_ref = torch.full((1, 1024), float("nan"))
    with pytest.raises(DualAdapterError, match="reference embedding.*NaN"):
        DualRealPatch(mod, nan_ref)
    with pytest.raises(DualAdapterError, match="identity_scale"):
        DualRealPatch(mod, identity_scale=float("nan"))
    # diverged weights: refused when the patch is made, naming a tensor
    lf = _lora(bundle)
    sd = dict(lf.state_dict)
    k = next(iter(sd))
    sd[k] = sd[k].clone()
    sd[k][0, 0] = float("nan")
    from dual_adapter.lora import LoraFile

    with pytest.raises(DualAdapterError, match="diverged"):
        LoraPatch(LoraFile.from_state_dict(sd))
    broken = DualRealAdapters(DualRealConfig.for_transformer(bundle.transformer, groups=2))
    with torch.no_grad():
        broken.transformer_blocks[1].id_ff_adapter.up_linear.weight.fill_(float("inf"))
    with pytest.raises(DualAdapterError, match="diverged.*|transformer_blocks.1"):
        DualRealPatch(DualRealAdapterSet.from_module(broken))

    class NaNPatch:  # a patch whose output turns non-finite: caught at the step, never decoded to black
        def apply(self, tr):
            tr.proj_out.register_forward_hook(lambda m, i, o: o * float("nan"))

    with pytest.raises(DualAdapterError, match="non-finite.*step 1/2"):
        sample(bundle, emb, cfg=1.0, patches=[NaNPatch()], **kw)
    with pytest.raises(DualAdapterError, match="NaN"):
        decode_latents(bundle, torch.full((1, 2, 4, 4, 6), float("nan")))
    # the CLI: a clear error and a non-zero exit, no video
    out = tmp_path / "v.mp4"
    with pytest.raises(SystemExit) as e:  # refused while parsing (the guidance bounds of docs/limits.md)
        main(["generate", "--prompt", "a dog", "--cfg", "nan", "--steps", "1", "--out", str(out), "--quiet"])
    assert e.value.code == 2
    assert not out.exists()
