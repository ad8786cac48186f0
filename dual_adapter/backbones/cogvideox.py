"""CogVideoX behind the :class:`~dual_adapter.backbones.base.VideoBackbone` interface: everything the
methods need to know about CogVideoX lives here.

Loading (a diffusers folder, the offline ``tiny`` variants; the shipped ``mini`` model and native single
files are resolved above, in :mod:`dual_adapter.models`), the
:class:`CogVideoXBundle` (what the ComfyUI type ``COGVIDEOX_MODEL`` carries), T5 text encoding, frame-count
and size rules, the transformer call (RoPE), the schedulers and the training objective (v-prediction,
``1 / (1 - alphas_cumprod)`` weighted x0 error), the 3D VAE (encode / decode).

Layouts used throughout the library:
  * transformer latents: ``[B, F, C, h, w]`` (diffusers' CogVideoX layout), in the VAE's *scaled*
    latent space (``vae_latent * scaling_factor``);
  * ComfyUI LATENT: ``{"samples": [B, C, T, h, w]}``, the *unscaled* VAE latent (core ComfyUI's
    convention: ``samples = latents / scaling_factor``, see ``sampling.to_comfy_latent``);
  * text embeddings: ``[B, L, D_text]`` with ``L`` = the model's text length (226 on the real models).

Roles on CogVideoX: every ``transformer_blocks.{i}.attn1`` is a *joint* attention over the text
tokens and all visual tokens of all frames (so text enters every block through it); there is no
separate spatial, temporal or cross attention, and no skip connection (so no AH). Motion LoRAs (TAP)
target the joint attention.

Size: one backbone is one module here (``backbones/__init__.py`` finds backbones by module); the
bundle, tiny builder, config checks, folder loader, T5, schedulers, objective and VAE become a
``cogvideox/`` package when the registry finds packages too.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import DualAdapterError
from ..limits import check_model_config, check_video_size as check_size_bounds
from .base import BlockInfo, VideoBackbone, check_device, check_role, offloaded, parse_dtype

log = logging.getLogger("dual_adapter.backbone")

KIND = "cogvideox"
FAMILY = "CogVideoX (2B, 5B, 1.5-5B; diffusers CogVideoXTransformer3DModel)"

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
        return int(self.transformer.config.out_channels or self.transformer.config.in_channels)

    @property
    def default_size(self) -> tuple[int, int, int]:
        """(frames, height, width) the model was trained at: 49x480x720 on the real models."""
        c = self.transformer.config
        frames = int(c.sample_frames)
        return frames, int(c.sample_height) * self.vae_scale_spatial, int(c.sample_width) * self.vae_scale_spatial

    def use(self, part: str):
        """Context manager yielding ``self.<part>`` on the execution device (CPU-offload aware)."""
        return offloaded(getattr(self, part), self.device, self.cpu_offload)

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
# "tiny-1.5" CogVideoX1.5-5B (RoPE, patch_size_t=2); "tiny-i2v" CogVideoX-5B-I2V (the image latents joined on the
# channels: in_channels 2 x 4), "tiny-1.5-i2v" CogVideoX1.5-5B-I2V (also the ofs embedding).
TINY_VARIANTS: dict[str, dict[str, Any]] = {
    "tiny": dict(use_rotary_positional_embeddings=False, patch_size_t=None),
    "tiny-5b": dict(use_rotary_positional_embeddings=True, patch_size_t=None),
    "tiny-1.5": dict(use_rotary_positional_embeddings=True, patch_size_t=2),
    "tiny-i2v": dict(use_rotary_positional_embeddings=True, patch_size_t=None, in_channels=8),
    "tiny-1.5-i2v": dict(use_rotary_positional_embeddings=True, patch_size_t=2, in_channels=8, ofs_embed_dim=32),
}

_TINY_VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
    up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
    layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
)


def _tiny_transformer_config(variant: str, num_layers: int = 4) -> dict[str, Any]:
    return {**dict(num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=32,
                   text_embed_dim=32, num_layers=num_layers, sample_width=12, sample_height=8, sample_frames=9,
                   patch_size=2, temporal_compression_ratio=4, max_text_seq_length=16), **TINY_VARIANTS[variant]}

# Built-in *pretrained* models shipped in the package (CPU-sized): name -> description.
BUILTIN_PRETRAINED: dict[str, str] = {
    "mini": "pretrained miniature CogVideoX of the sprite world (docs/miniworld.md); 9 x 32 x 32",
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
    from ..threads import small_model_threads

    small_model_threads(device)  # one CPU thread unless the user chose a count (docs/results/demo.md)
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
        return int(self.config.out_channels or self.config.in_channels)

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


def _check_channels(root: Path, tcfg: dict, vcfg: dict) -> None:
    """The transformer takes the VAE's latent channels (text-to-video) or twice them (image-to-video: the noisy
    latents and the image latents joined on the channels) and outputs the latent channels."""
    latent = vcfg.get("latent_channels", 16)
    cin = tcfg.get("in_channels", 16)
    cout = tcfg.get("out_channels") or cin
    if cout != latent or cin not in (latent, 2 * latent):
        raise DualAdapterError(f"model folder {str(root)!r}: the transformer maps {cin} -> {cout} channels but the "
                               f"VAE has {latent} latent channels (expected {latent} -> {latent}, text-to-video, or "
                               f"{2 * latent} -> {latent}, image-to-video); the parts are from different models")


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


def _no_such_model(name: str) -> str:
    """The message for a ``--model`` that is neither a built-in CogVideoX name nor a folder: the built-in names (a
    close one first) and what a folder must hold. (A built-in name of another backbone is refused one layer up, by
    :func:`dual_adapter.models.refuse_other_backbone`, which knows every backbone.)"""
    import difflib

    names = ", ".join(repr(n) for n in BUILTIN_MODELS)
    close = difflib.get_close_matches(name, BUILTIN_MODELS, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (f"model folder {name!r} does not exist ({hint}expected a built-in model, {names}, or a diffusers "
            f"CogVideoX folder with {', '.join(p + '/' for p in REQUIRED_PARTS)})")


def inspect_model(name_or_path: str | os.PathLike, transformer_file: str | os.PathLike | None = None) -> ModelInfo:
    """Read and check a model's configs without loading any weights (seconds, not minutes).

    ``name_or_path`` is a tiny variant (``"tiny"``, ``"tiny-5b"``, ``"tiny-1.5"``) or a diffusers
    CogVideoX folder (the built-in ``mini`` is resolved by :func:`dual_adapter.models.inspect_model`). For a folder it checks, in order: the folder and its five parts exist
    (:data:`REQUIRED_PARTS`); ``transformer/config.json``, ``vae/config.json`` and
    ``scheduler/scheduler_config.json`` are JSON objects with values of the right types; the transformer is a
    ``CogVideoXTransformer3DModel``; its channels fit the VAE (text-to-video, or image-to-video: CogVideoX-5B-I2V,
    CogVideoX1.5-5B-I2V); the scheduler config builds both CogVideoX schedulers. With ``transformer_file`` (a native
    single file, :mod:`dual_adapter.native`) the folder needs no ``transformer/`` and the transformer config
    comes from the file's header.

    Raises:
        DualAdapterError: naming the file and the wrong or missing value.
    """
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel

    if str(name_or_path) in TINY_VARIANTS:
        t = {**_init_defaults(CogVideoXTransformer3DModel), **_tiny_transformer_config(str(name_or_path))}
        v = {**_init_defaults(AutoencoderKLCogVideoX), **_TINY_VAE}
        return ModelInfo(str(name_or_path), SimpleNamespace(**t), SimpleNamespace(**v), dict(DEFAULT_SCHEDULER_CONFIG))
    root = Path(name_or_path).expanduser()
    if not root.is_dir():
        raise DualAdapterError(_no_such_model(str(name_or_path)))
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
    check_model_config(tcfg, f"transformer config {str(tpath)!r}")  # bounded before anything is built
    check_model_config(vcfg, f"VAE config {str(vpath)!r}")
    _check_channels(root, tcfg, vcfg)
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
    transformer: nn.Module | None = None,
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
            see :mod:`dual_adapter.native`) used instead of ``folder/transformer/`` (which may then be absent);
            its configs are checked here, its weights come as ``transformer``: load such a file with
            :func:`dual_adapter.models.load_cogvideox`, which reads it with :mod:`dual_adapter.native`.
        transformer: the already loaded transformer of ``transformer_file``.

    Raises:
        DualAdapterError: the folder does not exist or lacks a part (the message lists every missing file
            and the folder it looked in); a config is not JSON or has wrong values (see :func:`inspect_model`);
            ``device`` does not exist here (:func:`check_device`);
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
        if transformer_file and transformer is None:
            raise DualAdapterError(f"transformer file {str(transformer_file)!r}: load native single files with "
                                   f"dual_adapter.models.load_cogvideox (the backbone does not read ComfyUI's keys)")
        if transformer is None:
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
        DualAdapterError: naming the input and the nearest valid values; a size above
            :data:`~dual_adapter.limits.MAX_FRAMES` / ``MAX_SIDE``.
    """
    check_size_bounds(num_frames, height, width)  # the upper bounds shared with the nodes and the CLI
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


