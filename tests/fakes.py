"""Two fake backbones, defined outside the library and registered through
:func:`dual_adapter.backbones.register_backbone`: a DiT (:class:`FakeDiTBackbone`) and a U-Net
(:class:`FakeUNetBackbone`). They implement :class:`~dual_adapter.backbones.base.VideoBackbone` and nothing else, so
a method that runs on them runs through the interface alone (docs/backbones.md, "Adding a backbone").

Both are tiny (width 16, a few blocks) and deterministic: the "VAE" average-pools 8 x 8 pixels, the "text encoder"
embeds the bytes of the prompt. Use them with :func:`registered`::

    with registered(FakeDiTBackbone) as bb:
        ...
"""
from __future__ import annotations

import contextlib
import math
import types

import torch
import torch.nn.functional as F
from torch import nn

from dual_adapter.backbones import BlockInfo, VideoBackbone
from dual_adapter.backbones.base import check_role
from dual_adapter.errors import DualAdapterError

D, TEXT_DIM, TIME_DIM, CHANNELS, TEXT_LEN = 16, 8, 8, 4, 6


def time_features(t: torch.Tensor, dim: int = TIME_DIM) -> torch.Tensor:
    """Sinusoidal features ``[B, dim]`` of timesteps ``[B]`` (0..1000)."""
    freqs = torch.exp(-math.log(1000.0) * torch.arange(dim // 2, dtype=torch.float32) / (dim // 2))
    a = t.float().view(-1, 1) * freqs.to(t.device).view(1, -1)
    return torch.cat([a.sin(), a.cos()], -1)


class FakeAttention(nn.Module):
    """One-head attention with diffusers' projection names (``to_q``, ``to_k``, ``to_v``, ``to_out.0``); a
    cross-attention when ``context_dim`` is given."""

    def __init__(self, dim: int = D, context_dim: int | None = None):
        super().__init__()
        c = context_dim or dim
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(c, dim), nn.Linear(c, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])

    def forward(self, x, context=None):
        kv = x if context is None else context
        a = torch.softmax(self.to_q(x) @ self.to_k(kv).transpose(1, 2) / x.shape[-1] ** 0.5, -1)
        return self.to_out[0](a @ self.to_v(kv))


# ------------------------------------------------------------------------------ the DiT


class FakeDiTBlock(nn.Module):
    """AdaLN-modulated self-attention over every frame's tokens (gated), text cross-attention, gated feed-forward."""

    def __init__(self, dim: int = D):
        super().__init__()
        self.modulation = nn.Linear(TIME_DIM, 6 * dim)
        self.norm1, self.attn1 = nn.LayerNorm(dim, elementwise_affine=False), FakeAttention(dim)
        self.norm2, self.attn2 = nn.LayerNorm(dim), FakeAttention(dim)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, hidden_states, encoder_hidden_states, temb):
        return dit_block(self, None, hidden_states, encoder_hidden_states, temb)


def dit_block(block, hooks, hidden_states, encoder_hidden_states, temb):
    """:class:`FakeDiTBlock`'s computation; with ``hooks`` (DualReal's DA-block) the adapter hooks are called as
    :meth:`~dual_adapter.backbones.base.VideoBackbone.adapted_block_forward` says."""
    if hooks is not None:
        hooks.begin(hidden_states, encoder_hidden_states, temb)
    sh1, sc1, g1, sh2, sc2, g2 = block.modulation(F.silu(temb)).unsqueeze(1).chunk(6, -1)
    n = block.norm1(hidden_states) * (1 + sc1) + sh1
    a = block.attn1(n)
    if hooks is not None and (p := hooks.params("attn", a.dtype)) is not None:
        a = hooks.apply(a, n, p)
    h = hidden_states + g1 * a
    h = h + block.attn2(block.norm2(h), encoder_hidden_states)
    n = block.norm3(h) * (1 + sc2) + sh2
    f = block.ff(n)
    if hooks is not None and (p := hooks.params("ff", f.dtype)) is not None:
        f = hooks.apply(f, n, p)
    return h + g2 * f


