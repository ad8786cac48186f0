"""CogVideoX backbone: load from a diffusers folder, build the offline ``tiny`` model, encode text.

A :class:`CogVideoXBundle` holds the four parts every method needs (transformer, VAE, T5 text
encoder + tokenizer) and the noise-scheduler config. It is what the ComfyUI type
``COGVIDEOX_MODEL`` carries.

Layouts used throughout the library:
  * transformer latents: ``[B, F, C, h, w]`` (diffusers' CogVideoX layout), in the VAE's *scaled*
    latent space (``vae_latent * scaling_factor``);
  * ComfyUI LATENT: ``{"samples": [B, C, T, h, w]}``, the *unscaled* VAE latent (core ComfyUI's
    convention: ``samples = latents / scaling_factor``, see ``sampling.to_comfy_latent``);
  * text embeddings: ``[B, L, D_text]`` with ``L`` = the model's text length (226 on the real models).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import torch

from .errors import DualAdapterError

log = logging.getLogger(__name__)

__all__ = [
    "CogVideoXBundle",
    "TINY_VARIANTS",
    "BUILTIN_PRETRAINED",
    "BUILTIN_MODELS",
    "build_tiny",
    "build_tiny_tokenizer",
    "load_cogvideox",
    "load_model",
    "encode_prompt",
    "config_fingerprint",
    "check_video_size",
    "latent_frames_for",
    "rotary_embeddings",
    "transformer_forward",
    "parse_dtype",
    "check_device",
    "ModelInfo",
    "inspect_model",
]

REQUIRED_PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")

# Scheduler config of the released CogVideoX models (scheduler/scheduler_config.json of CogVideoX-2b);
# used for the tiny model and as the fallback when a folder's scheduler/ has no config.
DEFAULT_SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "sample_max_value": 1.0,
    "set_alpha_to_one": True,
    "snr_shift_scale": 3.0,
    "steps_offset": 0,
    "timestep_spacing": "trailing",
    "trained_betas": None,
}

_DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"bf16" | "fp16" | "fp32"`` (or a torch dtype) -> torch dtype.

    Raises:
        DualAdapterError: unknown name.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise DualAdapterError(f"dtype {dtype!r} is not one of bf16, fp16, fp32") from None


_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def check_device(device: str | torch.device | None, name: str = "device") -> str | None:
    """Check that ``device`` names a torch device that exists on this machine.

    ``None``, ``""`` and ``"auto"`` mean "choose automatically" and give ``None``.

    Returns:
        the device string (e.g. ``"cuda:0"``), or None.

    Raises:
        DualAdapterError: not a device name (``"banana"``), a type the pack does not run on, or a device
            this machine does not have (``"cuda"`` without a GPU visible to torch, ``"cuda:3"`` on a
            one-GPU machine); the message says what is available.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() in ("", "auto")):
        return None
    text = str(device).strip()
    try:
        d = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise DualAdapterError(f"{name} {text!r} is not a device; expected cpu, cuda, cuda:N or mps") from None
    if d.type not in _DEVICE_TYPES:
        raise DualAdapterError(f"{name} {text!r}: the pack runs on cpu, cuda, cuda:N, mps or xpu, not {d.type!r}")
    if d.type == "cuda":
        if not torch.cuda.is_available():
            built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise DualAdapterError(f"{name} {text!r}: no CUDA GPU is visible to torch (torch {torch.__version__}, "
                                   f"{built}; torch.cuda.is_available() is False); use cpu, or check the GPU driver "
                                   f"and CUDA_VISIBLE_DEVICES")
        n = torch.cuda.device_count()
        if d.index is not None and d.index >= n:
            raise DualAdapterError(f"{name} {text!r}: this machine has {n} CUDA device(s), cuda:0..cuda:{n - 1}")
    elif d.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise DualAdapterError(f"{name} {text!r}: Apple's MPS backend is not available here; use cpu")
    elif d.type == "xpu":
        if not (hasattr(torch, "xpu") and torch.xpu.is_available()):
            raise DualAdapterError(f"{name} {text!r}: no Intel XPU is available here; use cpu")
    return text