#: The transformer-config fields a trained adapter depends on (stored in LoRA metadata as ``base_config``).
ARCHITECTURE_KEYS = ("num_layers", "num_attention_heads", "attention_head_dim", "time_embed_dim", "text_embed_dim",
                     "in_channels", "out_channels", "patch_size", "patch_size_t", "use_rotary_positional_embeddings",
                     "sample_frames", "sample_height", "sample_width", "max_text_seq_length")


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
                        timestep: torch.Tensor, image_latents: torch.Tensor | None = None) -> torch.Tensor:
    """One transformer call: ``latents [B, F, C, h, w]``, ``prompt_embeds [B, L, D]``, ``timestep [B]``
    -> model output (v-prediction) ``[B, F, C, h, w]``. Builds RoPE when the model uses it.

    Image-to-video models: ``image_latents [B, F, C, h, w]`` (:func:`image_conditioning`) are joined to the latents
    on the channels, and the ofs embedding of CogVideoX1.5-5B-I2V gets 2.0, as ``CogVideoXImageToVideoPipeline``
    calls it.

    Raises:
        DualAdapterError: an image-to-video model without ``image_latents``, or the reverse.
    """
    B, F, C, h, w = latents.shape
    c = transformer.config
    i2v = int(c.in_channels) != int(c.out_channels or c.in_channels)
    if i2v != (image_latents is not None):
        raise DualAdapterError("this CogVideoX model is image-to-video: give it a conditioning image" if i2v else
                               "a conditioning image was given to a text-to-video CogVideoX model")
    if image_latents is not None:
        latents = torch.cat([latents, image_latents.to(latents.device, latents.dtype)], 2)
    rope = rotary_embeddings(transformer, F, h, w, latents.device)
    kw = {}
    if getattr(c, "ofs_embed_dim", None):
        kw["ofs"] = latents.new_full((1,), 2.0)
    return transformer(hidden_states=latents, encoder_hidden_states=prompt_embeds, timestep=timestep,
                       image_rotary_emb=rope, return_dict=False, **kw)[0]


