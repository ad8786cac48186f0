"""U-Net TAP as the SMA authors published it: their trainable set (``to_k`` + ``to_out.0`` of every temporal
attention, ``transformer_in`` included) with the spatial path and the debiased loss on, by default in the library,
the command line and the node alike; the single-frame spatial path runs the U-Net without its temporal modules."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dual_adapter import unet_motion as UM
from dual_adapter.backbones import load_backbone

PROMPT = "a person is playing guitar"


def authors_targets(bb) -> set[str]:
    """The authors' rule (``utils/lora.py``: inside every ``TransformerTemporalModel``, the Linear layers whose name
    contains ``attn1.to_k``, ``attn2.to_k``, ``attn1.to_out`` or ``attn2.to_out``), applied to the module tree."""
    out = set()
    for name, anc in bb.denoiser.named_modules():
        if type(anc).__name__ != bb.temporal_container:
            continue
        for sub, m in anc.named_modules():
            if isinstance(getattr(m, "base_layer", m), nn.Linear) and any(
                    k in sub for k in ("attn1.to_k", "attn2.to_k", "attn1.to_out", "attn2.to_out")):
                out.add(f"{name}.{sub}")
    return out


@pytest.fixture(scope="module")
def u3d():
    return load_backbone("tiny-unet3d")


def _clip(frames=3):
    return torch.rand(frames, 32, 32, 3, generator=torch.Generator().manual_seed(0))


def test_library_default_trains_the_authors_modules_and_never_the_values(u3d):
    cfg = UM.UNetMotionTrainConfig(rank=2, steps=2, lr=1e-2, dropout=0.0, checkpoint_every=0)
    assert cfg.spatial_path and cfg.debiased_loss
    want = authors_targets(u3d)
    assert any(n.startswith("transformer_in.") for n in want) and any(".attn2.to_out.0" in n for n in want)
    v_before = {n: m.to_v.weight.clone() for n, m in u3d.attention_modules("temporal").items()}
    motion, spatial, losses = UM.train_unet_motion_lora(u3d, [_clip()], PROMPT, cfg)
    assert set(motion.modules) == want
    assert motion.metadata["preset"] == "k_out" and motion.metadata["debiased_loss"] and motion.metadata["spatial_path"]
    assert spatial is not None and "loss_spatial" in [k for r in losses for k in r]
    assert not [m for m in motion.modules if m.endswith(("to_v", "to_q"))]
    assert all(torch.equal(m.to_v.weight, v_before[n]) for n, m in u3d.attention_modules("temporal").items())


def test_the_q_k_reading_is_still_a_named_preset(u3d):
    assert UM.PRESETS["tap"] == ("to_q", "to_k")
    names = UM.motion_lora_targets(u3d, "tap")
    assert names and {n.rsplit(".", 1)[-1] for n in names} == {"to_q", "to_k"}


def test_cli_defaults_are_the_library_defaults():
    from dual_adapter.cli import build_parser
    from dual_adapter.commands.unet import unet_train_config

    base = ["train-lora", "--model", "tiny-unet3d", "--motion", "c.mp4", "--prompt", PROMPT, "--out", "m.safetensors"]
    cfg = unet_train_config(build_parser().parse_args(base))
    lib = UM.UNetMotionTrainConfig()
    for k in ("preset", "spatial_path", "debiased_loss", "rank", "dropout", "lr", "weight_decay", "steps"):
        assert getattr(cfg, k) == getattr(lib, k), k
    off = unet_train_config(build_parser().parse_args(base + ["--no-spatial-path", "--no-debiased-loss",
                                                              "--preset", "tap"]))
    assert (off.spatial_path, off.debiased_loss, off.preset) == (False, False, "tap")
    # on CogVideoX the flags stay off unless given
    ns = build_parser().parse_args(["train-lora", "--motion", "c.mp4", "--prompt", PROMPT, "--out", "m.safetensors"])
    assert not ns.spatial_path and not ns.debiased_loss


def test_node_defaults_are_the_library_defaults(u3d):
    from dual_adapter.dispatch import motion_preset
    from nodes.lora_nodes import TrainMotionLoRA
    from nodes.old_names import NODE_CLASS_MAPPINGS as OLD

    assert motion_preset(u3d, TrainMotionLoRA.INPUT_TYPES()["required"]["preset"][1]["default"]) == \
        UM.UNetMotionTrainConfig.preset  # the one node's 'auto' is the authors' preset on a U-Net
    req = OLD["DualAdapterUNetTrainMotionLoRA"].INPUT_TYPES()["required"]
    lib = UM.UNetMotionTrainConfig()
    assert req["preset"][1]["default"] == lib.preset
    assert req["spatial_path"][1]["default"] is lib.spatial_path is True
    assert req["debiased_loss"][1]["default"] is lib.debiased_loss is True
    assert set(UM.motion_lora_targets(u3d, req["preset"][1]["default"])) == authors_targets(u3d)


def _perturb_temporal(bb, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in bb.temporal_modules().values():
            for p in m.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.5)


def test_single_frame_through_the_u_net_without_temporal_modules():
    a, b = load_backbone("tiny-unet3d"), load_backbone("tiny-unet3d")
    _perturb_temporal(b)
    kinds = {type(m).__name__ for m in a.temporal_modules().values()}
    assert kinds == {"TransformerTemporalModel", "TemporalConvLayer"} and "transformer_in" in a.temporal_modules()
    x = torch.randn(1, 4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    t, e = torch.tensor([500]), a.encode_prompt(PROMPT)
    with torch.no_grad():
        plain = [bb.predict(x, t, e) for bb in (a, b)]
        assert not torch.allclose(plain[0], plain[1])  # diffusers runs the temporal modules on one frame
        skipped = []
        for bb in (a, b):
            with bb.without_temporal_modules() as d:
                skipped.append(bb.predict(x, t, e, denoiser=d))
        assert torch.equal(skipped[0], skipped[1])
        assert torch.equal(a.predict(x, t, e), plain[0])  # on leaving, the modules run again


def test_animatediff_bypass_skips_the_motion_modules():
    a, b = load_backbone("tiny-animatediff"), load_backbone("tiny-animatediff")
    _perturb_temporal(b)
    assert {type(m).__name__ for m in a.temporal_modules().values()} == {"AnimateDiffTransformer3D"}
    x = torch.randn(1, 4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    t, e = torch.tensor([500]), a.encode_prompt(PROMPT)
    with torch.no_grad(), a.without_temporal_modules(), b.without_temporal_modules():
        assert torch.equal(a.predict(x, t, e), b.predict(x, t, e))


def test_spatial_lora_learns_from_the_u_net_without_temporal_modules():
    """The spatial LoRA after a step is the same whatever the temporal modules' weights: its loss never ran them."""
    a, b = load_backbone("tiny-unet3d"), load_backbone("tiny-unet3d")
    _perturb_temporal(b)
    cfg = UM.UNetMotionTrainConfig(rank=2, steps=1, lr=1e-2, dropout=0.0, spatial_skip_prob=0.0, checkpoint_every=0)
    res = []
    for bb in (a, b):
        torch.manual_seed(0)
        res.append(UM.train_unet_motion_lora(bb, [_clip()], PROMPT, cfg))
    (ma, sa, la), (mb, sb, lb) = res
    assert la[0]["loss_spatial"] == lb[0]["loss_spatial"]
    assert all(torch.equal(sa.state_dict[k], sb.state_dict[k]) for k in sa.state_dict)
    assert la[0]["loss_temporal_mse"] != lb[0]["loss_temporal_mse"]  # the temporal path does use them