@dataclass
class CogVideoXBundle:
    """A loaded CogVideoX model: transformer, VAE, T5 encoder, tokenizer and scheduler config.

    Attributes:
        name: ``"tiny"`` or the folder it was loaded from.
        device: the execution device (``"cuda"``, ``"cpu"``...).
        dtype: weights dtype of the transformer (the VAE and T5 follow it except on CPU fp16).
        cpu_offload: keep parts on CPU and move each to ``device`` only while it runs.
        max_text_len: the text length the transformer was trained with (226 on real models).
    """

    transformer: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict
    name: str = "tiny"
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    cpu_offload: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def config(self):
        return self.transformer.config

    @property
    def max_text_len(self) -> int:
        return int(self.transformer.config.max_text_seq_length)

    @property
    def vae_scale_spatial(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def vae_scale_temporal(self) -> int:
        return int(self.vae.config.temporal_compression_ratio)

    @property
    def latent_channels(self) -> int:
        return int(self.transformer.config.in_channels)

    @property
    def default_size(self) -> tuple[int, int, int]:
        """(frames, height, width) the model was trained at: 49x480x720 on the real models."""
        c = self.transformer.config
        frames = int(c.sample_frames)
        return frames, int(c.sample_height) * self.vae_scale_spatial, int(c.sample_width) * self.vae_scale_spatial

    @contextlib.contextmanager
    def use(self, part: str) -> Iterator[Any]:
        """Context manager yielding ``self.<part>`` on the execution device (CPU-offload aware)."""
        module = getattr(self, part)
        if not self.cpu_offload or self.device == "cpu":
            yield module
            return
        module.to(self.device)
        try:
            yield module
        finally:
            module.to("cpu")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def release(self, *parts: str) -> None:
        """Move ``parts`` (e.g. ``"vae", "text_encoder"``) to CPU to free accelerator memory."""
        for p in parts:
            m = getattr(self, p, None)
            if m is not None and self.device != "cpu":
                m.to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# the built-in tiny model


# Sizes of the tiny variants. All are random, seeded and built offline in well under a second.
# "tiny" mirrors CogVideoX-2B (sincos positions), "tiny-5b" CogVideoX-5B (RoPE),
# "tiny-1.5" CogVideoX1.5-5B (RoPE, patch_size_t=2).
TINY_VARIANTS: dict[str, dict[str, Any]] = {
    "tiny": dict(use_rotary_positional_embeddings=False, patch_size_t=None),
    "tiny-5b": dict(use_rotary_positional_embeddings=True, patch_size_t=None),
    "tiny-1.5": dict(use_rotary_positional_embeddings=True, patch_size_t=2),
}

_TINY_VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
    up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
    layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
)


def _tiny_transformer_config(variant: str, num_layers: int = 4) -> dict[str, Any]:
    return dict(num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=32,
                text_embed_dim=32, num_layers=num_layers, sample_width=12, sample_height=8, sample_frames=9,
                patch_size=2, temporal_compression_ratio=4, max_text_seq_length=16, **TINY_VARIANTS[variant])

# Built-in *pretrained* models shipped in the package (CPU-sized): name -> description.
BUILTIN_PRETRAINED: dict[str, str] = {
    "mini": "pretrained miniature CogVideoX of the sprite world (README 'Miniature world'); 9 x 32 x 32",
}
BUILTIN_MODELS = tuple(TINY_VARIANTS) + tuple(BUILTIN_PRETRAINED)


_TINY_CORPUS = [
    "dog * is playing guitar",
    "a person is playing guitar",
    "a car is turning on a road",
    "a photo of a dog * sitting on the grass",
    "a cat, a plush toy, a person, a car, a dog, a bear, a horse, a bird",
    "walking running jumping dancing swimming riding turning spinning waving",
    "in the park, on the beach, in a city street, at night, in the snow, under the sea",
    "high quality, cinematic, detailed, realistic, blurry, low quality, distorted",
]