def image_latent_frames(first: torch.Tensor, latent_frames: int, p_t: int | None) -> torch.Tensor:
    """CogVideoX I2V's channel-joined latents: the image's latent frame ``first [B, 1, C, h, w]`` followed by zeros
    up to ``latent_frames`` rounded up to a 1.5 model's time patch ``p_t``, as ``CogVideoXImageToVideoPipeline``
    builds them (on a 1.5 model the image thus sits beside the padding frame in front, which the sampler drops)."""
    total = latent_frames + (-latent_frames) % int(p_t or 1)
    z = torch.zeros((first.shape[0], total - 1, *first.shape[2:]), dtype=first.dtype, device=first.device)
    return torch.cat([first, z], 1)


@torch.no_grad()
def image_conditioning(bundle: CogVideoXBundle, image: torch.Tensor, num_frames: int, height: int, width: int):
    """The conditioning of an image-to-video CogVideoX for a ``num_frames x height x width`` video from ``image``
    (``[H, W, 3]`` / ``[1, H, W, 3]`` 0..1, fitted by :func:`~dual_adapter.backbones.base.prepare_image`): the
    image encoded alone (the posterior mode), scaled as ``CogVideoXImageToVideoPipeline`` scales it (times the VAE's
    scaling factor, or divided by it where the VAE config says ``invert_scale_latents``, CogVideoX 1.5), then zero
    latent frames (:func:`image_latent_frames`).

    Raises:
        DualAdapterError: a text-to-video model; a bad image or video size.
    """
    from .base import ImageConditioning, prepare_image

    c = bundle.transformer.config
    if int(c.in_channels) == int(c.out_channels or c.in_channels):
        raise DualAdapterError(f"model {bundle.name!r} is a text-to-video CogVideoX; a conditioning image needs "
                               f"CogVideoX-5B-I2V or CogVideoX1.5-5B-I2V")
    check_video_size(bundle, num_frames, height, width)
    img = prepare_image(image, height, width)
    z = encode_frames(bundle, img)  # [1, 1, C, h, w], times the scaling factor
    sf = float(bundle.vae.config.scaling_factor)
    if getattr(bundle.vae.config, "invert_scale_latents", False):
        z = z / (sf * sf)
    lat = image_latent_frames(z, latent_frames_for(bundle, num_frames), c.patch_size_t)
    return ImageConditioning(concat=lat.to(bundle.device, bundle.dtype))


