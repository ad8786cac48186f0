"""Loading real CogVideoX models: a diffusers folder's configs are checked (parts present, value types, channel
counts, bounds) before diffusers reads them (:func:`inspect_model`, :class:`ModelInfo`), then the folder is loaded
(:func:`load_cogvideox`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from ...errors import DualAdapterError
from ...limits import check_model_config
from ..base import check_device, parse_dtype
from .bundle import DEFAULT_SCHEDULER_CONFIG, REQUIRED_PARTS, CogVideoXBundle
from .tiny import _TINY_VAE, BUILTIN_MODELS, TINY_VARIANTS, _tiny_transformer_config


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