class FakeDiT(nn.Module):
    """Latents ``[B, F, C, h, w]`` -> tokens (one per latent pixel of every frame) -> blocks -> same shape."""

    def __init__(self, num_blocks: int = 4):
        super().__init__()
        self.patch_embed, self.text_proj = nn.Linear(CHANNELS, D), nn.Linear(TEXT_DIM, D)
        self.time_embed = nn.Sequential(nn.Linear(TIME_DIM, TIME_DIM), nn.SiLU(), nn.Linear(TIME_DIM, TIME_DIM))
        self.blocks = nn.ModuleList([FakeDiTBlock() for _ in range(num_blocks)])
        self.norm_out, self.proj_out = nn.LayerNorm(D), nn.Linear(D, CHANNELS)

    def forward(self, x, t, text):
        B, Fr, C, h, w = x.shape
        tok = self.patch_embed(x.permute(0, 1, 3, 4, 2).reshape(B, Fr * h * w, C))
        temb = self.time_embed(time_features(t.expand(B)))
        ctx = self.text_proj(text)
        for blk in self.blocks:
            tok = blk(tok, encoder_hidden_states=ctx, temb=temb)
        return self.proj_out(self.norm_out(tok)).reshape(B, Fr, h, w, C).permute(0, 1, 4, 2, 3)


# ------------------------------------------------------------------------------ the U-Net


class FakeSpatialTransformer(nn.Module):
    """Per-frame transformer: ``transformer_blocks[0]`` = self-attention ``attn1``, text cross-attention ``attn2``
    (text blocks only), feed-forward; residual inside."""

    def __init__(self, text: bool):
        super().__init__()
        blk = nn.Module()
        blk.norm1, blk.attn1 = nn.LayerNorm(D), FakeAttention(D)
        if text:
            blk.norm2, blk.attn2 = nn.LayerNorm(D), FakeAttention(D, TEXT_DIM)
        blk.norm3, blk.ff = nn.LayerNorm(D), nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D))
        self.transformer_blocks = nn.ModuleList([blk])

    def forward(self, h, context):
        b = self.transformer_blocks[0]
        h = h + b.attn1(b.norm1(h))
        if hasattr(b, "attn2"):
            h = h + b.attn2(b.norm2(h), context)
        return h + b.ff(b.norm3(h))


