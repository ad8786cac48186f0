"""Wan 2.1 / 2.2 text-to-video behind the :class:`~dual_adapter.backbones.base.VideoBackbone` interface.

Parts (diffusers): ``WanTransformer3DModel`` (blocks ``blocks.{i}``: self-attention ``attn1`` over the video
tokens of all frames, cross-attention ``attn2`` to the text, feed-forward ``ffn``; the timestep modulates each
block through its ``scale_shift_table``), ``AutoencoderKLWan`` (8x spatial / 4x temporal, 16 channels on Wan 2.1;
16x / 4x, 48 channels on Wan 2.2 TI2V-5B), a UMT5 text encoder (``UMT5EncoderModel``, 512 tokens, 4096 wide) and
the flow-matching schedule with Wan's ``flow_shift`` (diffusers ``UniPCMultistepScheduler`` with flow sigmas, or
``FlowMatchEulerDiscreteScheduler``). A local diffusers folder (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` and the
like) holds ``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``.

Layouts: the pack keeps Wan latents as ``[B, F, C, h, w]`` (``latent_layout = "BFCHW"``, as on CogVideoX, so the
trainers and ComfyUI latent helpers serve both); :meth:`WanBackbone.predict` permutes to the transformer's
``[B, C, F, h, w]`` and back. Latents are *normalised* as the Wan pipelines do: ``(z - latents_mean) / latents_std``
per channel (the VAE config's lists), not multiplied by a single scaling factor.

Objective (flow matching, as Wan trainers train it): ``x_t = (1 - sigma) x_0 + sigma eps``, the transformer at
timestep ``1000 sigma`` predicts the velocity ``eps - x_0``; the loss is the plain MSE. ``sigma`` is drawn
uniformly over the training scheduler's 1000 shifted sigmas (``FlowMatchEulerDiscreteScheduler`` with the model's
``flow_shift``: ``sigma = shift s / (1 + (shift - 1) s)``), as diffusers' flow-matching training scripts and
DiffSynth-Studio draw it (docs/wan.md).

Roles on Wan: ``attn1`` is self-attention over every frame and position (3D, no text): the pack reports it as
the ``joint`` role (the attention that carries motion, which TAP targets); ``attn2`` is the ``cross`` role (where
the text enters every block).

Built-in ``tiny-wan``: the same architecture with seeded random weights, built offline in about a second
(4 blocks, width 32, UMT5 width 32 with the offline T5-style tokenizer, VAE with 4 latent channels); default video
9 frames x 64 x 64 px (latent 3 x 8 x 8).
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import DualAdapterError
from .base import BlockInfo, VideoBackbone, check_device, check_role, offloaded, parse_dtype
from . import _wan_i2v
from ._wan_blocks import _capture_time, adapted_block_forward
from .cogvideox import _read_json

log = logging.getLogger(__name__)

KIND = "wan"
FAMILY = "Wan 2.1 / 2.2 (diffusers WanTransformer3DModel)"
TRANSFORMER_CLASS = "WanTransformer3DModel"
REQUIRED_PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")

#: the scheduler of diffusers' converted Wan 2.1 T2V folders (scheduler/scheduler_config.json): UniPC on flow
#: sigmas with flow_shift 3.0 (480p; 5.0 for 720p and Wan 2.2 TI2V-5B)
DEFAULT_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "UniPCMultistepScheduler", "beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001,
    "disable_corrector": [], "dynamic_thresholding_ratio": 0.995, "final_sigmas_type": "zero", "flow_shift": 3.0,
    "lower_order_final": True, "num_train_timesteps": 1000, "predict_x0": True, "prediction_type": "flow_prediction",
    "rescale_betas_zero_snr": False, "sample_max_value": 1.0, "solver_order": 2, "solver_p": None,
    "solver_type": "bh2", "steps_offset": 0, "thresholding": False, "timestep_spacing": "linspace",
    "trained_betas": None, "use_beta_sigmas": False, "use_exponential_sigmas": False, "use_flow_sigmas": True,
    "use_karras_sigmas": False,
}

#: sampling schedulers by name: ``unipc`` (Wan's own, the default; ``dpm`` is taken as it) and ``euler``
#: (first-order flow Euler; ``ddim`` is taken as it)
SCHEDULERS = ("unipc", "euler", "dpm", "ddim")

TINY_NAMES = ("tiny-wan", *_wan_i2v.TINY_I2V_NAMES)
_TINY_TEXT_LEN = 16
_TINY_TRANSFORMER = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4,
                         out_channels=4, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=4, cross_attn_norm=True,
                         qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
_TINY_VAE = dict(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
                 latents_mean=[0.1, -0.2, 0.05, 0.3], latents_std=[1.5, 0.8, 1.2, 2.0])

#: the transformer-config fields a trained adapter depends on (stored in adapter metadata as ``base_config``)
ARCHITECTURE_KEYS = ("num_layers", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels",
                     "text_dim", "freq_dim", "ffn_dim", "patch_size", "cross_attn_norm", "qk_norm", "image_dim",
                     "added_kv_proj_dim")


# --------------------------------------------------------------------------------------------
# the tiny model


def build_tiny(seed: int = 0, device: str = "cpu", dtype="fp32", num_layers: int = 4,
               variant: str = "tiny-wan") -> "WanBackbone":
    """The built-in ``tiny-wan``: seeded random Wan transformer, Wan VAE, UMT5 encoder and tokenizer, offline.

    Width 32 (2 heads x 16), ``num_layers`` blocks, sinusoidal timestep width 32, text length 16; VAE 8x spatial,
    4x temporal, 4 latent channels. Default video 9 x 64 x 64 px. Same ``seed`` -> bit-identical weights.
    ``variant`` ``tiny-wan-i2v`` / ``tiny-wan-ti2v``: the image-to-video layouts (:mod:`._wan_i2v`; text length 512).
    """
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from .cogvideox import build_tiny_tokenizer

    device = check_device(device) or "cpu"
    tokenizer = build_tiny_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text_encoder = UMT5EncoderModel(UMT5Config(
            vocab_size=len(tokenizer), d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, dropout_rate=0.0)).eval()
        torch.manual_seed(seed + 1)
        transformer = WanTransformer3DModel(**_wan_i2v.tiny_transformer_config(
            {**_TINY_TRANSFORMER, "num_layers": int(num_layers)}, variant)).eval()
        torch.manual_seed(seed + 2)
        vae = AutoencoderKLWan(**_TINY_VAE).eval()
    dt = parse_dtype(dtype)
    for m in (text_encoder, transformer, vae):
        m.requires_grad_(False)
        m.to(device=device) if dt == torch.float32 else m.to(device=device, dtype=dt)
    bb = WanBackbone(transformer, vae, text_encoder, tokenizer, dict(DEFAULT_SCHEDULER_CONFIG), name=variant,
                     device=device, dtype=dt, text_len=_TINY_TEXT_LEN if variant == "tiny-wan" else 512,
                     size=(9, 64, 64))
    enc = _wan_i2v.build_tiny_image_encoder(seed, device, dt) if variant == "tiny-wan-i2v" else (None, None)
    return _wan_i2v.mark(bb, variant == "tiny-wan-ti2v", *enc)


# --------------------------------------------------------------------------------------------
# folders


def detect(folder: Path) -> bool:
    """A diffusers folder whose ``transformer/config.json`` names ``WanTransformer3DModel`` (one transformer: a
    two-expert A14B folder is :mod:`dual_adapter.backbones.wan_a14b`'s)."""
    from ._wan_experts import is_experts_folder

    return names_wan_transformer(folder) and not is_experts_folder(folder)


def names_wan_transformer(folder: Path) -> bool:
    """``folder/transformer/config.json`` names ``WanTransformer3DModel``."""
    cfg = Path(folder) / "transformer" / "config.json"
    if not cfg.is_file():
        return False
    try:
        return str(json.loads(cfg.read_text()).get("_class_name", "")) == TRANSFORMER_CLASS
    except ValueError:
        return False


def _default_size(tcfg: dict, vcfg: dict, flow_shift: float) -> tuple[int, int, int]:
    """(frames, height, width) the released model generates: Wan 2.2 TI2V-5B (48 latent channels) 121 x 704 x 1280,
    otherwise 81 x 480 x 832 (480p: flow_shift 3) or 81 x 720 x 1280 (720p: flow_shift 5)."""
    if int(vcfg.get("z_dim", 16)) == 48:
        return 121, 704, 1280
    return (81, 720, 1280) if flow_shift >= 5 else (81, 480, 832)


def inspect_model(name_or_path: str) -> SimpleNamespace:
    """Read and check a Wan folder's configs without loading weights (seconds).

    Returns a namespace with ``name``, ``config`` (transformer config dict), ``vae_config``, ``scheduler_config``,
    ``default_size`` and ``check_video_size(frames, height, width)``.

    Raises:
        DualAdapterError: not a folder / a part missing (lists them) / a config that is not JSON / not a Wan
            transformer / transformer channels that do not fit the VAE (neither text-to-video, Wan 2.2 TI2V nor
            Wan 2.1 image-to-video) / a two-expert (A14B) folder whose experts do not match (see
            :func:`~dual_adapter.backbones._wan_experts.check_experts_folder`).

    A two-expert Wan 2.2 A14B folder (``transformer_2/``, ``boundary_ratio``) gives ``boundary_ratio`` too (else
    ``None``).
    """
    from ._wan_experts import check_experts_folder, is_experts_folder

    if str(name_or_path) in TINY_NAMES:
        vcfg = {**_TINY_VAE, "scale_factor_spatial": 8, "scale_factor_temporal": 4}
        tcfg = _wan_i2v.tiny_transformer_config(dict(_TINY_TRANSFORMER), str(name_or_path))
        info = _info(str(name_or_path), tcfg, vcfg, dict(DEFAULT_SCHEDULER_CONFIG), (9, 64, 64))
        info.boundary_ratio = None
        return info
    root = Path(name_or_path).expanduser()
    if not root.is_dir():
        raise DualAdapterError(f"model folder {str(root)!r} does not exist (expected 'tiny-wan' or a diffusers Wan "
                               f"folder with {', '.join(p + '/' for p in REQUIRED_PARTS)})")
    missing = [p + "/" for p in REQUIRED_PARTS if not (root / p).is_dir()]
    for p in ("transformer", "vae"):
        if (root / p).is_dir() and not (root / p / "config.json").is_file():
            missing.append(f"{p}/config.json")
    if (root / "scheduler").is_dir() and not (root / "scheduler" / "scheduler_config.json").is_file():
        missing.append("scheduler/scheduler_config.json")
    if missing:
        raise DualAdapterError(f"model folder {str(root)!r} is not a complete Wan folder; missing: {', '.join(missing)}")
    tcfg = _read_json(root / "transformer" / "config.json", "transformer config")
    vcfg = _read_json(root / "vae" / "config.json", "VAE config")
    scfg = {k: v for k, v in _read_json(root / "scheduler" / "scheduler_config.json", "scheduler config").items()
            if not k.startswith("_")}
    if tcfg.get("_class_name") != TRANSFORMER_CLASS:
        raise DualAdapterError(f"{root}/transformer/config.json names {tcfg.get('_class_name')!r}, not "
                               f"{TRANSFORMER_CLASS} ({FAMILY})")
    ratio = check_experts_folder(root, tcfg, ARCHITECTURE_KEYS) if is_experts_folder(root) else None
    z = int(vcfg.get("z_dim", 16))
    cin, cout = int(tcfg.get("in_channels", 16)), int(tcfg.get("out_channels") or tcfg.get("in_channels", 16))
    step = int(vcfg.get("scale_factor_temporal") or 4)
    if cout != z or cin not in (z, 2 * z + step):
        raise DualAdapterError(f"model folder {str(root)!r}: the transformer maps {cin} -> {cout} channels but the VAE "
                               f"has {z} latent channels (expected {z} -> {z}, text-to-video or Wan 2.2 TI2V, or "
                               f"{2 * z + step} -> {z}, Wan 2.1 image-to-video); the parts are from different models")
    _wan_i2v.check_parts(root, tcfg)
    for k in ("num_layers", "num_attention_heads", "attention_head_dim", "in_channels"):
        v = tcfg.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise DualAdapterError(f"{root}/transformer/config.json: {k}={json.dumps(v)} (expected a positive integer)")
    shift = scfg.get("flow_shift", scfg.get("shift", 3.0))
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not shift > 0:
        raise DualAdapterError(f"{root}/scheduler/scheduler_config.json: flow_shift={json.dumps(shift)} (expected a "
                               f"positive number, 3.0 for 480p, 5.0 for 720p)")
    info = _info(str(root), tcfg, vcfg, scfg, _default_size(tcfg, vcfg, float(shift)))
    info.boundary_ratio = ratio
    return info


def _info(name, tcfg, vcfg, scfg, size) -> SimpleNamespace:
    spatial = int(vcfg.get("scale_factor_spatial") or 8)
    temporal = int(vcfg.get("scale_factor_temporal") or 4)
    patch = tuple(tcfg.get("patch_size") or (1, 2, 2))
    info = SimpleNamespace(name=name, config=tcfg, vae_config=vcfg, scheduler_config=scfg, default_size=size,
                           vae_scale_spatial=spatial, vae_scale_temporal=temporal, patch=patch)
    info.check_video_size = lambda f, h, w: check_size(f, h, w, temporal, spatial * int(patch[1]))
    return info


def check_size(num_frames: int, height: int, width: int, temporal: int = 4, multiple: int = 16) -> None:
    """Wan takes ``temporal * k + 1`` frames (4k+1: the VAE compresses time by 4 after the first frame) and sizes
    that are multiples of ``VAE spatial factor x patch`` (16 on Wan 2.1, 32 on Wan 2.2 TI2V-5B).

    Raises:
        DualAdapterError: naming the input and the nearest valid values.
    """
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1 or (num_frames - 1) % temporal:
        lo = max(1, (int(num_frames) - 1) // temporal * temporal + 1) if isinstance(num_frames, int) else 1
        raise DualAdapterError(f"frames={num_frames}: Wan takes {temporal}k+1 frames (e.g. {lo} or {lo + temporal}; "
                               f"81 on the released models)")
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v < multiple or v % multiple:
            near = max(multiple, int(v) // multiple * multiple) if isinstance(v, (int, float)) else multiple
            raise DualAdapterError(f"{name}={v}: must be a positive multiple of {multiple} for this Wan model "
                                   f"(e.g. {near}); the released 480p models use 480x832")


def load_folder(folder: str | Path, dtype="bf16", device: str | None = None, cpu_offload: bool = False,
                vae_tiling: bool = True) -> "WanBackbone":
    """Load a diffusers Wan text-to-video folder (Wan 2.1 T2V 1.3B / 14B, Wan 2.2 TI2V-5B, Wan 2.2 T2V A14B) with
    safetensors.

    Args:
        dtype: transformer and text-encoder dtype (``bf16`` default; the VAE runs in fp32 as Wan's pipelines do).
        device: execution device (default cuda when available). cpu_offload: parts stay on CPU between uses.

    A Wan 2.2 A14B folder loads ``transformer/`` (its high-noise expert) alone here; ``load_backbone`` loads both
    (:mod:`dual_adapter.backbones.wan_a14b`).

    Raises:
        DualAdapterError: see :func:`inspect_model`; weights that do not load (names the folder and the error).
    """
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    info = inspect_model(folder)
    root = Path(folder).expanduser()
    device = check_device(device) or ("cuda" if torch.cuda.is_available() else "cpu")
    dt = parse_dtype(dtype)
    try:
        transformer = WanTransformer3DModel.from_pretrained(root, subfolder="transformer", torch_dtype=dt,
                                                            use_safetensors=True)
        vae = AutoencoderKLWan.from_pretrained(root, subfolder="vae", torch_dtype=torch.float32, use_safetensors=True)
        text_encoder = UMT5EncoderModel.from_pretrained(root / "text_encoder", torch_dtype=dt, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise DualAdapterError(f"could not load Wan from {str(root)!r}: {type(e).__name__}: {e}") from None
    for m in (transformer, vae, text_encoder):
        m.requires_grad_(False)
        m.eval()
        m.to("cpu" if cpu_offload else device)
    if vae_tiling:
        vae.enable_tiling()
    index = root / "model_index.json"
    parts = _wan_i2v.load_parts(root, dt, "cpu" if cpu_offload else device, dict(info.config),
                                _read_json(index, "model index") if index.is_file() else {})
    bb = WanBackbone(transformer, vae, text_encoder, tokenizer, info.scheduler_config, name=str(root), device=device,
                     dtype=dt, size=info.default_size, cpu_offload=cpu_offload)
    return _wan_i2v.mark(bb, parts["expand_timesteps"], parts.get("image_encoder"), parts.get("image_processor"))


# --------------------------------------------------------------------------------------------
# module interface (dual_adapter.backbones)


def tiny_names() -> tuple[str, ...]:
    return TINY_NAMES


def owns(denoiser: nn.Module) -> bool:
    """A diffusers ``WanTransformer3DModel`` (or a patched / trainable copy of one)."""
    return type(denoiser).__name__ == TRANSFORMER_CLASS


def load(name_or_path: str, dtype=None, device=None, seed: int = 0, **kw) -> "WanBackbone":
    """``tiny-wan`` -> :func:`build_tiny`; a folder -> :func:`load_folder` (``cpu_offload`` in ``kw``).
    dtype defaults to fp32 for the tiny model and bf16 for real ones."""
    if name_or_path in TINY_NAMES:
        return build_tiny(seed=seed, device=device or "cpu", dtype=dtype or "fp32", variant=name_or_path)
    if kw.get("transformer_file"):
        raise DualAdapterError("transformer_file (a native single-file transformer) is read for CogVideoX only; "
                               "give a diffusers Wan folder")
    return load_folder(name_or_path, dtype=dtype or "bf16", device=device, cpu_offload=bool(kw.get("cpu_offload")))


def for_denoiser(denoiser: nn.Module, scheduler_config: dict | None = None) -> "WanBackbone":
    """A :class:`WanBackbone` for a bare transformer (structure, objective, noise scheduler)."""
    return WanBackbone(denoiser, None, None, None, dict(scheduler_config or DEFAULT_SCHEDULER_CONFIG))


# --------------------------------------------------------------------------------------------
# prompts


def _clean(text: str) -> str:
    """Wan's prompt cleaning (``prompt_clean`` of its pipelines: HTML unescaped twice, whitespace runs collapsed)."""
    import html

    return re.sub(r"\s+", " ", html.unescape(html.unescape(text)).strip()).strip()


def _flow_scheduler(cfg: dict):
    from diffusers import FlowMatchEulerDiscreteScheduler

    shift = float(cfg.get("flow_shift", cfg.get("shift", 3.0)))
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=int(cfg.get("num_train_timesteps", 1000)), shift=shift)


# --------------------------------------------------------------------------------------------
# the backbone


class WanBackbone(VideoBackbone):
    """A Wan model (transformer, VAE, UMT5, tokenizer; any may be None for a bare transformer) seen through the
    interface. ``transformer`` is an alias of :attr:`denoiser` (what CogVideoX bundles call it)."""

    kind = KIND
    family = FAMILY
    latent_layout = "BFCHW"
    prediction_type = "flow"
    motion_role = "joint"
    #: Wan 2.1 I2V's CLIP image encoder and its image processor (None on other Wan models; see :mod:`._wan_i2v`)
    image_encoder = None
    image_processor = None

    def __init__(self, denoiser, vae, text_encoder, tokenizer, scheduler_config: dict, *, name: str = "?",
                 device: str | None = None, dtype: torch.dtype | None = None, text_len: int = 512,
                 size: tuple[int, int, int] = (81, 480, 832), cpu_offload: bool = False):
        self.denoiser, self.vae, self.text_encoder, self.tokenizer = denoiser, vae, text_encoder, tokenizer
        self.scheduler_config = dict(scheduler_config)
        self.name = name
        p = next(denoiser.parameters(), None) if denoiser is not None else None
        self.device = device if device is not None else (str(p.device) if p is not None else "cpu")
        self.dtype = dtype if dtype is not None else (p.dtype if p is not None else torch.float32)
        self.text_length = int(text_len)
        self._size = tuple(size)
        self._offload = bool(cpu_offload)

    @property
    def transformer(self):
        return self.denoiser

    @property
    def config(self):
        return self.denoiser.config

    def _need(self, part: str, what: str):
        if getattr(self, part) is None:
            raise DualAdapterError(f"{what} needs the whole Wan model ({part}), not a bare transformer")
        return getattr(self, part)

    # ---- structure
    def blocks(self, denoiser: nn.Module | None = None) -> list[BlockInfo]:
        d = self.pick_denoiser(denoiser)
        return [BlockInfo(f"blocks.{i}", "joint", i, b, True) for i, b in enumerate(d.blocks)]

    def attention_modules(self, role: str, denoiser: nn.Module | None = None) -> dict[str, nn.Module]:
        attr = {"joint": "attn1", "cross": "attn2"}.get(check_role(role))
        if attr is None:
            return {}
        return {f"{b.name}.{attr}": getattr(b.module, attr) for b in self.blocks(denoiser)}

    def text_entry_points(self, denoiser: nn.Module | None = None) -> dict[str, nn.Module]:
        return self.attention_modules("cross", denoiser)

    def text_argument(self) -> tuple[str, int | None]:
        """Wan's transformer calls its blocks as ``block(hidden_states, encoder_hidden_states, temb, rotary_emb)``:
        the text is the second positional argument (what each block's cross-attention ``attn2`` reads)."""
        return "encoder_hidden_states", 1

    def width(self, denoiser: nn.Module | None = None) -> int:
        c = self.pick_denoiser(denoiser).config
        return int(c.num_attention_heads) * int(c.attention_head_dim)

    def architecture(self, denoiser: nn.Module | None = None) -> dict:
        c = dict(self.pick_denoiser(denoiser).config)
        return {k: (list(c[k]) if isinstance(c.get(k), tuple) else c.get(k)) for k in ARCHITECTURE_KEYS}

    def adapter_dims(self, denoiser: nn.Module | None = None) -> tuple[int, int, int]:
        """(width D, blocks L, StageBlender time width T = ``freq_dim``, Wan's sinusoidal timestep features)."""
        d = self.pick_denoiser(denoiser)
        return self.width(d), len(d.blocks), int(d.config.freq_dim)

    def prepare_block_adapters(self, denoiser: nn.Module, state: dict) -> None:
        """Wan's blocks receive the per-block modulation ``timestep_proj`` ``[B, 6, D]``, not the timestep; the
        StageBlender reads Wan's sinusoidal timestep features (``condition_embedder.timesteps_proj``,
        ``[B, freq_dim]``), captured here into ``state["time"]`` on every model call."""
        tp = self.pick_denoiser(denoiser).condition_embedder.timesteps_proj
        tp.__dict__["_adapter_state"] = state  # copied along with the module (patched copies stay consistent)
        if not any(h is _capture_time for h in tp._forward_hooks.values()):
            tp.register_forward_hook(_capture_time)

    def adapted_block_forward(self, block, hooks, state, *args, **kwargs):
        return adapted_block_forward(block, hooks, state, *args, **kwargs)

    # ---- text
    @torch.no_grad()
    def encode_prompt(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """UMT5 embeddings ``[B, L, D_text]`` as Wan's pipelines make them: the prompt cleaned, tokenised to the text
        length (512 on the released models; longer prompts are cut, with a warning), encoded with the attention
        mask, and the padding positions set to zero.

        Raises:
            DualAdapterError: a prompt that is not a string.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
            raise DualAdapterError(f"prompt must be a string or a list of strings, got {type(prompts).__name__}")
        tok = self._need("tokenizer", "encode_prompt")
        self._need("text_encoder", "encode_prompt")
        L = self.text_length
        texts = [_clean(p) for p in prompts]
        enc = tok(texts, padding="max_length", max_length=L, truncation=True, add_special_tokens=True,
                  return_attention_mask=True, return_tensors="pt")
        full = tok(texts, add_special_tokens=True)["input_ids"]
        for i, ids in enumerate(full):
            if len(ids) > L:
                log.warning("prompt %d has %d tokens, more than the model's %d; the rest is dropped", i, len(ids), L)
        with self.use("text_encoder") as te:
            dev = next(te.parameters()).device
            h = te(enc.input_ids.to(dev), enc.attention_mask.to(dev)).last_hidden_state
        h = h * enc.attention_mask.to(h.device, h.dtype).unsqueeze(-1)  # zeros past each prompt, as the pipeline
        return h.to(device=self.device, dtype=self.dtype)

    # ---- objective / schedulers
    def noise_scheduler(self):
        """``FlowMatchEulerDiscreteScheduler`` with the model's ``flow_shift`` (1000 shifted sigmas, ``timesteps`` =
        ``1000 sigma``, index 0 = pure noise); on one expert of a Wan 2.2 A14B, only the timesteps it serves."""
        from ._wan_experts import served_schedule

        return served_schedule(_flow_scheduler(self.scheduler_config), self.scheduler_config)

    def make_scheduler(self, name: str = "unipc"):
        """``unipc`` (Wan's ``UniPCMultistepScheduler`` on flow sigmas, the default; ``dpm`` is taken as it) or
        ``euler`` (``FlowMatchEulerDiscreteScheduler``; ``ddim`` is taken as it), both with the model's flow_shift.

        Raises:
            DualAdapterError: another name.
        """
        from diffusers import UniPCMultistepScheduler

        n = str(name).lower()
        if n in ("unipc", "dpm"):
            cfg = {**DEFAULT_SCHEDULER_CONFIG, **self.scheduler_config, "use_flow_sigmas": True,
                   "prediction_type": "flow_prediction"}
            return UniPCMultistepScheduler.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
        if n in ("euler", "ddim"):
            return _flow_scheduler(self.scheduler_config)
        raise DualAdapterError(f"scheduler {name!r} is not one of {', '.join(SCHEDULERS)} (Wan)")

    def training_target(self, x0, noise, t=None):
        """The flow-matching velocity ``noise - x0``."""
        return noise - x0

    def training_loss(self, denoiser, noise_scheduler, latents, text, *, generator=None, timesteps=None, noise=None,
                      reduce=True, error_fn=None, cond=None) -> torch.Tensor:
        """Flow matching: ``k ~ U{0..999}`` (``timesteps``: these indices), ``sigma = noise_scheduler.sigmas[k]``,
        ``x_t = (1 - sigma) x0 + sigma eps``, ``loss = mean(error_fn(v_pred - (eps - x0)))`` at timestep
        ``noise_scheduler.timesteps[k]`` (= 1000 sigma). ``latents`` ``[B, F, C, h, w]``.

        Image-to-video models (``cond``, default :meth:`training_conditioning`: the clip's first frame): the
        conditioning enters as in sampling; on Wan 2.2 TI2V the first latent frame is given, so the loss covers the
        frames after it."""
        B = latents.shape[0]
        n = len(noise_scheduler.sigmas)
        if timesteps is None:
            timesteps = torch.randint(0, int(noise_scheduler.config.num_train_timesteps), (B,), generator=generator)
        k = timesteps.to("cpu").long().clamp(0, n - 1)
        net = self.pick_denoiser(denoiser)
        cond = _wan_i2v.training_conditioning(net, latents) if cond is None else cond.expand(B)
        if noise is None:
            noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
        noise = noise.to(latents.device, latents.dtype)
        sigma = noise_scheduler.sigmas[k].to(latents.device, torch.float32).view(B, *([1] * (latents.ndim - 1)))
        t = noise_scheduler.timesteps[k].to(latents.device)
        x_t = ((1 - sigma) * latents.float() + sigma * noise.float()).to(latents.dtype)
        if text.shape[0] == 1 and B > 1:
            text = text.expand(B, -1, -1)
        pred = self.predict(x_t, t, text, denoiser=denoiser, cond=cond).float()
        d = pred - (noise.float() - latents.float())
        if cond is not None and cond.first_frame is not None:
            d = d[:, 1:]
        err = d ** 2 if error_fn is None else error_fn(d)
        per = err.reshape(B, -1).mean(1)
        return per.mean() if reduce else per

    def noisy_latents(self, noise_scheduler, x0, noise, t):
        """Flow matching at model timestep ``t`` ``[B]`` (``0..1000``): ``sigma = t / 1000``,
        ``x_t = (1 - sigma) x0 + sigma noise``."""
        sigma = (torch.as_tensor(t).to(x0.device, torch.float32) / 1000.0).view(-1, *([1] * (x0.ndim - 1)))
        return ((1 - sigma) * x0.float() + sigma * noise.float()).to(x0.dtype)

    def x0_from_prediction(self, scheduler, prediction, x_t, t):
        """``x0 = x_t - sigma v`` with ``sigma = t / 1000`` (the velocity is ``noise - x0``)."""
        sigma = torch.as_tensor(t).to(x_t.device, torch.float32) / 1000.0
        if sigma.ndim == 1:
            sigma = sigma.view(-1, *([1] * (x_t.ndim - 1)))
        return x_t.float() - sigma * prediction.float()

    def predict(self, latents, t, text, denoiser=None, cond=None):
        """One transformer call: ``latents [B, F, C, h, w]``, timesteps ``[B]`` (``1000 sigma``), text ``[B, L, D]``
        -> velocity ``[B, F, C, h, w]``; ``cond``: an image-to-video model's conditioning (:mod:`._wan_i2v`)."""
        net = self.pick_denoiser(denoiser)
        x, t, kw = _wan_i2v.model_inputs(net, latents, t, cond)
        out = net(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False, **kw)[0]
        return out.permute(0, 2, 1, 3, 4)

    # ---- image-to-video (docs/wan.md)
    @property
    def image_to_video(self) -> bool:
        """Wan 2.1 I2V (an image is required) or Wan 2.2 TI2V (optional: without one it is text-to-video)."""
        return _wan_i2v.is_i2v(self.denoiser) or _wan_i2v.is_ti2v(self.denoiser)

    @property
    def needs_image(self) -> bool:
        return _wan_i2v.is_i2v(self.denoiser)

    def image_conditioning(self, image, num_frames, height, width):
        """See :func:`._wan_i2v.image_conditioning`."""
        self._need("vae", "image_conditioning")
        return _wan_i2v.image_conditioning(self, image, num_frames, height, width)

    def training_conditioning(self, latents, denoiser=None):
        return _wan_i2v.training_conditioning(self.pick_denoiser(denoiser), latents)

    def item_conditioning(self, latents, denoiser=None):
        """See :func:`._wan_i2v.item_conditioning` (Wan 2.1 I2V only)."""
        return _wan_i2v.item_conditioning(self.pick_denoiser(denoiser), latents)

    def finish_sample(self, latents, cond):
        return _wan_i2v.finish_sample(latents, cond)

    def scheduler_step(self, scheduler, prediction, timesteps, i, latents, state=None, **kw):
        """``scheduler.step`` on float32 latents (Wan's pipelines keep the latents in float32)."""
        return scheduler.step(prediction, timesteps[i], latents.float(), return_dict=False, **kw)[0], None

    # ---- VAE and sizes
    @property
    def default_size(self) -> tuple[int, int, int]:
        return self._size

    @property
    def vae_scale(self) -> int:
        return int(getattr(self._need("vae", "vae_scale").config, "scale_factor_spatial", None) or 8)

    @property
    def latent_channels(self) -> int:
        c = self.denoiser.config
        return int(c.out_channels or c.in_channels)

    def frame_step(self) -> int:
        """Valid frame counts are ``frame_step * k + 1`` (4 on Wan)."""
        return int(getattr(self._need("vae", "frame_step").config, "scale_factor_temporal", None) or 4)

    @property
    def vae_scale_temporal(self) -> int:
        """:meth:`frame_step` under the name CogVideoX bundles give it (the nodes serve both)."""
        return self.frame_step()

    def latent_frames(self, num_frames: int) -> int:
        return (int(num_frames) - 1) // self.frame_step() + 1

    def check_video_size(self, num_frames, height, width):
        check_size(num_frames, height, width, self.frame_step(), self.vae_scale * int(self.denoiser.config.patch_size[1]))

    def _norm(self, vae, device, dtype):
        c = vae.config
        mean = torch.tensor(c.latents_mean, device=device, dtype=dtype).view(1, -1, 1, 1, 1)
        std = torch.tensor(c.latents_std, device=device, dtype=dtype).view(1, -1, 1, 1, 1)
        return mean, std

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor, sample_posterior: bool = False, generator=None,
                      return_std: bool = False):
        """Frames ``[F, H, W, 3]`` (or ``[B, F, H, W, 3]``) 0..1 -> normalised latents ``[B, (F-1)//4+1, C, h, w]``
        (posterior mode; ``return_std``: also the posterior std, normalised the same way).

        Raises:
            DualAdapterError: wrong layout or a size the model cannot patch.
        """
        if frames.ndim == 4:
            frames = frames.unsqueeze(0)
        if frames.ndim != 5 or frames.shape[-1] != 3:
            raise DualAdapterError(f"frames must be [F, H, W, 3] or [B, F, H, W, 3] (0..1), got {tuple(frames.shape)}")
        m = self.vae_scale * int(self.denoiser.config.patch_size[1])
        if frames.shape[2] % m or frames.shape[3] % m:
            raise DualAdapterError(f"frames are {frames.shape[2]}x{frames.shape[3]} px; height and width must be "
                                   f"multiples of {m} (resize with dual_adapter.media.fit_frames)")
        out, stds = [], []
        with self.use("vae") as vae:
            p = next(vae.parameters())
            mean, std = self._norm(vae, p.device, torch.float32)
            for i in range(frames.shape[0]):
                x = frames[i: i + 1].permute(0, 4, 1, 2, 3).to(p.device, p.dtype) * 2 - 1
                dist = vae.encode(x).latent_dist
                z = dist.sample(generator) if sample_posterior and not return_std else dist.mode()
                out.append(((z.float() - mean) / std).permute(0, 2, 1, 3, 4))
                if return_std:
                    stds.append((dist.std.float() / std).permute(0, 2, 1, 3, 4))
        lat = torch.cat(out, 0).to(self.device, self.dtype)
        if return_std:
            return lat, torch.cat(stds, 0).to(self.device, self.dtype)
        return lat

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, callback=None) -> torch.Tensor:
        """Normalised latents ``[B, F, C, h, w]`` -> frames ``[B, 4(F-1)+1, H, W, 3]`` 0..1, one video at a time.

        Raises:
            DualAdapterError: wrong shape or channel count; non-finite output.
        """
        if latents.ndim != 5:
            raise DualAdapterError(f"latents must be [B, F, C, h, w], got {tuple(latents.shape)}")
        out = []
        with self.use("vae") as vae:
            if latents.shape[2] != int(vae.config.z_dim):
                raise DualAdapterError(f"latents have {latents.shape[2]} channels, the Wan VAE expects "
                                       f"{vae.config.z_dim} (is this latent from another model?)")
            p = next(vae.parameters())
            mean, std = self._norm(vae, p.device, torch.float32)
            for i in range(latents.shape[0]):
                z = latents[i: i + 1].permute(0, 2, 1, 3, 4).to(p.device, torch.float32) * std + mean
                video = vae.decode(z.to(p.dtype)).sample
                if not bool(torch.isfinite(video).all()):
                    raise DualAdapterError(f"VAE decoding of video {i} gave non-finite values (NaN/Inf)")
                out.append(((video.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1).cpu())
                if callback is not None:
                    callback(i + 1, latents.shape[0], {})
        return torch.cat(out, 0)

    # ---- memory
    @property
    def cpu_offload(self) -> bool:
        return self._offload

    def use(self, part: str):
        return offloaded(getattr(self, part), self.device, self._offload)
