"""Shared parts of the U-Net video backbones (ZeroScope/ModelScope UNet3D, AnimateDiff).

Both are latent U-Nets in the Stable Diffusion 1.x family: an ``AutoencoderKL`` applied frame by
frame (8x spatial, no temporal compression), a CLIP text encoder (77 tokens), epsilon prediction
on a scaled-linear / linear beta schedule, and ``down_blocks`` / ``mid_block`` / ``up_blocks`` whose
U-Net skip connections carry features from each down block to its mirror up block.
Latents are ``[B, C, F, h, w]`` (the diffusers U-Net layout, also ComfyUI's LATENT layout).

Not a backbone itself (the registry skips modules starting with ``_``).
"""
from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import DualAdapterError
from ..limits import check_config_files, check_video_size as check_size_bounds
from .base import BlockInfo, VideoBackbone, check_role

log = logging.getLogger(__name__)

CLIP_MAX_LEN = 77


def build_tiny_clip_tokenizer(vocab_size: int | None = None):
    """A CLIP-style tokenizer built offline with the ``tokenizers`` library (no download).

    Lower-cased character-level BPE with the CLIP end-of-word suffix ``</w>`` (every printable ASCII
    character, alone and as a word end; no merges), ``<|startoftext|>`` / ``<|endoftext|>`` around every
    sequence, padding with ``<|endoftext|>`` (as CLIP does), max length 77. The vocabulary is written out in
    a fixed order, so the ids are the same in every process (a trained BPE broke ties between equally frequent
    pairs differently from one Python process to the next). ``vocab_size`` is accepted for compatibility and
    ignored (the vocabulary has 190 entries).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    bos, eos = "<|startoftext|>", "<|endoftext|>"
    vocab = {bos: 0, eos: 1}
    for c in range(33, 127):
        vocab[chr(c)] = len(vocab)
        vocab[chr(c) + "</w>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=eos, end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.BPEDecoder(suffix="</w>")
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A {eos}", special_tokens=[(bos, 0), (eos, 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=eos,
                                   unk_token=eos, model_max_length=CLIP_MAX_LEN)


def build_tiny_text_and_vae(seed: int, latent_channels: int = 4, text_dim: int = 32):
    """Tiny seeded CLIP text encoder (+ its offline tokenizer) and ``AutoencoderKL`` (2x spatial)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tiny_clip_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=text_dim, intermediate_size=2 * text_dim, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=CLIP_MAX_LEN, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)).eval()
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                        latent_channels=latent_channels, norm_num_groups=4, layers_per_block=1).eval()
    return tokenizer, text_encoder, vae


def folder_class(folder: Path, part: str) -> str:
    """``_class_name`` of ``folder/part/config.json`` ('' when absent or unreadable)."""
    cfg = Path(folder) / part / "config.json"
    try:
        return str(json.loads(cfg.read_text()).get("_class_name", "")) if cfg.is_file() else ""
    except ValueError:
        return ""


def check_folder(folder: Path, parts: Sequence[str], family: str) -> None:
    """Raise :class:`DualAdapterError` listing the missing parts of a diffusers folder for ``family``."""
    missing = [p for p in parts if not (Path(folder) / p).is_dir()]
    if missing:
        raise DualAdapterError(f"{folder}: not a complete {family} folder; missing sub-folders: "
                               f"{', '.join(m + '/' for m in missing)}")


#: class names of the modules that mix frames (``without_temporal_modules`` makes them identities)
_TEMPORAL_CLASSES = ("TransformerTemporalModel", "TemporalConvLayer", "AnimateDiffTransformer3D")


def _passthrough(module: nn.Module):
    """A ``forward`` for ``module`` that returns its input in the output form its own forward has."""
    temporal_transformer = type(module).__name__ == "TransformerTemporalModel"

    def forward(hidden_states, *args, **kwargs):
        if not temporal_transformer:
            return hidden_states  # TemporalConvLayer, AnimateDiffTransformer3D return a tensor
        if kwargs.get("return_dict", True):
            from diffusers.models.transformers.transformer_temporal import TransformerTemporalModelOutput

            return TransformerTemporalModelOutput(sample=hidden_states)
        return (hidden_states,)

    return forward


def _eval_frozen(*mods):
    for m in mods:
        if m is not None:
            m.requires_grad_(False)
            m.eval()