class FakeTemporalTransformer(nn.Module):
    """Attention across the frames at each latent pixel (``attn``); residual inside."""

    def __init__(self):
        super().__init__()
        self.norm, self.attn = nn.LayerNorm(D), FakeAttention(D)

    def forward(self, h, num_frames: int):
        BF, N, Dm = h.shape
        x = h.reshape(BF // num_frames, num_frames, N, Dm).transpose(1, 2).reshape(-1, num_frames, Dm)
        x = x + self.attn(self.norm(x))
        return x.reshape(BF // num_frames, N, num_frames, Dm).transpose(1, 2).reshape(BF, N, Dm)


class FakeUNetBlock(nn.Module):
    """A residual layer with the timestep, a spatial transformer (text enters where ``has_cross_attention``), a
    temporal transformer (``temp_attentions``)."""

    def __init__(self, text: bool):
        super().__init__()
        self.has_cross_attention = text
        self.time_proj, self.res = nn.Linear(D, D), nn.Linear(D, D)
        self.attentions = nn.ModuleList([FakeSpatialTransformer(text)])
        self.temp_attentions = nn.ModuleList([FakeTemporalTransformer()])

    def forward(self, hidden_states, temb, encoder_hidden_states=None, num_frames: int = 1):
        h = hidden_states + self.res(F.silu(hidden_states + self.time_proj(temb)[:, None]))
        h = self.attentions[0](h, encoder_hidden_states)
        return self.temp_attentions[0](h, num_frames)


class FakeUNet(nn.Module):
    """Latents ``[B, C, F, h, w]``; frames run through the blocks as a batch, text repeated per frame."""

    def __init__(self):
        super().__init__()
        self.conv_in, self.conv_out = nn.Linear(CHANNELS, D), nn.Linear(D, CHANNELS)
        self.time_embedding = nn.Linear(TIME_DIM, D)
        self.down_blocks = nn.ModuleList([FakeUNetBlock(True), FakeUNetBlock(False)])
        self.mid_block = FakeUNetBlock(True)
        self.up_blocks = nn.ModuleList([FakeUNetBlock(False), FakeUNetBlock(True)])

    def forward(self, x, t, text):
        B, C, Fr, h, w = x.shape
        tok = self.conv_in(x.permute(0, 2, 3, 4, 1).reshape(B * Fr, h * w, C))
        temb = self.time_embedding(time_features(t.expand(B))).repeat_interleave(Fr, 0)
        ctx = text.repeat_interleave(Fr, 0)
        for blk in [*self.down_blocks, self.mid_block, *self.up_blocks]:
            tok = blk(tok, temb, encoder_hidden_states=ctx, num_frames=Fr)
        return self.conv_out(tok).reshape(B, Fr, h, w, C).permute(0, 4, 1, 2, 3)


# ------------------------------------------------------------------------------ the backbones


class _FakeBackbone(VideoBackbone):
    """What both fakes share: the "VAE", the "text encoder", the schedules, the sizes."""

    denoiser_class: type = nn.Module
    default_size, vae_scale, latent_channels = (3, 32, 32), 8, CHANNELS

    def __init__(self, denoiser=None, scheduler_config=None):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.text_table = torch.randn(256, TEXT_DIM)
            if denoiser is None:  # a loaded model: frozen (a view of a given denoiser, e.g. a trainer's copy, is not)
                denoiser = self.denoiser_class().requires_grad_(False).eval()
        self.denoiser = denoiser
        self.vae, self.text_encoder, self.tokenizer = None, None, None
        self.name = f"tiny-{self.kind}"
        self.scheduler_config = dict(scheduler_config or {"num_train_timesteps": 1000,
                                                         "prediction_type": self.prediction_type})

    def encode_prompt(self, prompts):
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        ids = torch.zeros(len(prompts), TEXT_LEN, dtype=torch.long)
        for i, p in enumerate(prompts):
            b = list(p.encode())[:TEXT_LEN]
            ids[i, :len(b)] = torch.tensor(b, dtype=torch.long)
        return self.text_table[ids]

    def encode_frames(self, frames):
        x = F.avg_pool2d(frames.permute(0, 3, 1, 2).float(), self.vae_scale)  # [F, 3, h, w]
        lat = torch.cat([x, x.mean(1, keepdim=True)], 1) * 2 - 1            # [F, C, h, w]
        return lat[None] if self.latent_layout == "BFCHW" else lat.transpose(0, 1)[None]

    def latent_frames(self, num_frames):
        return int(num_frames)

    def check_video_size(self, num_frames, height, width):
        if height % self.vae_scale or width % self.vae_scale or num_frames < 1:
            raise DualAdapterError(f"video size {num_frames} x {height} x {width}: height and width must be multiples "
                                   f"of {self.vae_scale}")

    def width(self, denoiser=None):
        return D

    def predict(self, latents, t, text, denoiser=None):
        return self.pick_denoiser(denoiser)(latents, t, text)

    def noise_scheduler(self):
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.scheduler_config)

    def make_scheduler(self, name="ddim"):
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(self.scheduler_config)

    def text_entry_points(self, denoiser=None):
        return self.attention_modules("cross", denoiser)


class FakeDiTBackbone(_FakeBackbone):
    """A DiT: every block reads the text (cross-attention); TAP targets the self-attention over all frames;
    DualReal's DA-block wraps its blocks."""

    kind, family, latent_layout, prediction_type, motion_role = "fakedit", "Fake DiT", "BFCHW", "v_prediction", "joint"
    denoiser_class = FakeDiT

    def blocks(self, denoiser=None):
        d = self.pick_denoiser(denoiser)
        return [BlockInfo(f"blocks.{i}", "joint", i, b, True) for i, b in enumerate(d.blocks)]

    def attention_modules(self, role, denoiser=None):
        attr = {"joint": "attn1", "cross": "attn2"}.get(check_role(role))
        return {} if attr is None else {f"{b.name}.{attr}": getattr(b.module, attr) for b in self.blocks(denoiser)}

    def adapter_dims(self, denoiser=None):
        return D, len(self.pick_denoiser(denoiser).blocks), TIME_DIM

    def adapted_block_forward(self, block, hooks, state, *args, **kwargs):
        return dit_block(block, hooks, *args, **kwargs)


class FakeUNetBackbone(_FakeBackbone):
    """A U-Net: text enters the blocks with a cross-attention; TAP targets the temporal attentions."""

    kind, family, latent_layout, prediction_type, motion_role = "fakeunet", "Fake U-Net", "BCFHW", "epsilon", "temporal"
    lora_prefix = "unet"
    denoiser_class = FakeUNet

    def blocks(self, denoiser=None):
        d = self.pick_denoiser(denoiser)
        named = [(f"down_blocks.{i}", "down", i, b) for i, b in enumerate(d.down_blocks)]
        named += [("mid_block", "mid", 0, d.mid_block)]
        named += [(f"up_blocks.{i}", "up", i, b) for i, b in enumerate(d.up_blocks)]
        return [BlockInfo(n, s, i, b, b.has_cross_attention) for n, s, i, b in named]

    def attention_modules(self, role, denoiser=None):
        out = {}
        for b in self.blocks(denoiser):
            if check_role(role) == "temporal":
                out[f"{b.name}.temp_attentions.0.attn"] = b.module.temp_attentions[0].attn
            elif role in ("spatial", "cross"):
                tb = b.module.attentions[0].transformer_blocks[0]
                attr = "attn1" if role == "spatial" else "attn2"
                if hasattr(tb, attr):
                    out[f"{b.name}.attentions.0.transformer_blocks.0.{attr}"] = getattr(tb, attr)
        return out


class FakeUNetWithImageMode(FakeUNetBackbone):
    """The fake U-Net that also runs as an image model (MotionDirector's spatial path)."""

    kind, family = "fakeunet2", "Fake U-Net with an image mode"
    denoiser_class = type("FakeUNet2", (FakeUNet,), {})

    def spatial_transformers(self, denoiser=None):
        return {f"{b.name}.attentions.0": b.module.attentions[0] for b in self.blocks(denoiser)}

    @contextlib.contextmanager
    def without_temporal_modules(self, denoiser=None):
        d = self.pick_denoiser(denoiser)
        mods = [b.module.temp_attentions[0] for b in self.blocks(d)]
        for m in mods:
            m.forward = lambda h, num_frames: h
        try:
            yield d
        finally:
            for m in mods:
                del m.forward


@contextlib.contextmanager
def registered(*classes):
    """Register the fake backbone ``classes`` (:func:`dual_adapter.backbones.register_backbone`), yield an instance
    of the first (seeded weights), unregister them afterwards."""
    from dual_adapter import backbones

    for cls in classes:
        backbones.register_backbone(types.SimpleNamespace(
            KIND=cls.kind, FAMILY=cls.family, tiny_names=lambda cls=cls: (f"tiny-{cls.kind}",),
            detect=lambda folder: False, load=lambda name, dtype=None, device=None, cls=cls, **kw: cls(),
            owns=lambda d, cls=cls: type(d) is cls.denoiser_class,
            for_denoiser=lambda d, scheduler_config=None, cls=cls: cls(d, scheduler_config)))
    try:
        yield backbones.load_backbone(f"tiny-{classes[0].kind}")
    finally:
        for cls in classes:
            backbones.unregister_backbone(cls.kind)