# --------------------------------------------------------------------------------------------
# schedulers and the training objective

SCHEDULERS = ("dpm", "ddim")


def make_scheduler(bundle_or_config, name: str = "dpm"):
    """A fresh CogVideoX scheduler (``"dpm"`` = CogVideoXDPMScheduler, ``"ddim"`` = CogVideoXDDIMScheduler)
    from the model's scheduler config, always with ``timestep_spacing="trailing"``.

    Raises:
        DualAdapterError: unknown name.
    """
    from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

    cfg = dict(getattr(bundle_or_config, "scheduler_config", bundle_or_config))
    cfg["timestep_spacing"] = "trailing"
    cls = {"dpm": CogVideoXDPMScheduler, "ddim": CogVideoXDDIMScheduler}.get(str(name).lower())
    if cls is None:
        raise DualAdapterError(f"scheduler {name!r} is not one of {SCHEDULERS}")
    return cls.from_config(cfg)


def make_noise_scheduler(bundle_or_config):
    """The training noise scheduler (CogVideoXDDIMScheduler from the model's scheduler config)."""
    from diffusers import CogVideoXDDIMScheduler

    cfg = dict(getattr(bundle_or_config, "scheduler_config", bundle_or_config))
    return CogVideoXDDIMScheduler.from_config(cfg)


def _pad_time(x: torch.Tensor, p_t: int | None) -> torch.Tensor:
    # CogVideoX 1.5 patches time by 2: pad at the front with copies of the first frame, as the pipeline pads noise.
    if p_t and x.shape[1] % p_t:
        n = p_t - x.shape[1] % p_t
        x = torch.cat([x[:, :1].expand(-1, n, -1, -1, -1), x], 1)
    return x


def training_loss(
    model: torch.nn.Module,
    noise_scheduler,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    generator: torch.Generator | None = None,
    timesteps: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    reduce: bool = True,
    error_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    cond=None,
) -> torch.Tensor:
    """The CogVideoX training objective (docs/training.md, "The training objective"); :func:`dual_adapter.training.diffusion_loss`
    calls it for CogVideoX denoisers.

    ``t ~ U[0, 1000)``, ``x_t = add_noise(x_0, eps, t)``, ``v = model(x_t, t)``,
    ``x0_pred = scheduler.get_velocity(v, x_t, t)``,
    ``loss = mean(1 / (1 - alphas_cumprod[t]) * (x0_pred - x_0)^2)``.

    Args:
        latents: clean scaled latents ``x_0`` ``[B, F, C, h, w]``.
        prompt_embeds: ``[B or 1, L, D_text]``.
        generator: CPU generator for ``t`` and ``eps`` (ignored for what is given explicitly).
        timesteps: optional ``[B]`` integer timesteps. noise: optional ``eps`` like ``latents``.
        reduce: return the scalar mean (default) or the per-sample loss ``[B]``.
        error_fn: maps the prediction error ``d = x0_pred - x_0`` (``[B, F', C, h, w]``, after 1.5-model
            padding) to the per-element error; default ``d ** 2``. MotionDirector's appearance-debiased
            loss uses it (see :mod:`dual_adapter.lora`).
        cond: an image-to-video model's :class:`~dual_adapter.backbones.base.ImageConditioning`; None there: the
            clip's first latent frame as the image's (:func:`image_latent_frames`).
    """
    B = latents.shape[0]
    p_t = getattr(getattr(model, "config", None), "patch_size_t", None)
    c = model.config
    image_latents = None
    if int(c.in_channels) != int(c.out_channels or c.in_channels):
        image_latents = (cond.expand(B).concat if cond is not None else
                         image_latent_frames(latents[:, :1], latents.shape[1], p_t))
    elif cond is not None:
        raise DualAdapterError("a conditioning image was given to a text-to-video CogVideoX model")
    x0 = _pad_time(latents, p_t)
    n_train = noise_scheduler.config.num_train_timesteps
    if timesteps is None:
        timesteps = torch.randint(0, n_train, (B,), generator=generator)
    timesteps = timesteps.to(x0.device, non_blocking=True).long()  # host -> GPU without waiting for the GPU
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32)
    noise = _pad_time(noise, p_t).to(x0.device, x0.dtype, non_blocking=True)
    x_t = noise_scheduler.add_noise(x0, noise, timesteps)
    if prompt_embeds.shape[0] == 1 and B > 1:
        prompt_embeds = prompt_embeds.expand(B, -1, -1)
    v = transformer_forward(model, x_t, prompt_embeds, timesteps, image_latents)
    x0_pred = noise_scheduler.get_velocity(v.float(), x_t.float(), timesteps)
    ac = noise_scheduler.alphas_cumprod.to(x0.device)[timesteps].float()
    w = 1.0 / (1.0 - ac)
    d = x0_pred - x0.float()
    err = d ** 2 if error_fn is None else error_fn(d)
    per = (w.view(B, *([1] * (err.ndim - 1))) * err).reshape(B, -1).mean(1)
    return per.mean() if reduce else per