def build_tiny_tokenizer(vocab_size: int = 384):
    """A T5-style tokenizer built offline with the ``tokenizers`` library (no download).

    Metaspace pre-tokenizer and BPE trained on a fixed English corpus, ``<pad>`` = 0, ``</s>`` = 1,
    ``<unk>`` = 2 as in T5, ``</s>`` appended to every sequence. Deterministic.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    alphabet = [chr(c) for c in range(32, 127)] + ["\u2581"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>"],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(_TINY_CORPUS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_tiny(variant: str = "tiny", seed: int = 0, device: str = "cpu", dtype: str | torch.dtype = "fp32",
               num_layers: int = 4) -> CogVideoXBundle:
    """Build a tiny random CogVideoX (transformer, VAE, T5, tokenizer), fully offline and seeded.

    Default video size: 9 frames x 64 x 96 px (latent 3 x 8 x 12, 4 channels), text length 16,
    transformer width D = 64 (4 heads x 16), ``num_layers`` blocks, time-embedding width 32.
    Same ``seed`` -> bit-identical weights.

    Raises:
        DualAdapterError: unknown ``variant`` (see :data:`TINY_VARIANTS`).
    """
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    if variant not in TINY_VARIANTS:
        raise DualAdapterError(f"tiny variant {variant!r} is not one of {sorted(TINY_VARIANTS)}")
    device = check_device(device) or "cpu"
    tokenizer = build_tiny_tokenizer()
    g = torch.random.fork_rng()
    with g:
        torch.manual_seed(seed)
        text_encoder = T5EncoderModel(
            T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4,
                     relative_attention_num_buckets=8, dropout_rate=0.0)
        ).eval()
        torch.manual_seed(seed + 1)
        transformer = CogVideoXTransformer3DModel(**_tiny_transformer_config(variant, num_layers)).eval()
        torch.manual_seed(seed + 2)
        vae = AutoencoderKLCogVideoX(**_TINY_VAE).eval()
    for m in (text_encoder, transformer, vae):
        m.requires_grad_(False)
    dt = parse_dtype(dtype)
    for m in (transformer, vae, text_encoder):
        m.to(device=device) if dt == torch.float32 else m.to(device=device, dtype=dt)
    return CogVideoXBundle(transformer, vae, text_encoder, tokenizer, dict(DEFAULT_SCHEDULER_CONFIG),
                           name=variant, device=device, dtype=dt)


# --------------------------------------------------------------------------------------------
# loading real models


def _missing_parts(folder: Path) -> list[str]:
    missing = []
    for part in REQUIRED_PARTS:
        d = folder / part
        if not d.is_dir():
            missing.append(f"{part}/ (folder missing)")
            continue
        if part == "tokenizer":
            if not any((d / f).exists() for f in ("spiece.model", "tokenizer.json")):
                missing.append("tokenizer/spiece.model or tokenizer/tokenizer.json")
        elif part == "scheduler":
            if not (d / "scheduler_config.json").exists():
                missing.append("scheduler/scheduler_config.json")
        else:
            if not (d / "config.json").exists():
                missing.append(f"{part}/config.json")
            has_weights = any(d.glob("*.safetensors")) or any(d.glob("*.safetensors.index.json"))
            if not has_weights:
                missing.append(f"{part}/*.safetensors (weights)")
    return missing


@dataclass
class ModelInfo:
    """What a model folder (or a tiny variant) declares, read from its configs without loading weights.

    Has the attributes :func:`check_video_size` and :func:`latent_frames_for` use, so inputs can be
    checked against the model before it loads (minutes on 5B).

    Attributes:
        name: the tiny variant or the folder. config: the transformer config (attribute access, diffusers'
        defaults filled in). vae_config: the VAE config (same). scheduler_config: the scheduler config dict.
    """

    name: str
    config: Any
    vae_config: Any
    scheduler_config: dict

    @property
    def vae_scale_spatial(self) -> int:
        return 2 ** (len(self.vae_config.block_out_channels) - 1)

    @property
    def vae_scale_temporal(self) -> int:
        return int(self.vae_config.temporal_compression_ratio)

    @property
    def latent_channels(self) -> int:
        return int(self.config.in_channels)

    @property
    def default_size(self) -> tuple[int, int, int]:
        """(frames, height, width) the model was trained at: 49x480x720 on the released models."""
        c = self.config
        return int(c.sample_frames), int(c.sample_height) * self.vae_scale_spatial, int(c.sample_width) * self.vae_scale_spatial


def _init_defaults(cls) -> dict[str, Any]:
    import inspect

    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if k != "self" and p.default is not inspect.Parameter.empty}


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DualAdapterError(f"{what} {str(path)!r} is not valid JSON ({e}); restore it from the model's "
                               f"original files") from None
    if not isinstance(data, dict):
        raise DualAdapterError(f"{what} {str(path)!r} must hold a JSON object, not {type(data).__name__}")
    return data


# config keys whose type is checked before diffusers sees them: key -> (kind, may be null)
_TRANSFORMER_KEYS = {
    "num_attention_heads": ("int", False), "attention_head_dim": ("int", False), "in_channels": ("int", False),
    "out_channels": ("int", True), "num_layers": ("int", False), "sample_width": ("int", False),
    "sample_height": ("int", False), "sample_frames": ("int", False), "patch_size": ("int", False),
    "patch_size_t": ("int", True), "max_text_seq_length": ("int", False), "text_embed_dim": ("int", False),
    "time_embed_dim": ("int", False), "temporal_compression_ratio": ("int", False), "ofs_embed_dim": ("int", True),
    "use_rotary_positional_embeddings": ("bool", False), "use_learned_positional_embeddings": ("bool", False),
    "flip_sin_to_cos": ("bool", False),
}
_VAE_KEYS = {"latent_channels": ("int", False), "temporal_compression_ratio": ("number", False),
             "block_out_channels": ("ints", False)}


def _check_types(cfg: dict, keys: dict, where: str) -> None:
    bad = []
    for k, (kind, nullable) in keys.items():
        if k not in cfg:
            continue
        v = cfg[k]
        if v is None:
            ok = nullable
        elif kind == "int":
            ok = isinstance(v, int) and not isinstance(v, bool) and v > 0
        elif kind == "number":
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
        elif kind == "bool":
            ok = isinstance(v, bool)
        else:  # a non-empty list of positive ints
            ok = isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(x, int) and not isinstance(x, bool)
                                                                    and x > 0 for x in v)
        if not ok:
            want = {"int": "a positive integer", "number": "a positive number", "bool": "true or false",
                    "ints": "a list of positive integers"}[kind] + (" or null" if nullable else "")
            bad.append(f"{k}={json.dumps(v)} (expected {want})")
    if bad:
        raise DualAdapterError(f"{where} has wrong values: " + "; ".join(bad))


def _refuse_image_to_video(root: Path, tcfg: dict, vcfg: dict) -> None:
    signs = []
    index = root / "model_index.json"
    if index.is_file():
        cls = str(_read_json(index, "model index").get("_class_name", ""))
        if "ImageToVideo" in cls or "I2V" in cls:
            signs.append(f"model_index.json names {cls}")
    latent = vcfg.get("latent_channels")
    if latent and tcfg.get("in_channels") == 2 * latent:
        signs.append(f"the transformer takes {tcfg['in_channels']} input channels = 2 x {latent} latent channels "
                     f"(noise + the encoded image)")
    if tcfg.get("ofs_embed_dim") is not None:
        signs.append("the transformer has an ofs embedding (ofs_embed_dim)")
    if signs:
        raise DualAdapterError(f"model folder {str(root)!r} is an image-to-video CogVideoX (" + "; ".join(signs) +
                               "), which the pack does not support yet; use a text-to-video model "
                               "(CogVideoX-2b, CogVideoX-5b or CogVideoX1.5-5B)")


def _native_file_config(path) -> dict:
    """The diffusers transformer config recorded in a native single file's header (``{}`` when absent)."""
    import json

    from safetensors import safe_open

    try:
        with safe_open(str(Path(path).expanduser()), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - any unreadable header is the same user error
        raise DualAdapterError(f"transformer file {str(path)!r} is not a readable safetensors file: {e}") from None
    try:
        cfg = json.loads(meta.get("config") or "{}")
    except ValueError:
        cfg = {}
    return cfg if isinstance(cfg, dict) else {}


def inspect_model(name_or_path: str | os.PathLike, transformer_file: str | os.PathLike | None = None) -> ModelInfo:
    """Read and check a model's configs without loading any weights (seconds, not minutes).

    ``name_or_path`` is a tiny variant (``"tiny"``, ``"tiny-5b"``, ``"tiny-1.5"``) or a diffusers
    CogVideoX folder. For a folder it checks, in order: the folder and its five parts exist
    (:data:`REQUIRED_PARTS`); ``transformer/config.json``, ``vae/config.json`` and
    ``scheduler/scheduler_config.json`` are JSON objects with values of the right types; the transformer is a
    ``CogVideoXTransformer3DModel``; the model is text-to-video (image-to-video folders are refused until
    supported); the scheduler config builds both CogVideoX schedulers. With ``transformer_file`` (a native
    single file, :mod:`dual_adapter.native`) the folder needs no ``transformer/`` and the transformer config
    comes from the file's header.

    Raises:
        DualAdapterError: naming the file and the wrong or missing value.
    """
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel

    if str(name_or_path) in BUILTIN_PRETRAINED:  # the shipped pretrained folder, under its built-in name
        from .miniworld.model import MINI_DIR, mini_available

        if not mini_available():
            raise DualAdapterError(f"the built-in model {str(name_or_path)!r} is missing its folder {str(MINI_DIR)!r}; "
                                   f"make it with 'python -m dual_adapter miniworld pretrain --out {MINI_DIR}'")
        info = inspect_model(MINI_DIR)
        return ModelInfo(str(name_or_path), info.config, info.vae_config, info.scheduler_config)
    if str(name_or_path) in TINY_VARIANTS:
        t = {**_init_defaults(CogVideoXTransformer3DModel), **_tiny_transformer_config(str(name_or_path))}
        v = {**_init_defaults(AutoencoderKLCogVideoX), **_TINY_VAE}
        return ModelInfo(str(name_or_path), SimpleNamespace(**t), SimpleNamespace(**v), dict(DEFAULT_SCHEDULER_CONFIG))
    root = Path(name_or_path).expanduser()
    if not root.is_dir():
        raise DualAdapterError(f"model folder {str(root)!r} does not exist (expected 'tiny', 'tiny-5b', 'tiny-1.5' or a "
                               f"diffusers CogVideoX folder with {', '.join(p + '/' for p in REQUIRED_PARTS)})")
    missing = _missing_parts(root)
    if transformer_file:
        missing = [m for m in missing if not m.startswith("transformer")]
    if missing:
        raise DualAdapterError(f"model folder {str(root)!r} is incomplete; missing: " + "; ".join(missing))
    tpath, vpath = root / "transformer" / "config.json", root / "vae" / "config.json"
    spath = root / "scheduler" / "scheduler_config.json"
    if transformer_file:
        tpath = Path(transformer_file)
        tcfg = _native_file_config(transformer_file)
    else:
        tcfg = _read_json(tpath, "transformer config")
    vcfg = _read_json(vpath, "VAE config")
    scfg = _read_json(spath, "scheduler config")
    cls = tcfg.get("_class_name")
    if cls is not None and cls != "CogVideoXTransformer3DModel":
        raise DualAdapterError(f"transformer config {str(tpath)!r} is for {cls!r}; the pack loads CogVideoX "
                               f"(CogVideoXTransformer3DModel)")
    _check_types(tcfg, _TRANSFORMER_KEYS, f"transformer config {str(tpath)!r}")
    _check_types(vcfg, _VAE_KEYS, f"VAE config {str(vpath)!r}")
    _refuse_image_to_video(root, tcfg, vcfg)
    scfg = {k: v for k, v in scfg.items() if not k.startswith("_")}
    from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

    for scls in (CogVideoXDPMScheduler, CogVideoXDDIMScheduler):
        try:
            scls.from_config({**scfg, "timestep_spacing": "trailing"}).set_timesteps(2)
        except Exception as e:  # diffusers raises many kinds on wrong values
            raise DualAdapterError(f"scheduler config {str(spath)!r} does not make a {scls.__name__}: "
                                   f"{type(e).__name__}: {e}") from None
    t = {**_init_defaults(CogVideoXTransformer3DModel), **{k: v for k, v in tcfg.items() if not k.startswith("_")}}
    v = {**_init_defaults(AutoencoderKLCogVideoX), **{k: v for k, v in vcfg.items() if not k.startswith("_")}}
    return ModelInfo(str(root), SimpleNamespace(**t), SimpleNamespace(**v), scfg)


def load_cogvideox(
    folder: str | os.PathLike,
    dtype: str | torch.dtype = "bf16",
    device: str | None = None,
    vae_tiling: bool = True,
    vae_slicing: bool = True,
    cpu_offload: bool = False,
    transformer_file: str | os.PathLike | None = None,
) -> CogVideoXBundle:
    """Load CogVideoX-2B / -5B / 1.5-5B from a local diffusers folder.

    The folder must hold ``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``
    (the layout of the ``THUDM/CogVideoX-*`` repositories). Weights load with safetensors only.

    Args:
        folder: path of the diffusers folder.
        dtype: ``"bf16"`` (recommended for 5B), ``"fp16"`` (2B's training dtype) or ``"fp32"``.
        device: execution device; default ``"cuda"`` when available else ``"cpu"``.
        vae_tiling / vae_slicing: decode in spatial tiles / one video at a time (less VRAM).
        cpu_offload: keep every part on CPU and move it to ``device`` only while it runs.
        transformer_file: a native ComfyUI single-file transformer (``models/diffusion_models/*.safetensors``,
            see :mod:`dual_adapter.native`) used instead of ``folder/transformer/`` (which may then be absent).

    Raises:
        DualAdapterError: the folder does not exist or lacks a part (the message lists every missing file
            and the folder it looked in); a config is not JSON or has wrong values; an image-to-video
            folder (see :func:`inspect_model`); ``device`` does not exist here (:func:`check_device`);
            the weights do not load.
    """
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
    from transformers import AutoTokenizer, T5EncoderModel

    root = Path(folder).expanduser()
    info = inspect_model(root, transformer_file=transformer_file)
    device = check_device(device) or ("cuda" if torch.cuda.is_available() else "cpu")
    dt = parse_dtype(dtype)
    load_device = "cpu" if cpu_offload else device
    try:
        if transformer_file:
            from .native import load_native_transformer

            transformer = load_native_transformer(transformer_file, dtype=dt)
        else:
            transformer = CogVideoXTransformer3DModel.from_pretrained(root, subfolder="transformer", torch_dtype=dt,
                                                                      use_safetensors=True)
        vae = AutoencoderKLCogVideoX.from_pretrained(root, subfolder="vae", torch_dtype=dt, use_safetensors=True)
        text_encoder = T5EncoderModel.from_pretrained(root / "text_encoder", torch_dtype=dt, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise DualAdapterError(f"could not load CogVideoX from {str(root)!r}: {type(e).__name__}: {e}") from None
    sched_cfg = info.scheduler_config
    for m in (transformer, vae, text_encoder):
        m.requires_grad_(False)
        m.eval()
        m.to(load_device)
    if vae_tiling:
        vae.enable_tiling()
    if vae_slicing:
        vae.enable_slicing()
    return CogVideoXBundle(transformer, vae, text_encoder, tokenizer, sched_cfg, name=str(root), device=device,
                           dtype=dt, cpu_offload=cpu_offload)


def load_model(name_or_path: str, dtype: str | torch.dtype | None = None, device: str | None = None,
               seed: int = 0, **kw) -> CogVideoXBundle:
    """``"tiny"`` / ``"tiny-5b"`` / ``"tiny-1.5"`` -> :func:`build_tiny`; ``"mini"`` -> the shipped pretrained
    miniature model (:func:`dual_adapter.miniworld.model.load_mini`); anything else is a diffusers folder.

    ``dtype`` defaults to fp32 for tiny / mini models and bf16 for real ones.
    """
    if name_or_path in BUILTIN_PRETRAINED:
        from .miniworld.model import load_mini

        return load_mini(device=check_device(device) or "cpu", dtype=dtype or "fp32")
    if name_or_path in TINY_VARIANTS:
        return build_tiny(name_or_path, seed=seed, device=check_device(device) or "cpu", dtype=dtype or "fp32")
    return load_cogvideox(name_or_path, dtype=dtype or "bf16", device=device, **kw)


# --------------------------------------------------------------------------------------------
# text


@torch.no_grad()
def encode_prompt(bundle: CogVideoXBundle, prompts: str | list[str], on_long: str = "truncate") -> torch.Tensor:
    """Encode prompts with T5, padded / truncated to the model's text length.

    Args:
        prompts: one prompt or a list.
        on_long: ``"truncate"`` (default: drop the tokens past the model's text length, with a
            logged warning naming what was dropped, as the official pipeline does) or ``"error"``.

    Returns:
        ``[B, L, D_text]`` in the transformer's dtype on the execution device (L = 226 on the real models).

    Raises:
        DualAdapterError: a prompt is not a string, or is too long with ``on_long="error"``.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
        raise DualAdapterError(f"prompt must be a string or a list of strings, got {type(prompts).__name__}")
    L = bundle.max_text_len
    tok = bundle.tokenizer
    ids = tok(list(prompts), padding="max_length", max_length=L, truncation=True, add_special_tokens=True,
              return_tensors="pt").input_ids
    full = tok(list(prompts), padding="longest", add_special_tokens=True, return_tensors="pt").input_ids
    if full.shape[-1] > L:
        for i, p in enumerate(prompts):
            n = int((full[i] != tok.pad_token_id).sum())
            if n > L:
                dropped = tok.decode(full[i, L - 1: n - 1])
                msg = f"prompt {i} ({p[:40]!r}...) has {n} tokens, more than the model's {L}"
                if on_long == "error":
                    raise DualAdapterError(msg + "; shorten it")
                log.warning("%s; truncated, dropping: %r", msg, dropped)
    with bundle.use("text_encoder") as te:
        dev = next(te.parameters()).device
        emb = te(ids.to(dev))[0]
    return emb.to(device=bundle.device, dtype=bundle.dtype)


# --------------------------------------------------------------------------------------------
# shapes


def latent_frames_for(bundle_or_cfg, num_frames: int) -> int:
    """Latent frames of a ``num_frames`` video: ``(num_frames - 1) // 4 + 1`` (13 for 49)."""
    t = getattr(bundle_or_cfg, "vae_scale_temporal", 4)
    return (int(num_frames) - 1) // t + 1


def check_video_size(bundle: CogVideoXBundle, num_frames: int, height: int, width: int) -> None:
    """Check that a ``num_frames x height x width`` video fits the model.

    CogVideoX takes ``4k+1`` frames (the VAE compresses time by 4 after the first frame; 1.5 models,
    which also patch time by 2, take ``8k+1``) and sizes
    that are multiples of ``8 * patch_size`` (16 on all released models).

    Raises:
        DualAdapterError: naming the input and the nearest valid values.
    """
    t = bundle.vae_scale_temporal
    if not isinstance(num_frames, int) or num_frames < 1 or (num_frames - 1) % t:
        lo = max(1, (int(num_frames) - 1) // t * t + 1) if isinstance(num_frames, int) else 1
        raise DualAdapterError(f"frames={num_frames}: CogVideoX takes {t}k+1 frames (e.g. {lo} or {lo + t}; "
                               f"49 on the released models)")
    if bundle.config.patch_size_t and latent_frames_for(bundle, num_frames) % 2 == 0:
        # 1.5 models patch time by 2 and the VAE decodes an odd number of latent frames: 8k+1 frames
        raise DualAdapterError(f"frames={num_frames}: CogVideoX 1.5 models take 8k+1 frames "
                               f"(e.g. {num_frames - t} or {num_frames + t}; 81 on the released 1.5 model)")
    m = bundle.vae_scale_spatial * int(bundle.config.patch_size)
    for name, v in (("height", height), ("width", width)):
        if not isinstance(v, int) or v < m or v % m:
            near = max(m, int(v) // m * m) if isinstance(v, (int, float)) else m
            raise DualAdapterError(f"{name}={v}: must be a positive multiple of {m} for this model "
                                   f"(e.g. {near}); the released models use 480x720")


def config_fingerprint(transformer) -> str:
    """Short hash of the transformer's architecture config (block count, width, positions...).

    Stored in saved adapters so that loading them on another architecture fails clearly.
    """
    c = dict(transformer.config)
    keys = ["num_layers", "num_attention_heads", "attention_head_dim", "time_embed_dim", "text_embed_dim",
            "in_channels", "patch_size", "patch_size_t", "use_rotary_positional_embeddings"]
    blob = json.dumps({k: c.get(k) for k in keys}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def transformer_width(transformer) -> int:
    c = transformer.config
    return int(c.num_attention_heads) * int(c.attention_head_dim)


# --------------------------------------------------------------------------------------------
# forward


_ROPE_CACHE: dict = {}


def rotary_embeddings(transformer, latent_frames: int, latent_h: int, latent_w: int, device) -> tuple | None:
    """RoPE (cos, sin) for a latent video, as the diffusers pipeline builds them; None for sincos models.

    Follows ``CogVideoXPipeline._prepare_rotary_positional_embeddings`` (grid crops for 1.0,
    ``grid_type="slice"`` for 1.5).
    """
    c = transformer.config
    if not c.use_rotary_positional_embeddings:
        return None
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    key = (id(transformer.config), latent_frames, latent_h, latent_w, str(device))
    if key in _ROPE_CACHE:
        return _ROPE_CACHE[key]
    p, p_t = c.patch_size, c.patch_size_t
    gh, gw = latent_h // p, latent_w // p
    bw, bh = c.sample_width // p, c.sample_height // p
    if p_t is None:
        crops = get_resize_crop_region_for_grid((gh, gw), bw, bh)
        cos, sin = get_3d_rotary_pos_embed(embed_dim=c.attention_head_dim, crops_coords=crops, grid_size=(gh, gw),
                                           temporal_size=latent_frames, device=device)
    else:
        cos, sin = get_3d_rotary_pos_embed(embed_dim=c.attention_head_dim, crops_coords=None, grid_size=(gh, gw),
                                           temporal_size=(latent_frames + p_t - 1) // p_t, grid_type="slice",
                                           max_size=(bh, bw), device=device)
    if len(_ROPE_CACHE) > 32:
        _ROPE_CACHE.clear()
    _ROPE_CACHE[key] = (cos, sin)
    return cos, sin


def transformer_forward(transformer, latents: torch.Tensor, prompt_embeds: torch.Tensor,
                        timestep: torch.Tensor) -> torch.Tensor:
    """One transformer call: ``latents [B, F, C, h, w]``, ``prompt_embeds [B, L, D]``, ``timestep [B]``
    -> model output (v-prediction) ``[B, F, C, h, w]``. Builds RoPE when the model uses it."""
    B, F, C, h, w = latents.shape
    rope = rotary_embeddings(transformer, F, h, w, latents.device)
    return transformer(hidden_states=latents, encoder_hidden_states=prompt_embeds, timestep=timestep,
                       image_rotary_emb=rope, return_dict=False)[0]
