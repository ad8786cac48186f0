"""Training frees the accelerator of the text encoder and the VAE, and puts them back: one rule
(:meth:`VideoBackbone.released`) that the LoRA, DualReal and CustomTTT trainers all use.

The parts here report an accelerator device without one being present (a part records where it is sent), so the
rule is checked on a CPU-only machine.
"""
from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from dual_adapter.backbones.base import VideoBackbone

pytestmark = pytest.mark.usefixtures("one_thread")


class _Part(nn.Module):
    """A module that says it sits on ``cuda:0`` and records every move."""

    def __init__(self):
        super().__init__()
        self.dev, self.moves = torch.device("cuda", 0), []

    def parameters(self, recurse=True):
        yield types.SimpleNamespace(device=self.dev)

    def to(self, device):
        self.moves.append(str(device))
        self.dev = torch.device(device)
        return self


class _Backbone(VideoBackbone):
    kind = "parts"

    def __init__(self, cpu_offload=False):
        self.device, self.cpu_offload = "cuda:0", cpu_offload
        self.text_encoder, self.vae, self.denoiser = _Part(), _Part(), None


def test_released_moves_the_parts_out_and_back_also_on_an_error():
    bb = _Backbone()
    with bb.released("text_encoder", "vae"):
        assert bb.text_encoder.moves == ["cpu"] and bb.vae.moves == ["cpu"]
    assert bb.text_encoder.moves == ["cpu", "cuda:0"] and bb.vae.moves == ["cpu", "cuda:0"]

    bb = _Backbone()
    with pytest.raises(RuntimeError), bb.released("vae"):
        raise RuntimeError("training failed")
    assert bb.vae.moves == ["cpu", "cuda:0"] and bb.text_encoder.moves == []


@pytest.mark.parametrize("bb, when", [(_Backbone(cpu_offload=True), True), (_Backbone(), False)])
def test_nothing_moves_with_cpu_offload_or_when_not_asked(bb, when):
    with bb.released("text_encoder", "vae", when=when):
        pass
    assert bb.text_encoder.moves == [] and bb.vae.moves == []


def _recorder(monkeypatch):
    import contextlib

    calls = []
    real = VideoBackbone.released

    @contextlib.contextmanager
    def released(self, *parts, when=True):
        calls.append((sorted(parts), bool(when)))
        with real(self, *parts, when=when):
            yield

    monkeypatch.setattr(VideoBackbone, "released", released)
    return calls


def test_the_lora_and_dualreal_trainers_release_the_text_encoder_and_the_vae(tiny, monkeypatch):
    from dual_adapter import lora
    from dual_adapter.dualreal import train_dualreal
    from dual_adapter.training import TrainConfig

    calls = _recorder(monkeypatch)
    g = torch.Generator().manual_seed(0)
    clip = torch.rand(9, 64, 96, 3, generator=g)
    cfg = lora.lora_train_config(steps=1, gradient_checkpointing=False, checkpoint_every=0)
    lora.train_lora(tiny, clips=[clip], prompt="a person is playing guitar", spec=lora.LoraSpec(rank=2), cfg=cfg)
    assert calls == [(["text_encoder", "vae"], True)]

    calls.clear()
    train_dualreal(tiny, [clip[0]], "dog *", [clip], "a person is playing guitar",
                   train=TrainConfig(steps=1, warmup_steps=0, checkpoint_every=0, gradient_checkpointing=False))
    assert calls == [(["text_encoder", "vae"], True)]
