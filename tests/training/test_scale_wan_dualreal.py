"""benchmarks/scale.py counts DualReal on Wan through the pack's own Wan DualReal patch: the model it counts has
DA-blocks, and the parameters it counts are those of the adapters the patch builds for that model (StageBlender
reading Wan's ``freq_dim`` sinusoidal features, not the width D)."""
from __future__ import annotations

import pytest

from test_scale_wan import _small, scale  # noqa: F401  (the module fixture and the small Wan config)

pytestmark = pytest.mark.usefixtures("one_thread")


def _real_adapters(cfg):
    """The adapters the library builds for a real (CPU) Wan transformer of ``cfg``: what the trainer trains."""
    from diffusers import WanTransformer3DModel

    from dual_adapter.dualreal import DualRealAdapters, DualRealConfig

    tr = WanTransformer3DModel(**cfg["model"])
    return DualRealAdapters(DualRealConfig.for_transformer(tr, groups=min(7, cfg["model"]["num_layers"])))


def _n(params):
    return sum(p.numel() for p in params)


def test_wan_dualreal_counted_through_the_real_patch(scale):
    from dual_adapter.dualreal.patch import DABlock

    cfg = _small(scale)
    ad = _real_adapters(cfg)
    assert ad.config.time_embed_dim == 256  # Wan's freq_dim
    model, params, batch, T = scale.build_wan_method(cfg, "dualreal_motion_b1")
    assert all(isinstance(b, DABlock) for b in model.blocks)
    assert scale._dualreal_context(model).reference is not None  # the motion phase runs W_cond
    ctrl = _n(ad.controller_parameters())
    assert _n(params) == _n(ad.motion_parameters()) + ctrl
    _, params_id, _, T_id = scale.build_wan_method(cfg, "dualreal_identity_b1")
    assert T_id == 1 and _n(params_id) == _n(ad.identity_parameters()) + ctrl
    f = scale.count_wan_flops(cfg, "dualreal_motion_b1")
    assert f["trainable_params"] == _n(params) and f["flops"] > 0
    s0, s1 = scale.count_wan_flops(cfg, "sampling_base"), scale.count_wan_flops(cfg, "sampling_dualreal")
    assert s1["flops"] > s0["flops"]


def test_wan_dualreal_memory_holds_every_adapter_in_the_optimiser(scale):
    cfg = _small(scale)
    ad = _real_adapters(cfg)
    mem = scale.measure_wan_memory(cfg, "dualreal_identity_b1")
    assert mem["trainable_params"] == _n(ad.parameters())  # both phases' adapters and the StageBlender
    state, _ = scale._optimizer_bytes(list(ad.parameters()), "adamw", True)
    assert mem["optimizer_state_gib_adamw"] == pytest.approx(state / 2 ** 30)
    assert mem["fwd_bwd_peak_gib"] > mem["weights_gib"] > 0
