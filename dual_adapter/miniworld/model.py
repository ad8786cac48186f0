"""The ``mini`` model: a small *pretrained* CogVideoX of the miniature world.

Parts, as in a real CogVideoX diffusers folder (``transformer/``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``):

* transformer: diffusers ``CogVideoXTransformer3DModel`` (the real architecture; 2B-style sincos
  positions), pretrained by :mod:`.pretrain`;
* VAE: :class:`BlockPCAVAE`, a fixed linear stand-in for ``AutoencoderKLCogVideoX`` with the same
  interface (``encode(x).latent_dist.mode()/.sample()``, ``decode(z).sample``, ``config.scaling_factor``,
  ``config.latent_channels``, ``config.block_out_channels`` (its length gives the spatial compression, as
  on the real VAE), ``config.temporal_compression_ratio``). Like CogVideoX's causal VAE it keeps the first
  frame alone and packs each following pair of frames into one latent frame; each 2x2 pixel x 2 frame
  block (the exact :class:`SpaceToDepthVAE` fold, 24 values) is projected on 12 whitened principal
  components fitted in closed form (:func:`fit_block_pca`): ``[B, 3, 1 + 2k, H, W] -> [B, 12, 1 + k, H/2,
  W/2]``. So videos take ``2k+1`` frames (the pack's ``tk+1`` rule with t = 2; 9 frames -> 5 latent
  frames, a photo -> 1). Why a substitute: a trained ``AutoencoderKLCogVideoX`` would cost CPU time the
  45-minute pretraining budget does not have, and its blur would hide the 32 px sprites' textures; why
  lossy: see :class:`BlockPCAVAE`;
* text encoder: a small T5 encoder (``transformers.T5EncoderModel``), random and frozen, shipped with
  its weights; tokenizer: a word-level ``tokenizers`` tokenizer over the world's vocabulary (T5's
  ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2, ``</s>`` appended);
* scheduler: the released CogVideoX scheduler config (v-prediction, zero-SNR, trailing).

The shipped weights live in ``dual_adapter/models/mini/`` (package data, so they are found after
``pip install -e .``, a wheel install, or with the pack in ComfyUI's ``custom_nodes``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import DualAdapterError
from . import world

# the two VAE classes come from the module __getattr__ (diffusers is imported only when they are used)
__all__ = ["SpaceToDepthVAE", "BlockPCAVAE", "MINI_VAE_CLASSES", "fit_block_pca", "MINI_DIR", "MINI_CONFIG",  # noqa: F822
           "build_mini_tokenizer", "build_mini", "save_mini", "load_mini", "mini_available", "is_mini_folder"]

MINI_DIR = Path(__file__).resolve().parent.parent / "models" / "mini"

# transformer + text sizes of the shipped ``mini`` (docs/miniworld.md)
MINI_CONFIG: dict[str, Any] = dict(
    transformer=dict(
        num_attention_heads=4,
        attention_head_dim=32,
        in_channels=12,
        out_channels=12,
        time_embed_dim=128,
        text_embed_dim=64,
        num_layers=4,
        sample_width=world.WIDTH // 2,
        sample_height=world.HEIGHT // 2,
        sample_frames=world.FRAMES,
        patch_size=2,
        temporal_compression_ratio=2,
        max_text_seq_length=16,
        use_rotary_positional_embeddings=False,
    ),
    # the VAE substitute (BlockPCAVAE): 2x2 pixels x 2 frames x RGB = 24 values -> 12 whitened PCA channels
    vae=dict(block_out_channels=(3, 12), temporal_compression_ratio=2, latent_channels=12),
    text_encoder=dict(d_model=64, d_ff=128, d_kv=16, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                      dropout_rate=0.0),
)


# --------------------------------------------------------------------------------------------
# VAE substitute


def _make_vae_class():
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
    from diffusers.models.modeling_outputs import AutoencoderKLOutput
    from diffusers.models.modeling_utils import ModelMixin

    class SpaceToDepthVAE(ModelMixin, ConfigMixin):
        """Fixed space-to-depth "VAE" with ``AutoencoderKLCogVideoX``'s interface (see module docstring).

        ``encode(x)``: ``x [B, 3, T, H, W]`` in -1..1 -> ``AutoencoderKLOutput(latent_dist)``, a
        deterministic ``DiagonalGaussianDistribution`` whose mean is
        ``[B, 3*f*f, T, H/f, W/f] - latent_shift`` (``mode()`` and ``sample()`` both return it).
        ``decode(z)``: the exact inverse -> ``DecoderOutput(sample=[B, 3, T, H, W])``.
        ``f = 2 ** (len(block_out_channels) - 1)``. ``latent_shift`` is the module's one parameter
        (fixed zeros unless configured; the pack finds the VAE's device/dtype from its parameters).

        Raises:
            DualAdapterError: input that is not 5-D with 3 (encode) / ``latent_channels`` (decode)
                channels, or sizes that are not multiples of ``f``.
        """

        _supports_gradient_checkpointing = False

        @register_to_config
        def __init__(self, in_channels: int = 3, block_out_channels: tuple = (3, 12), latent_channels: int = 24,
                     temporal_compression_ratio: int = 2, scaling_factor: float = 1.0):
            super().__init__()
            f = 2 ** (len(block_out_channels) - 1)
            t = int(temporal_compression_ratio)
            if t < 1 or latent_channels != in_channels * f * f * t:
                raise DualAdapterError(f"SpaceToDepthVAE: latent_channels={latent_channels} must be "
                                       f"in_channels * {f}^2 * temporal_compression_ratio = {in_channels * f * f * t}")
            self.factor = f
            self.latent_shift = nn.Parameter(torch.zeros(latent_channels), requires_grad=False)

        # the real VAE's memory options; nothing to tile or slice here
        def enable_tiling(self, *a, **k):
            pass

        def disable_tiling(self):
            pass

        def enable_slicing(self):
            pass

        def disable_slicing(self):
            pass

        def _check(self, x, channels, what):
            if not torch.is_tensor(x) or x.ndim != 5 or x.shape[1] != channels:
                shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
                raise DualAdapterError(f"{type(self).__name__}.{what}: expected [B, {channels}, T, H, W], got {shape}")

        def _fold(self, x: torch.Tensor) -> torch.Tensor:
            """``[B, 3, T, H, W]`` -> ``[B, 3*f*f*t, 1 + (T-1)//t, H/f, W/f]`` (exact, no shift)."""
            self._check(x, self.config.in_channels, "encode")
            f, t = self.factor, int(self.config.temporal_compression_ratio)
            B, C, T, H, W = x.shape
            if H % f or W % f:
                raise DualAdapterError(f"{type(self).__name__}.encode: height {H} and width {W} must be multiples "
                                       f"of {f}")
            T = (T - 1) // t * t + 1  # like the real VAE: frames past the last t*k+1 are dropped
            s = x[:, :, :T].reshape(B, C, T, H // f, f, W // f, f).permute(0, 1, 4, 6, 2, 3, 5)
            s = s.reshape(B, C * f * f, T, H // f, W // f)
            first = s[:, :, :1].repeat(1, t, 1, 1, 1)  # the first frame alone, copied into every time slot
            rest = s[:, :, 1:].reshape(B, C * f * f, (T - 1) // t, t, H // f, W // f).permute(0, 3, 1, 2, 4, 5)
            rest = rest.reshape(B, t * C * f * f, (T - 1) // t, H // f, W // f)
            return torch.cat([first, rest], 2)

        def _unfold(self, z: torch.Tensor, return_dict: bool = True):
            """The exact inverse of :meth:`_fold` (frame 0's copies averaged)."""
            f, t = self.factor, int(self.config.temporal_compression_ratio)
            B, Cz, Tz, h, w = z.shape
            C = Cz // (f * f * t)
            first = z[:, :, :1].reshape(B, t, C * f * f, 1, h, w).mean(1)  # the copies of frame 0, averaged
            rest = z[:, :, 1:].reshape(B, t, C * f * f, Tz - 1, h, w).permute(0, 2, 3, 1, 4, 5)
            s = torch.cat([first, rest.reshape(B, C * f * f, (Tz - 1) * t, h, w)], 2)  # [B, C*f*f, T, h, w]
            T = s.shape[2]
            x = s.reshape(B, C, f, f, T, h, w).permute(0, 1, 4, 5, 2, 6, 3).reshape(B, C, T, h * f, w * f)
            return DecoderOutput(sample=x) if return_dict else (x,)

        def encode(self, x: torch.Tensor, return_dict: bool = True):
            s = self._fold(x)
            z = s - self.latent_shift.to(x.dtype).view(1, -1, 1, 1, 1)
            dist = DiagonalGaussianDistribution(torch.cat([z, torch.zeros_like(z)], 1), deterministic=True)
            return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

        def decode(self, z: torch.Tensor, return_dict: bool = True):
            self._check(z, self.config.latent_channels, "decode")
            return self._unfold(z + self.latent_shift.to(z.dtype).view(1, -1, 1, 1, 1), return_dict)

        def forward(self, x):
            return self.decode(self.encode(x).latent_dist.mode()).sample

    class BlockPCAVAE(SpaceToDepthVAE):
        """Fixed *lossy* linear "VAE" of the ``mini`` model, with ``AutoencoderKLCogVideoX``'s interface.

        Each ``f x f`` pixel block of ``t`` frames (the :class:`SpaceToDepthVAE` fold: ``D = 3 f^2 t``
        values, 24 for f = t = 2) is projected onto the first ``latent_channels`` principal components of
        the world's blocks and whitened (unit variance per channel), like a real VAE's compact,
        roughly unit-variance latent:

        ``z = ((fold(x) - mean) @ basis.T) / scale``  ->  ``[B, latent_channels, 1 + k, H/f, W/f]``;
        ``decode(z) = unfold((z * scale) @ basis + mean)`` (the least-squares inverse).

        ``mean [D]``, ``basis [latent_channels, D]`` (orthonormal rows) and ``scale [latent_channels]``
        are fitted in closed form by :func:`fit_block_pca` (an SVD of world videos, seconds) and shipped as
        frozen parameters. Why lossy: a token of the transformer must predict ``patch^2 x latent_channels``
        values; the exact fold (96 per token at width 96) left the shipped model no room to denoise
        (measured: noisy samples, no learned motion), as a real 16-channel VAE latent is what CogVideoX
        is built for. Reconstruction of world videos: mean abs error 0.006 (0..1 pixels), and the
        pixel scorers read the same attributes and motion as on the originals (docs/miniworld.md).

        Raises:
            DualAdapterError: as :class:`SpaceToDepthVAE`.
        """

        @register_to_config
        def __init__(self, in_channels: int = 3, block_out_channels: tuple = (3, 12), latent_channels: int = 12,
                     temporal_compression_ratio: int = 2, scaling_factor: float = 1.0):
            f = 2 ** (len(block_out_channels) - 1)
            t = int(temporal_compression_ratio)
            d = in_channels * f * f * t
            if not 1 <= latent_channels <= d:
                raise DualAdapterError(f"BlockPCAVAE: latent_channels={latent_channels} must be in 1..{d} "
                                       f"(in_channels * {f}^2 * temporal_compression_ratio)")
            nn.Module.__init__(self)
            self.factor = f
            self.block_dim = d
            self.mean = nn.Parameter(torch.zeros(d), requires_grad=False)
            self.basis = nn.Parameter(torch.eye(d)[:latent_channels].clone(), requires_grad=False)
            self.scale = nn.Parameter(torch.ones(latent_channels), requires_grad=False)

        def encode(self, x: torch.Tensor, return_dict: bool = True):
            s = self._fold(x)
            b = s.movedim(1, -1) - self.mean.to(s.dtype)
            z = ((b @ self.basis.to(s.dtype).T) / self.scale.to(s.dtype)).movedim(-1, 1)
            dist = DiagonalGaussianDistribution(torch.cat([z, torch.zeros_like(z)], 1), deterministic=True)
            return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

        def decode(self, z: torch.Tensor, return_dict: bool = True):
            self._check(z, self.config.latent_channels, "decode")
            b = (z.movedim(1, -1) * self.scale.to(z.dtype)) @ self.basis.to(z.dtype) + self.mean.to(z.dtype)
            return self._unfold(b.movedim(-1, 1), return_dict)

    return SpaceToDepthVAE, BlockPCAVAE


_VAE_CLS: dict = {}


# the VAE substitutes a mini folder's ``vae/config.json`` may name (``_class_name``)
MINI_VAE_CLASSES = ("SpaceToDepthVAE", "BlockPCAVAE")


def __getattr__(name):  # lazy: diffusers is imported only when the classes are used
    if name in MINI_VAE_CLASSES:
        if not _VAE_CLS:
            _VAE_CLS.update(zip(MINI_VAE_CLASSES, _make_vae_class()))
        return _VAE_CLS[name]
    raise AttributeError(name)


_PCA_FITS: dict = {}


def fit_block_pca(vae, n: int = 512, seed: int = 4242) -> dict:
    """Fit a :class:`BlockPCAVAE` in place to ``n`` held-in world videos (closed form: SVD of the folded
    blocks, float64) and return ``{"explained_variance", "l1_error"}`` (share of block variance kept and
    mean abs reconstruction error of the videos in 0..1 pixel units). Deterministic in ``seed``; the fit is
    kept per process and VAE shape, so building several ``mini`` bundles renders the videos once."""
    key = (vae.factor, int(vae.config.temporal_compression_ratio), int(vae.config.latent_channels), n, seed)
    if key not in _PCA_FITS:
        it = world.pretrain_sampler(seed)
        x = torch.stack([world.render(next(it), seed=seed + i) for i in range(n)]).permute(0, 4, 1, 2, 3) * 2 - 1
        flat = vae._fold(x).movedim(1, -1).reshape(-1, vae.block_dim).double()
        mean = flat.mean(0)
        _, sv, vt = torch.linalg.svd(flat - mean, full_matrices=False)
        k = int(vae.config.latent_channels)
        basis = vt[:k]
        scale = ((flat - mean) @ basis.T).std(0)
        with torch.no_grad():
            vae.mean.copy_(mean.float())
            vae.basis.copy_(basis.float())
            vae.scale.copy_(scale.float())
            rec = vae.decode(vae.encode(x).latent_dist.mode()).sample
        ev = float((sv[:k] ** 2).sum() / (sv ** 2).sum())
        _PCA_FITS[key] = ({"mean": vae.mean.detach().clone(), "basis": vae.basis.detach().clone(),
                           "scale": vae.scale.detach().clone()},
                          {"explained_variance": round(ev, 5), "l1_error": round(float((rec - x).abs().mean() / 2), 5)})
    tensors, report = _PCA_FITS[key]
    with torch.no_grad():
        for name, v in tensors.items():
            getattr(vae, name).copy_(v)
    return dict(report)


def build_mini_tokenizer():
    """Word-level T5-style tokenizer over :func:`world.vocabulary` (``tokenizers`` library, offline).

    Lower-cases, splits on whitespace and punctuation (so ``"*"`` is its own token), ``<pad>`` = 0,
    ``</s>`` = 1, ``<unk>`` = 2 (any word outside the world), ``</s>`` appended. Deterministic.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in world.vocabulary():
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_mini(seed: int = 0, config: dict | None = None, device: str = "cpu", scaling_factor: float | None = None):
    """A fresh (untrained) ``mini`` bundle: random transformer and T5, the tokenizer, the VAE substitute.

    ``config`` overrides :data:`MINI_CONFIG` (``{"transformer": {...}, "text_encoder": {...}}``).
    ``scaling_factor`` default 1.0 (the :class:`BlockPCAVAE` latents are already whitened); the VAE is fitted
    by :func:`fit_block_pca` (once per process and VAE shape: later builds reuse the fit).
    Returns a :class:`~dual_adapter.backbones.cogvideox.CogVideoXBundle` named ``"mini"``.
    """
    from diffusers import CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    from ..backbones.cogvideox import CogVideoXBundle, DEFAULT_SCHEDULER_CONFIG

    cfg = {k: dict(v) for k, v in MINI_CONFIG.items()}
    for k, v in (config or {}).items():
        cfg.setdefault(k, {}).update(v)
    tokenizer = build_mini_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), **cfg["text_encoder"])).eval()
        torch.manual_seed(seed + 1)
        transformer = CogVideoXTransformer3DModel(**cfg["transformer"]).eval()
    vae = __getattr__("BlockPCAVAE")(scaling_factor=float(scaling_factor or 1.0), **cfg.get("vae", {})).eval()
    fit_block_pca(vae)
    for m in (text_encoder, transformer, vae):
        m.requires_grad_(False)
        m.to(device)
    return CogVideoXBundle(transformer, vae, text_encoder, tokenizer, dict(DEFAULT_SCHEDULER_CONFIG), name="mini",
                           device=device, dtype=torch.float32)


def save_mini(bundle, folder: str | os.PathLike, info: dict | None = None, overwrite: bool = False) -> Path:
    """Write a ``mini`` bundle as a diffusers-layout folder (safetensors weights, JSON configs,
    ``tokenizer/tokenizer.json``) plus ``info.json`` (``info``: command, steps, timings...).

    Writes to ``folder.tmp`` then renames, so a failed save never leaves a half-written model.

    Raises:
        DualAdapterError: ``folder`` exists and ``overwrite`` is False.
    """
    import shutil

    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise DualAdapterError(f"{str(folder)!r} exists; choose another folder or pass overwrite")
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    bundle.transformer.save_pretrained(tmp / "transformer", safe_serialization=True)
    bundle.vae.save_pretrained(tmp / "vae", safe_serialization=True)
    bundle.text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
    (tmp / "tokenizer").mkdir()
    bundle.tokenizer.save_pretrained(tmp / "tokenizer")
    (tmp / "scheduler").mkdir()
    (tmp / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "CogVideoXDDIMScheduler", **bundle.scheduler_config}, indent=2))
    (tmp / "info.json").write_text(json.dumps(info or {}, indent=2, default=str))
    old = None
    if folder.exists():
        old = folder.with_name(folder.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        folder.rename(old)
    tmp.rename(folder)
    if old is not None:
        shutil.rmtree(old)
    return folder


def mini_available(folder: str | os.PathLike | None = None) -> bool:
    """True when the shipped (or given) ``mini`` folder holds a transformer."""
    f = Path(folder) if folder else MINI_DIR
    return (f / "transformer" / "config.json").exists()


def is_mini_folder(path) -> bool:
    """True when ``path`` is a folder whose ``vae/config.json`` names a mini VAE substitute
    (:data:`MINI_VAE_CLASSES`), e.g. one written by ``miniworld pretrain``."""
    try:
        cfg = json.loads((Path(path) / "vae" / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return False
    return cfg.get("_class_name") in MINI_VAE_CLASSES


def load_mini(folder: str | os.PathLike | None = None, device: str = "cpu", dtype: str | torch.dtype = "fp32"):
    """Load the pretrained ``mini`` (default: the shipped :data:`MINI_DIR`). Weights load with safetensors.

    Raises:
        DualAdapterError: the folder lacks a part (names the missing file and the command that makes it).
    """
    from diffusers import CogVideoXTransformer3DModel
    from transformers import PreTrainedTokenizerFast, T5EncoderModel

    from ..backbones.base import parse_dtype
    from ..backbones.cogvideox import CogVideoXBundle
    from ..limits import check_config_files

    from ..threads import small_model_threads

    small_model_threads(device)  # one CPU thread unless the user chose a count (docs/results/demo.md)
    root = Path(folder) if folder else MINI_DIR
    need = ["transformer/config.json", "vae/config.json", "text_encoder/config.json", "tokenizer/tokenizer.json",
            "scheduler/scheduler_config.json"]
    missing = [n for n in need if not (root / n).exists()]
    if missing:
        raise DualAdapterError(f"the mini model folder {str(root)!r} lacks {', '.join(missing)}; make it with "
                               f"'python -m dual_adapter miniworld pretrain --out {root}'")
    check_config_files(root, ("transformer", "vae", "text_encoder"))  # bounded before anything is built
    dt = parse_dtype(dtype)
    try:
        transformer = CogVideoXTransformer3DModel.from_pretrained(root / "transformer", use_safetensors=True,
                                                                  torch_dtype=torch.float32)
        vae_kind = json.loads((root / "vae" / "config.json").read_text()).get("_class_name", "SpaceToDepthVAE")
        if vae_kind not in MINI_VAE_CLASSES:
            raise DualAdapterError(f"{str(root / 'vae')!r}: unknown mini VAE {vae_kind!r}")
        vae = __getattr__(vae_kind).from_pretrained(root / "vae", use_safetensors=True)
        text_encoder = T5EncoderModel.from_pretrained(root / "text_encoder", use_safetensors=True)
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(root / "tokenizer" / "tokenizer.json"),
                                            pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    except (OSError, ValueError, KeyError) as e:
        raise DualAdapterError(f"could not load the mini model from {str(root)!r}: {e}") from None
    sched = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    sched = {k: v for k, v in sched.items() if not k.startswith("_")}
    for m in (transformer, vae, text_encoder):
        m.requires_grad_(False)
        m.eval()
        m.to(device) if dt == torch.float32 else m.to(device=device, dtype=dt)
    return CogVideoXBundle(transformer, vae, text_encoder, tokenizer, sched, name="mini", device=device, dtype=dt)