# --------------------------------------------------------------------------------------------
# VAE


@torch.no_grad()
def decode_latents(bundle: CogVideoXBundle, latents: torch.Tensor,
                   callback: Callable[[int, int, dict], None] | None = None) -> torch.Tensor:
    """Decode ``[B, F, C, h, w]`` scaled latents to frames ``[B, 4(F-1)+1, H, W, 3]`` float 0..1.

    One video at a time (``callback(i, B, {})`` after each); the VAE's tiling applies when enabled.
    """
    if latents.ndim != 5:
        raise DualAdapterError(f"latents must be [B, F, C, h, w], got {tuple(latents.shape)}")
    if latents.shape[2] != bundle.vae.config.latent_channels:
        raise DualAdapterError(f"latents have {latents.shape[2]} channels, the VAE expects "
                               f"{bundle.vae.config.latent_channels} (is this latent from another model?)")
    out = []
    with bundle.use("vae") as vae:
        dev = next(vae.parameters()).device
        vdt = next(vae.parameters()).dtype
        for i in range(latents.shape[0]):
            z = latents[i: i + 1].permute(0, 2, 1, 3, 4).to(dev, vdt) / vae.config.scaling_factor
            video = vae.decode(z).sample  # [1, 3, F, H, W] in -1..1
            if not bool(torch.isfinite(video).all()):
                raise DualAdapterError(f"VAE decoding of video {i} gave non-finite values (NaN/Inf); the latents "
                                       f"were finite, so the VAE overflowed (try --dtype bf16 or fp32)"
                                       if bool(torch.isfinite(z).all()) else
                                       f"latents of video {i} contain NaN/Inf; nothing to decode")
            out.append(((video.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1).cpu())
            if callback is not None:
                callback(i + 1, latents.shape[0], {})
    return torch.cat(out, 0)


@torch.no_grad()
def encode_frames(bundle: CogVideoXBundle, frames: torch.Tensor, sample_posterior: bool = False,
                  generator: torch.Generator | None = None, return_std: bool = False):
    """Encode frames ``[F, H, W, 3]`` (or a batch ``[B, F, H, W, 3]``) float 0..1 to scaled latents
    ``[B, (F-1)//4+1, C, H/8, W/8]``.

    ``F`` should be 4k+1 (extra frames past the last 4k+1 are dropped by the VAE's temporal
    compression). ``sample_posterior=False`` uses the posterior mode (deterministic).
    ``return_std=True`` returns ``(mean, std)`` of the (diagonal Gaussian) posterior instead, both
    scaled like the latents, so that callers can draw ``mean + std * eps`` themselves (DualReal draws
    a fresh sample every training step, as the authors do). The posterior mode is its mean.

    Raises:
        DualAdapterError: wrong layout, or sizes the model cannot patch.
    """
    if frames.ndim == 4:
        frames = frames.unsqueeze(0)
    if frames.ndim != 5 or frames.shape[-1] != 3:
        raise DualAdapterError(f"frames must be [F, H, W, 3] or [B, F, H, W, 3] (0..1), got {tuple(frames.shape)}")
    if frames.shape[1] < 1:
        raise DualAdapterError("frames: empty batch (0 frames); expected at least 1 frame")
    m = bundle.vae_scale_spatial * int(bundle.config.patch_size)
    if frames.shape[2] % m or frames.shape[3] % m:
        raise DualAdapterError(f"frames are {frames.shape[2]}x{frames.shape[3]} px; height and width must be "
                               f"multiples of {m} (resize with dual_adapter.media.fit_frames)")
    out, stds = [], []
    with bundle.use("vae") as vae:
        dev = next(vae.parameters()).device
        vdt = next(vae.parameters()).dtype
        sf = vae.config.scaling_factor
        for i in range(frames.shape[0]):
            x = frames[i: i + 1].permute(0, 4, 1, 2, 3).to(dev, vdt) * 2 - 1  # [1, 3, F, H, W]
            dist = vae.encode(x).latent_dist
            z = dist.sample(generator) if sample_posterior and not return_std else dist.mode()
            out.append((z * sf).permute(0, 2, 1, 3, 4))
            if return_std:
                stds.append((dist.std * sf).permute(0, 2, 1, 3, 4))
    mean = torch.cat(out, 0).to(bundle.device, bundle.dtype)
    if return_std:
        return mean, torch.cat(stds, 0).to(bundle.device, bundle.dtype)
    return mean


# --------------------------------------------------------------------------------------------
# the backbone interface


def tiny_names() -> tuple[str, ...]:
    return tuple(TINY_VARIANTS)


def detect(folder: Path) -> bool:
    """A diffusers CogVideoX folder: ``transformer/config.json`` naming a CogVideoX transformer."""
    cfg = Path(folder) / "transformer" / "config.json"
    if not cfg.is_file():
        return False
    try:
        return "CogVideoX" in str(json.loads(cfg.read_text()).get("_class_name", ""))
    except ValueError:
        return False


def owns(denoiser: nn.Module) -> bool:
    """A CogVideoX transformer (diffusers', or a patched / trainable copy of one)."""
    return type(denoiser).__name__.startswith("CogVideoX") or hasattr(denoiser, "transformer_blocks")


def load(name_or_path: str, dtype=None, device=None, seed: int = 0, **kw) -> "CogVideoXBackbone":
    """A tiny variant (:func:`build_tiny`) or a diffusers folder (:func:`load_cogvideox`) wrapped in
    :class:`CogVideoXBackbone`. The built-in ``mini``, ``mini``-layout folders and native single files load
    through :func:`dual_adapter.models.load_backbone` (the one place that resolves every model name).

    Raises:
        DualAdapterError: ``name_or_path`` is a built-in pretrained name; the errors of :func:`load_cogvideox`.
    """
    if name_or_path in BUILTIN_PRETRAINED:
        raise DualAdapterError(f"the built-in model {name_or_path!r} loads with dual_adapter.models.load_model or "
                               f"dual_adapter.models.load_backbone")
    if name_or_path in TINY_VARIANTS:
        return CogVideoXBackbone(build_tiny(name_or_path, seed=seed, device=check_device(device) or "cpu",
                                            dtype=dtype or "fp32"))
    return CogVideoXBackbone(load_cogvideox(name_or_path, dtype=dtype or "bf16", device=device, **kw))


def for_denoiser(denoiser: nn.Module, scheduler_config: dict | None = None) -> "CogVideoXBackbone":
    """A :class:`CogVideoXBackbone` for a bare transformer (no VAE / text encoder): structure, objective,
    noise scheduler (``scheduler_config``, default the released models')."""
    return CogVideoXBackbone(None, denoiser=denoiser, scheduler_config=scheduler_config)


class CogVideoXBackbone(VideoBackbone):
    """A :class:`CogVideoXBundle` (kept as :attr:`bundle`) seen through the interface; ``bundle`` may be None
    for a bare transformer (:func:`for_denoiser`), which then offers structure and objective only."""

    kind = KIND
    family = FAMILY
    latent_layout = "BFCHW"
    prediction_type = "v_prediction"
    motion_role = "joint"

    def __init__(self, bundle: CogVideoXBundle | None, *, denoiser: nn.Module | None = None,
                 scheduler_config: dict | None = None):
        self.bundle = bundle
        if bundle is not None:
            self.name, self.device, self.dtype = bundle.name, bundle.device, bundle.dtype
            self.denoiser = bundle.transformer
            self.vae, self.text_encoder, self.tokenizer = bundle.vae, bundle.text_encoder, bundle.tokenizer
            self.scheduler_config = bundle.scheduler_config
        else:
            self.denoiser = denoiser
            self.vae = self.text_encoder = self.tokenizer = None
            self.scheduler_config = dict(scheduler_config if scheduler_config is not None else DEFAULT_SCHEDULER_CONFIG)
            p = next(denoiser.parameters(), None) if denoiser is not None else None
            if p is not None:
                self.device, self.dtype = str(p.device), p.dtype

    def _need_bundle(self, what: str) -> CogVideoXBundle:
        if self.bundle is None:
            raise DualAdapterError(f"{what} needs the whole CogVideoX model (VAE, text encoder), not a bare transformer")
        return self.bundle

    # structure
    def blocks(self, denoiser: nn.Module | None = None) -> list[BlockInfo]:
        d = self.pick_denoiser(denoiser)
        return [BlockInfo(f"transformer_blocks.{i}", "joint", i, b, True) for i, b in enumerate(d.transformer_blocks)]

    def attention_modules(self, role: str, denoiser: nn.Module | None = None) -> dict[str, nn.Module]:
        if check_role(role) != "joint":
            return {}
        return {f"{b.name}.attn1": b.module.attn1 for b in self.blocks(denoiser)}

    def text_entry_points(self, denoiser: nn.Module | None = None) -> dict[str, nn.Module]:
        return self.attention_modules("joint", denoiser)

    def width(self, denoiser: nn.Module | None = None) -> int:
        return transformer_width(self.pick_denoiser(denoiser))

    def architecture(self, denoiser: nn.Module | None = None) -> dict:
        c = dict(self.pick_denoiser(denoiser).config)
        return {k: c.get(k) for k in ARCHITECTURE_KEYS}

    def fingerprint(self, denoiser: nn.Module | None = None) -> str:
        return config_fingerprint(self.pick_denoiser(denoiser))

    def time_patch(self, denoiser: nn.Module | None = None) -> int:
        return int(getattr(self.pick_denoiser(denoiser).config, "patch_size_t", None) or 1)

    def adapter_dims(self, denoiser: nn.Module | None = None) -> tuple[int, int, int]:
        """(width, ``num_layers``, ``time_embed_dim``): the StageBlender reads the blocks' own ``temb``."""
        c = self.pick_denoiser(denoiser).config
        return int(c.num_attention_heads) * int(c.attention_head_dim), int(c.num_layers), int(c.time_embed_dim)

    def adapted_block_forward(self, block, hooks, state, *args, **kwargs):
        return adapted_block_forward(block, hooks, *args, **kwargs)

    def pad_latent_frames(self, latents: torch.Tensor, denoiser: nn.Module | None = None) -> torch.Tensor:
        return _pad_time(latents, getattr(getattr(self.pick_denoiser(denoiser), "config", None), "patch_size_t", None))

    # text
    def encode_prompt(self, prompts: str | Sequence[str], on_long: str = "truncate") -> torch.Tensor:
        return encode_prompt(self._need_bundle("encode_prompt"),
                             list(prompts) if not isinstance(prompts, str) else prompts, on_long=on_long)

    @property
    def text_length(self) -> int:
        return int((self.denoiser).config.max_text_seq_length)

    # objective / schedulers
    def noise_scheduler(self):
        return make_noise_scheduler(self.scheduler_config)

    def make_scheduler(self, name: str = "dpm"):
        return make_scheduler(self.scheduler_config, name)

    def training_loss(self, denoiser, noise_scheduler, latents, text, **kw) -> torch.Tensor:
        net = self.pick_denoiser(denoiser)
        if kw.get("cond") is None:
            kw["cond"] = self.training_conditioning(latents, net)
        return training_loss(net, noise_scheduler, latents, text, **kw)

    def predict(self, latents, t, text, denoiser=None, cond=None):
        return transformer_forward(denoiser if denoiser is not None else self.denoiser, latents, text, t,
                                   None if cond is None else cond.concat)

    # image-to-video
    @property
    def image_to_video(self) -> bool:
        """CogVideoX-5B-I2V / 1.5-5B-I2V: the transformer takes twice the latent channels."""
        c = self.denoiser.config
        return int(c.in_channels) != int(c.out_channels or c.in_channels)

    def image_conditioning(self, image, num_frames, height, width):
        """See :func:`image_conditioning` (the image latents joined on the channels)."""
        return image_conditioning(self._need_bundle("image_conditioning"), image, num_frames, height, width)

    def training_conditioning(self, latents, denoiser=None):
        """The clip's first latent frame as the image's, then zeros (:func:`image_latent_frames`)."""
        d = self.pick_denoiser(denoiser)
        c = d.config
        if int(c.in_channels) == int(c.out_channels or c.in_channels):
            return None
        from .base import ImageConditioning

        return ImageConditioning(concat=image_latent_frames(latents[:, :1], latents.shape[1], c.patch_size_t))

    def scheduler_step(self, scheduler, prediction, timesteps, i, latents, state=None, **kw):
        """As diffusers' ``CogVideoXPipeline`` steps: CogVideoXDPMScheduler also takes the previous step's x0
        prediction (``state``, its ``old_pred_original_sample``) and timestep; the latents keep their dtype."""
        from diffusers import CogVideoXDPMScheduler

        if isinstance(scheduler, CogVideoXDPMScheduler):
            return scheduler.step(prediction, state, timesteps[i], timesteps[i - 1] if i > 0 else None, latents,
                                  return_dict=False, **kw)
        return scheduler.step(prediction, timesteps[i], latents, return_dict=False, **kw)[0], None

    # VAE and sizes
    @property
    def default_size(self):
        return self._need_bundle("default_size").default_size

    @property
    def vae_scale(self) -> int:
        return self._need_bundle("vae_scale").vae_scale_spatial

    @property
    def latent_channels(self) -> int:
        c = self.denoiser.config
        return int(c.out_channels or c.in_channels)

    def latent_frames(self, num_frames: int) -> int:
        return latent_frames_for(self.bundle, num_frames)

    def frame_step(self) -> int:
        """Valid frame counts are ``frame_step * k + 1`` (4 on CogVideoX; the VAE compresses time by 4)."""
        return int(self._need_bundle("frame_step").vae_scale_temporal)

    def check_video_size(self, num_frames, height, width):
        check_video_size(self._need_bundle("check_video_size"), num_frames, height, width)

    def encode_frames(self, frames, **kw):
        return encode_frames(self._need_bundle("encode_frames"), frames, **kw)

    def decode_latents(self, latents, **kw):
        return decode_latents(self._need_bundle("decode_latents"), latents, **kw)

    def use(self, part: str):
        return self._need_bundle("use").use("transformer" if part == "denoiser" else part)

    def release(self, *parts: str) -> None:
        self._need_bundle("release").release(*("transformer" if p == "denoiser" else p for p in parts))

    @property
    def cpu_offload(self) -> bool:
        return bool(self.bundle is not None and self.bundle.cpu_offload)


# --------------------------------------------------------------------------------------------
# a block with adapters (DualReal's DA-block, docs/dualreal.md)


def _joined(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.cat([a, b], 1)``, or without a copy the tensor ``a`` and ``b`` were split from (the
    attention processor splits one ``[B, L + N, D]`` output into text and visual parts)."""
    base = a._base
    if base is not None and b._base is base and a.dim() == 3 and b.dim() == 3 and base.is_contiguous():
        B, N, D = a.shape[0], a.shape[1] + b.shape[1], a.shape[2]
        if (base.numel() == B * N * D and b.shape[0] == B and b.shape[2] == D and a.stride() == b.stride() == (N * D, D, 1)
                and a.storage_offset() == base.storage_offset()
                and b.storage_offset() == base.storage_offset() + a.shape[1] * D):
            return base.view(B, N, D)
    return torch.cat([a, b], 1)


def adapted_block_forward(block, hooks, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                          temb: torch.Tensor, image_rotary_emb=None, attention_kwargs: dict | None = None):
    """``CogVideoXBlock.forward`` with adapter hooks (see :meth:`VideoBackbone.adapted_block_forward`): the
    adapters see the AdaLN-normalised ``[text; visual]`` tokens of each sub-layer in one pass and add to its
    output before the gates (text and visual streams with their own gates); the StageBlender pools the block
    input's text and visual tokens and reads ``temb``."""
    text_len = encoder_hidden_states.size(1)
    attention_kwargs = attention_kwargs or {}
    hooks.begin(hidden_states, encoder_hidden_states, temb)

    # attention sub-layer
    n_h, n_e, gate_msa, enc_gate_msa = block.norm1(hidden_states, encoder_hidden_states, temb)
    attn_h, attn_e = block.attn1(hidden_states=n_h, encoder_hidden_states=n_e, image_rotary_emb=image_rotary_emb,
                                 **attention_kwargs)
    p = hooks.params("attn", attn_h.dtype)
    if p is not None:  # one pass over the [text; visual] tokens
        attn = hooks.apply(_joined(attn_e, attn_h), torch.cat([n_e, n_h], dim=1), p)
        attn_e, attn_h = attn[:, :text_len], attn[:, text_len:]
    # the gated residual adds of CogVideoXBlock (h + g * x) as one fused op each (addcmul): the same sum,
    # one kernel launch instead of two, which offsets part of the adapters' own launches
    hidden_states = torch.addcmul(hidden_states, gate_msa, attn_h)
    encoder_hidden_states = torch.addcmul(encoder_hidden_states, enc_gate_msa, attn_e)

    # feed-forward sub-layer
    n_h, n_e, gate_ff, enc_gate_ff = block.norm2(hidden_states, encoder_hidden_states, temb)
    n = torch.cat([n_e, n_h], dim=1)
    ff = block.ff(n)
    p = hooks.params("ff", ff.dtype)
    ff = hooks.apply(ff, n, p)
    hidden_states = torch.addcmul(hidden_states, gate_ff, ff[:, text_len:])
    encoder_hidden_states = torch.addcmul(encoder_hidden_states, enc_gate_ff, ff[:, :text_len])
    return hidden_states, encoder_hidden_states