class UNetVideoBackbone(VideoBackbone):
    """Common implementation of :class:`VideoBackbone` for diffusers video U-Nets.

    Attributes:
        denoiser: the U-Net (``UNet3DConditionModel`` or ``UNetMotionModel``).
        scheduler_config: the noise schedule (the folder's ``scheduler/scheduler_config.json``).
        sample_size: (frames, height, width) defaults for generation.
    """

    latent_layout = "BCFHW"
    lora_prefix = "unet"
    #: class names of the temporal-attention containers (LoRA / role lookup)
    temporal_container = "TransformerTemporalModel"
    #: attribute names of the temporal modules inside a block
    temporal_attr = "temp_attentions"
    #: text is repeated per frame by the caller (UNetMotionModel) or inside the model (UNet3D)
    repeat_text_per_frame = False
    #: frames per VAE call (the 2D VAE works frame by frame; chunks bound its memory)
    vae_chunk = 8

    def __init__(self, denoiser, vae, text_encoder, tokenizer, scheduler_config: dict, *, name: str,
                 device: str = "cpu", dtype: torch.dtype = torch.float32, sample_size=(8, 32, 32),
                 extra: dict | None = None):
        _eval_frozen(denoiser, vae, text_encoder)
        self.denoiser, self.vae, self.text_encoder, self.tokenizer = denoiser, vae, text_encoder, tokenizer
        self.scheduler_config = dict(scheduler_config)
        self.name, self.device, self.dtype = name, device, dtype
        self.sample_size = tuple(int(v) for v in sample_size)
        self.extra = dict(extra or {})
        self.prediction_type = self.scheduler_config.get("prediction_type", "epsilon")

    # ------------------------------------------------------------------ structure
    def _d(self, denoiser):
        return denoiser if denoiser is not None else self.denoiser

    def blocks(self, denoiser=None) -> list[BlockInfo]:
        d = self._d(denoiser)
        out = []
        for i, b in enumerate(d.down_blocks):
            out.append(BlockInfo(f"down_blocks.{i}", "down", i, b, bool(getattr(b, "has_cross_attention", False))))
        if d.mid_block is not None:
            out.append(BlockInfo("mid_block", "mid", 0, d.mid_block, True))
        for i, b in enumerate(d.up_blocks):
            out.append(BlockInfo(f"up_blocks.{i}", "up", i, b, bool(getattr(b, "has_cross_attention", False))))
        return out

    def text_layers(self, denoiser=None) -> list[BlockInfo]:
        """The blocks where text enters (a cross-attention reads the prompt), in forward order.

        These are CustomTTT's "layers" on a U-Net (this package's reading, see docs/unet.md): on SD1.5 /
        ZeroScope, 7 of them: ``down_blocks.0-2``, ``mid_block``, ``up_blocks.1-3``.
        """
        return [b for b in self.blocks(denoiser) if b.has_text]

    def attention_modules(self, role: str, denoiser=None) -> dict[str, nn.Module]:
        from diffusers.models.attention_processor import Attention

        check_role(role)
        d = self._d(denoiser)
        out: dict[str, nn.Module] = {}
        if role == "joint":
            return out
        for name, m in d.named_modules():
            if not isinstance(m, Attention):
                continue
            in_temporal = self._is_temporal(name)
            if role == "temporal" and in_temporal:
                out[name] = m
            elif not in_temporal and role in ("spatial", "cross"):
                if m.is_cross_attention == (role == "cross"):
                    out[name] = m
        return out

    def _is_temporal(self, name: str) -> bool:
        parts = name.split(".")
        return "transformer_in" in parts or self.temporal_attr in parts or "motion_modules" in parts

    def temporal_containers(self, denoiser=None) -> dict[str, nn.Module]:
        """Module name -> temporal transformer (``TransformerTemporalModel`` / ``AnimateDiffTransformer3D``)."""
        d = self._d(denoiser)
        return {n: m for n, m in d.named_modules() if type(m).__name__ == self.temporal_container}

    def temporal_modules(self, denoiser=None) -> dict[str, nn.Module]:
        """Module name -> every module that mixes frames: temporal transformers (``transformer_in`` and the
        blocks' ``temp_attentions`` on the UNet3D, the motion modules on AnimateDiff) and the UNet3D's
        temporal convolutions (``temp_convs``, ``TemporalConvLayer``)."""
        d = self._d(denoiser)
        return {n: m for n, m in d.named_modules() if type(m).__name__ in _TEMPORAL_CLASSES}

    @contextlib.contextmanager
    def without_temporal_modules(self, denoiser=None):
        """Run ``denoiser`` as an image U-Net: every :meth:`temporal_modules` entry passes its input through.

        This is what the SMA authors' U-Net does on a single frame (MotionDirector's spatial path):
        ``transformer_in``, the temporal convolutions and the temporal attentions are skipped when
        ``num_frames == 1`` (their ``models/unet_3d_condition.py`` and ``models/unet_3d_blocks.py``), where
        diffusers runs them. On AnimateDiff it bypasses the motion modules (CustomTTT's appearance LoRA is
        trained so). The modules are not called at all inside the block (their weights and LoRAs do not
        enter the output); on leaving, they run again.

        Yields:
            the denoiser.
        """
        d = self._d(denoiser)
        mods = list(self.temporal_modules(d).values())
        saved = [m.__dict__.get("forward") for m in mods]
        for m in mods:
            m.forward = _passthrough(m)
        try:
            yield d
        finally:
            for m, f in zip(mods, saved):
                if f is None:
                    m.__dict__.pop("forward", None)
                else:
                    m.forward = f

    def spatial_transformers(self, denoiser=None) -> dict[str, nn.Module]:
        """Module name -> spatial ``Transformer2DModel`` (spatial self-attention + text cross-attention)."""
        d = self._d(denoiser)
        return {n: m for n, m in d.named_modules() if type(m).__name__ == "Transformer2DModel"}

    def text_entry_points(self, denoiser=None) -> dict[str, nn.Module]:
        return self.attention_modules("cross", denoiser)

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_prompt(self, prompts) -> torch.Tensor:
        """CLIP last hidden state ``[B, 77, D_text]``; prompts longer than 77 tokens are truncated (logged)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
            raise DualAdapterError(f"prompt must be a string or a list of strings, got {type(prompts).__name__}")
        L = min(CLIP_MAX_LEN, int(getattr(self.tokenizer, "model_max_length", CLIP_MAX_LEN)))
        enc = self.tokenizer(list(prompts), padding="max_length", max_length=L, truncation=True,
                             return_tensors="pt")
        full = self.tokenizer(list(prompts), padding="longest", return_tensors="pt").input_ids
        if full.shape[-1] > L:
            log.warning("a prompt has %d tokens, more than CLIP's %d; truncated", full.shape[-1], L)
        dev = next(self.text_encoder.parameters()).device
        emb = self.text_encoder(enc.input_ids.to(dev))[0]
        return emb.to(self.device, self.dtype)

    # ------------------------------------------------------------------ schedulers / objective
    def noise_scheduler(self):
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.scheduler_config)

    def make_scheduler(self, name: str = "ddim"):
        """``ddim`` (the authors' sampler for both methods) or ``dpm`` (DPM-Solver++ multistep)."""
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

        if name == "ddim":
            return DDIMScheduler.from_config(self.scheduler_config)
        if name == "dpm":
            return DPMSolverMultistepScheduler.from_config(self.scheduler_config)
        raise DualAdapterError(f"scheduler {name!r}: expected 'ddim' or 'dpm'")

    def predict(self, latents, t, text, denoiser=None):
        """``latents [B, C, F, h, w]``, ``t [B]``, ``text [B, L, D]`` -> epsilon ``[B, C, F, h, w]``."""
        d = self._d(denoiser)
        if self.repeat_text_per_frame:
            text = text.repeat_interleave(latents.shape[2], dim=0)
        return d(latents, t, encoder_hidden_states=text, return_dict=False)[0]

    # ------------------------------------------------------------------ sizes and VAE
    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.denoiser.config.in_channels)

    @property
    def default_size(self):
        return self.sample_size

    def latent_frames(self, num_frames: int) -> int:
        return int(num_frames)  # the 2D VAE works frame by frame

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this: VAE factor x 2^(number of U-Net downsamplers)."""
        return self.vae_scale * 2 ** (len(self.denoiser.config.block_out_channels) - 1)

    def check_video_size(self, num_frames, height, width):
        check_size_bounds(num_frames, height, width)  # the upper bounds shared with the nodes and the CLI
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise DualAdapterError(f"frames={num_frames!r}: expected an integer >= 1 ({self.family} takes any "
                                   f"frame count; trained at {self.sample_size[0]})")
        limit = self.max_frames
        if limit and num_frames > limit:
            raise DualAdapterError(f"frames={num_frames}: {self.family} supports at most {limit} frames "
                                   f"(its temporal position table)")
        m = self.size_multiple
        for nm, v in (("height", height), ("width", width)):
            if isinstance(v, bool) or not isinstance(v, int) or v < m or v % m:
                near = max(m, int(v) // m * m) if isinstance(v, (int, float)) else m
                raise DualAdapterError(f"{nm}={v!r}: must be a positive multiple of {m} for this {self.family} "
                                       f"model (e.g. {near})")

    @property
    def max_frames(self) -> int | None:
        return None

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[F, H, W, 3]`` 0..1 -> scaled latents ``[1, C, F, H/s, W/s]`` (posterior mode unless ``generator``)."""
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise DualAdapterError(f"frames must be [F, H, W, 3] (0..1), got {tuple(frames.shape)}")
        m = self.size_multiple
        if frames.shape[1] % m or frames.shape[2] % m:
            raise DualAdapterError(f"frames are {frames.shape[1]}x{frames.shape[2]} px; height and width must be "
                                   f"multiples of {m} for this {self.family} model")
        dev = next(self.vae.parameters()).device
        vdt = next(self.vae.parameters()).dtype
        zs = []
        for i in range(0, frames.shape[0], self.vae_chunk):  # a few frames at a time: bounded VAE memory
            x = frames[i: i + self.vae_chunk].permute(0, 3, 1, 2).to(dev, vdt) * 2 - 1  # [f, 3, H, W]
            dist = self.vae.encode(x).latent_dist
            zs.append(dist.sample(generator) if generator is not None else dist.mode())
        z = torch.cat(zs, 0) * self.vae.config.scaling_factor
        return z.permute(1, 0, 2, 3).unsqueeze(0).to(self.device, self.dtype)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``[B, C, F, h, w]`` -> frames ``[B, F, H, W, 3]`` float 0..1."""
        if latents.ndim != 5 or latents.shape[1] != self.vae.config.latent_channels:
            raise DualAdapterError(f"latents must be [B, {self.vae.config.latent_channels}, F, h, w] for this "
                                   f"{self.family} VAE, got {tuple(latents.shape)} (a latent of another model?)")
        dev = next(self.vae.parameters()).device
        vdt = next(self.vae.parameters()).dtype
        out = []
        for b in range(latents.shape[0]):
            z = latents[b].permute(1, 0, 2, 3).to(dev, vdt) / self.vae.config.scaling_factor
            x = torch.cat([self.vae.decode(z[i: i + self.vae_chunk]).sample  # [f, 3, H, W]
                           for i in range(0, z.shape[0], self.vae_chunk)], 0)
            out.append(((x.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu())
        return torch.stack(out, 0)

    @property
    def transformer(self):
        """Alias of :attr:`denoiser`, so :class:`dual_adapter.patches.PatchedModel` can hold a U-Net backbone."""
        return self.denoiser

    @contextlib.contextmanager
    def use(self, part: str):
        yield getattr(self, part)


def denoiser_view(cls, denoiser, scheduler_config: dict):
    """A ``cls`` backbone for a bare U-Net (a trainer's trainable copy): structure, objective and noise
    scheduler only; the U-Net is left as it is (not frozen, mode kept)."""
    bb = cls.__new__(cls)
    p = next(denoiser.parameters(), None)
    bb.denoiser, bb.vae, bb.text_encoder, bb.tokenizer = denoiser, None, None, None
    bb.scheduler_config = dict(scheduler_config)
    bb.name = "(denoiser)"
    bb.device, bb.dtype = (str(p.device), p.dtype) if p is not None else ("cpu", torch.float32)
    bb.sample_size, bb.extra = (8, 32, 32), {}
    bb.prediction_type = bb.scheduler_config.get("prediction_type", "epsilon")
    return bb


def load_parts(folder: Path, unet_loader, *, dtype: torch.dtype, device: str, text_part="text_encoder"):
    """Load tokenizer, CLIP text encoder, VAE and scheduler config from a diffusers folder."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    check_config_files(folder, ("unet", "vae", text_part))
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(folder / text_part, torch_dtype=dtype).to(device)
    vae = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=dtype).to(device)
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    unet = unet_loader(folder).to(device=device, dtype=dtype)
    return unet, vae, text_encoder, tokenizer, sched


def default_device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def as_dtype(dtype: Any, default: str) -> torch.dtype:
    from .base import parse_dtype

    return parse_dtype(dtype or default)
