"""Native ComfyUI CogVideoX <-> diffusers: key names, a streamed weight converter, native single files.

Core ComfyUI (since 2026) runs CogVideoX with its own port (``comfy/ldm/cogvideo/model.py``) whose
transformer weights are ONE safetensors file with *native* key names. This module knows the name
map (measured: it maps the whole 2B / 5B / 1.5 state dicts with no missing or extra key) and does
not import ComfyUI:

  * :func:`diffusers_to_native_key` / :func:`native_to_diffusers_key` (and ``*_module`` for module
    paths, used by the LoRA formats);
  * :func:`convert_diffusers_to_native`: a diffusers ``transformer/`` folder (sharded or not) -> one
    native safetensors, streamed tensor by tensor (RAM bounded by the largest tensor), atomic;
  * :func:`load_native_transformer`: a native single file -> diffusers ``CogVideoXTransformer3DModel``
    (the pack's own model), config from the file's metadata or inferred from shapes;
  * :func:`native_divergences`: where core's port computes something else than the diffusers model
    the adapters were trained on (positions), with the cause named.

Name map (``{i}`` = block index; everything not listed keeps its name)::

    transformer_blocks.{i}.attn1.to_q|to_k|to_v   -> blocks.{i}.q|k|v
    transformer_blocks.{i}.attn1.to_out.0         -> blocks.{i}.attn_out
    transformer_blocks.{i}.attn1.norm_q|norm_k    -> blocks.{i}.norm_q|norm_k
    transformer_blocks.{i}.ff.net.0.proj          -> blocks.{i}.ff_proj
    transformer_blocks.{i}.ff.net.2               -> blocks.{i}.ff_out
    transformer_blocks.{i}.norm1|norm2            -> blocks.{i}.norm1|norm2
    time_embedding.linear_{1,2}                   -> time_embedding_linear_{1,2}
    ofs_embedding.linear_{1,2}                    -> ofs_embedding_linear_{1,2}
"""
from __future__ import annotations

import json
import logging
import os
import re
import struct
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from .errors import DualAdapterError

log = logging.getLogger(__name__)

__all__ = [
    "NATIVE_FORMAT",
    "diffusers_to_native_key",
    "native_to_diffusers_key",
    "diffusers_to_native_module",
    "native_to_diffusers_module",
    "to_native_state_dict",
    "from_native_state_dict",
    "is_native_state_dict",
    "convert_diffusers_to_native",
    "native_config_from_state_dict",
    "load_native_transformer",
    "native_divergences",
    "native_model_divergences",
    "native_model_config",
    "NativeDivergence",
]

#: Marker in the metadata of native files this module writes (with the diffusers config as JSON).
NATIVE_FORMAT = "dual_adapter.native/1"

# block-relative module names, diffusers -> native
_BLOCK_MAP = {
    "attn1.to_q": "q",
    "attn1.to_k": "k",
    "attn1.to_v": "v",
    "attn1.to_out.0": "attn_out",
    "attn1.norm_q": "norm_q",
    "attn1.norm_k": "norm_k",
    "ff.net.0.proj": "ff_proj",
    "ff.net.2": "ff_out",
    "norm1.linear": "norm1.linear",
    "norm1.norm": "norm1.norm",
    "norm2.linear": "norm2.linear",
    "norm2.norm": "norm2.norm",
}
_BLOCK_MAP_INV = {v: k for k, v in _BLOCK_MAP.items()}
_TOP_MAP = {
    "time_embedding.linear_1": "time_embedding_linear_1",
    "time_embedding.linear_2": "time_embedding_linear_2",
    "ofs_embedding.linear_1": "ofs_embedding_linear_1",
    "ofs_embedding.linear_2": "ofs_embedding_linear_2",
}
_TOP_MAP_INV = {v: k for k, v in _TOP_MAP.items()}
_D_BLOCK = re.compile(r"^transformer_blocks\.(\d+)\.(.+)$")
_N_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _map_module(name: str, block_re, block_map, top_map, prefix_out: str) -> str | None:
    m = block_re.match(name)
    if m:
        sub = block_map.get(m.group(2))
        return f"{prefix_out}.{m.group(1)}.{sub}" if sub else None
    if name in top_map:
        return top_map[name]
    if name.startswith(("patch_embed", "norm_final", "norm_out", "proj_out")):
        return name
    return None


def diffusers_to_native_module(name: str) -> str | None:
    """Diffusers module path -> native module path (``transformer_blocks.0.attn1.to_q`` -> ``blocks.0.q``);
    None for a name the native model does not have."""
    return _map_module(name, _D_BLOCK, _BLOCK_MAP, _TOP_MAP, "blocks")


def native_to_diffusers_module(name: str) -> str | None:
    """Native module path -> diffusers module path (``blocks.0.ff_proj`` -> ``transformer_blocks.0.ff.net.0.proj``)."""
    return _map_module(name, _N_BLOCK, _BLOCK_MAP_INV, _TOP_MAP_INV, "transformer_blocks")


def _split_param(key: str) -> tuple[str, str]:
    mod, _, param = key.rpartition(".")
    return mod, param


def diffusers_to_native_key(key: str) -> str | None:
    """Diffusers parameter name -> native (``transformer_blocks.0.ff.net.2.weight`` -> ``blocks.0.ff_out.weight``)."""
    if key == "patch_embed.pos_embedding":
        return key
    mod, param = _split_param(key)
    out = diffusers_to_native_module(mod)
    return f"{out}.{param}" if out else None


def native_to_diffusers_key(key: str) -> str | None:
    """Native parameter name -> diffusers (inverse of :func:`diffusers_to_native_key`)."""
    if key == "patch_embed.pos_embedding":
        return key
    mod, param = _split_param(key)
    out = native_to_diffusers_module(mod)
    return f"{out}.{param}" if out else None


def _map_all(keys: Iterable[str], fn: Callable[[str], str | None], what: str) -> dict[str, str]:
    out, bad = {}, []
    for k in keys:
        n = fn(k)
        (bad.append(k) if n is None else out.__setitem__(k, n))
    if bad:
        raise DualAdapterError(f"{len(bad)} key(s) are not {what} CogVideoX transformer names: {bad[:8]}")
    return out


def to_native_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers CogVideoX transformer state dict to native names (same tensors).

    Raises:
        DualAdapterError: a key that is not a diffusers CogVideoX transformer name (lists them).
    """
    return {n: sd[k] for k, n in _map_all(sd, diffusers_to_native_key, "diffusers").items()}


def from_native_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a native CogVideoX state dict to diffusers names; strips a ``model.diffusion_model.`` /
    ``diffusion_model.`` prefix (full ComfyUI checkpoints).

    Raises:
        DualAdapterError: a key that is not a native CogVideoX transformer name.
    """
    out = {}
    for k, v in sd.items():
        for p in ("model.diffusion_model.", "diffusion_model."):
            if k.startswith(p):
                k = k[len(p):]
                break
        out[k] = v
    return {n: out[k] for k, n in _map_all(out, native_to_diffusers_key, "native").items()}


def is_native_state_dict(keys: Iterable[str]) -> bool:
    """True when the keys look like a native CogVideoX transformer (``blocks.0.norm1.linear.weight``)."""
    return any(re.match(r"^(model\.)?(diffusion_model\.)?blocks\.0\.norm1\.linear\.weight$", k) for k in keys)


# --------------------------------------------------------------------------------------------
# streamed converter

_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL"}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


def _transformer_dir(src: Path) -> Path:
    if (src / "transformer").is_dir():
        return src / "transformer"
    return src


def _shards(tdir: Path) -> list[Path]:
    idx = sorted(tdir.glob("*.safetensors.index.json"))
    if idx:
        try:
            wm = json.loads(idx[0].read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as e:
            raise DualAdapterError(f"shard index {str(idx[0])!r} is unreadable: {e}") from None
        files = sorted(set(wm.values()))
        missing = [f for f in files if not (tdir / f).is_file()]
        if missing:
            raise DualAdapterError(f"diffusers transformer folder {str(tdir)!r} lacks shard(s) {missing} "
                                   f"listed in {idx[0].name}")
        return [tdir / f for f in files]
    files = sorted(tdir.glob("*.safetensors"))
    if not files:
        raise DualAdapterError(f"{str(tdir)!r} has no transformer weights (*.safetensors); expected a diffusers "
                               f"CogVideoX folder (with transformer/) or its transformer/ folder")
    return files


def convert_diffusers_to_native(src: str | os.PathLike, out: str | os.PathLike, *, dtype: str | torch.dtype | None = None,
                                overwrite: bool = False, callback: Callable[[int, int], None] | None = None) -> Path:
    """Convert a diffusers CogVideoX transformer into one native ComfyUI safetensors file (for core UNETLoader).

    Streamed: the output header is built from the shards' headers, then tensors are read, renamed,
    optionally cast and written one at a time, so peak RAM is about the largest single tensor (not
    the model: 5B is ~11 GB in bf16). The file is written to a temporary name and renamed at the end;
    an existing ``out`` is never overwritten unless ``overwrite``.

    Args:
        src: a diffusers CogVideoX folder (with ``transformer/``) or the ``transformer/`` folder itself
            (``diffusion_pytorch_model*.safetensors`` [+ ``.index.json``] and ``config.json``).
        out: destination ``.safetensors``; goes in ComfyUI's ``models/diffusion_models/``.
        dtype: ``"bf16" | "fp16" | "fp32"`` cast of floating tensors; None keeps the stored dtype.
        callback: ``callback(done, total)`` after each tensor.

    Returns:
        ``out`` as a Path. The metadata holds ``format`` = :data:`NATIVE_FORMAT` and ``config`` (the
        diffusers config JSON), which :func:`load_native_transformer` reads back.

    Raises:
        DualAdapterError: no weights / missing shard, a key that is not a CogVideoX transformer name,
            ``out`` exists.
    """
    from safetensors import safe_open

    from .backbones.base import parse_dtype
    from .io import atomic_write

    src_p = Path(src).expanduser()
    if not src_p.is_dir():
        raise DualAdapterError(f"src={str(src_p)!r} is not a folder (expected a diffusers CogVideoX folder)")
    tdir = _transformer_dir(src_p)
    shards = _shards(tdir)
    cast = parse_dtype(dtype) if dtype else None
    cfg: dict = {}
    if (tdir / "config.json").is_file():
        cfg = {k: v for k, v in json.loads((tdir / "config.json").read_text()).items() if not k.startswith("_")}
    entries = []  # (native name, shard, source key, dtype, shape)
    for sh in shards:
        with safe_open(str(sh), framework="pt") as f:
            for k in f.keys():
                sl = f.get_slice(k)
                dt = _ST_NAMES.get(sl.get_dtype())
                if dt is None:
                    raise DualAdapterError(f"{sh.name}: tensor {k!r} has dtype {sl.get_dtype()} (not supported)")
                entries.append((k, sh, dt, list(sl.get_shape())))
    names = _map_all([e[0] for e in entries], diffusers_to_native_key, "diffusers")
    rows = []
    for k, sh, dt, shape in entries:
        odt = cast if (cast is not None and dt.is_floating_point) else dt
        rows.append((names[k], sh, k, odt, shape))
    rows.sort(key=lambda r: r[0])
    header: dict[str, Any] = {"__metadata__": {"format": NATIVE_FORMAT, "config": json.dumps(cfg, sort_keys=True),
                                               "source": "diffusers CogVideoXTransformer3DModel"}}
    off = 0
    for name, _, _, odt, shape in rows:
        n = torch.Size(shape).numel() * torch.empty((), dtype=odt).element_size()
        header[name] = {"dtype": _ST_DTYPES[odt], "shape": shape, "data_offsets": [off, off + n]}
        off += n
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)

    def write(tmp):
        handles: dict[Path, Any] = {}
        try:
            with open(tmp, "wb") as fo:
                fo.write(struct.pack("<Q", len(hb)))
                fo.write(hb)
                for i, (name, sh, k, odt, shape) in enumerate(rows):
                    if sh not in handles:
                        handles[sh] = safe_open(str(sh), framework="pt").__enter__()
                    t = handles[sh].get_tensor(k).to(odt).contiguous().reshape(-1)
                    if t.numel():
                        fo.write(t.view(torch.uint8).numpy().tobytes())
                    del t
                    if callback is not None:
                        callback(i + 1, len(rows))
        finally:
            for h in handles.values():
                h.__exit__(None, None, None)

    return atomic_write(Path(out).expanduser(), write, overwrite=overwrite)


# --------------------------------------------------------------------------------------------
# native single file -> the pack's (diffusers) transformer


def native_config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> dict:
    """Infer a diffusers ``CogVideoXTransformer3DModel`` config from native tensors (shapes only).

    Unlike core's detection (which assumes 64-d heads), the head width is read from ``norm_q``.
    Positions cannot be read from the weights of a sincos model (the buffer is not saved): 30-head
    models without ``pos_embedding`` are taken as 2B (sincos), others as RoPE models; a file written
    by :func:`convert_diffusers_to_native` carries the exact config instead.

    Raises:
        DualAdapterError: not a native CogVideoX transformer.
    """
    keys = set(sd)
    if "blocks.0.norm1.linear.weight" not in keys:
        raise DualAdapterError("not a native CogVideoX transformer (no blocks.0.norm1.linear.weight)")
    n1 = sd["blocks.0.norm1.linear.weight"]
    dim, tdim = n1.shape[0] // 6, n1.shape[1]
    hd = int(sd["blocks.0.norm_q.weight"].shape[0]) if "blocks.0.norm_q.weight" in keys else 64
    layers = 1 + max(int(k.split(".")[1]) for k in keys if k.startswith("blocks."))
    pw = sd["patch_embed.proj.weight"]
    cfg: dict[str, Any] = dict(num_attention_heads=dim // hd, attention_head_dim=hd, time_embed_dim=int(tdim),
                               num_layers=layers, text_embed_dim=int(sd["patch_embed.text_proj.weight"].shape[1]))
    if pw.ndim == 4:
        cfg.update(in_channels=int(pw.shape[1]), patch_size=int(pw.shape[2]), patch_size_t=None)
        p_out = int(sd["proj_out.weight"].shape[0]) // (cfg["patch_size"] ** 2)
    else:
        cfg.update(in_channels=int(pw.shape[1]) // 8, patch_size=2, patch_size_t=2)
        p_out = int(sd["proj_out.weight"].shape[0]) // 8
    cfg["out_channels"] = p_out
    if "ofs_embedding_linear_1.weight" in keys:
        cfg["ofs_embed_dim"] = int(sd["ofs_embedding_linear_1.weight"].shape[1])
    learned = "patch_embed.pos_embedding" in keys
    cfg["use_learned_positional_embeddings"] = learned
    cfg["use_rotary_positional_embeddings"] = not (cfg["num_attention_heads"] == 30 and not learned)
    if cfg["patch_size_t"] is not None:
        cfg.update(sample_height=300, sample_width=300, sample_frames=81)
    cfg["patch_bias"] = "patch_embed.proj.bias" in keys
    if learned:
        cfg["max_text_seq_length"] = 226
    return cfg


def load_native_transformer(path: str | os.PathLike, dtype: str | torch.dtype | None = None, device: str = "cpu"):
    """Load a native single-file CogVideoX transformer as the pack's diffusers ``CogVideoXTransformer3DModel``.

    Accepts files written by :func:`convert_diffusers_to_native` (exact config from the metadata) and
    other native files (config inferred, see :func:`native_config_from_state_dict`; a warning says so).
    Loaded with safetensors, frozen, in eval mode.

    Raises:
        DualAdapterError: missing / non-safetensors file, not a native CogVideoX transformer, or
            weights that do not fit the config (names the keys).
    """
    from diffusers import CogVideoXTransformer3DModel

    from .backbones.base import parse_dtype
    from .io import load_safetensors

    p = Path(path).expanduser()
    tensors, meta = load_safetensors(p)
    if not is_native_state_dict(tensors):
        raise DualAdapterError(f"{str(p)!r} is not a native ComfyUI CogVideoX transformer (no blocks.0.norm1.* keys)")
    native_sd = {k.split("diffusion_model.", 1)[-1]: v for k, v in tensors.items()}
    sd = from_native_state_dict(native_sd)
    cfg = meta.get("config") if meta.get("format") == NATIVE_FORMAT else None
    if isinstance(cfg, str):
        cfg = json.loads(cfg)
    if not cfg:
        cfg = native_config_from_state_dict(native_sd)
        log.warning("%s: no diffusers config in the file; inferred %s", p.name, cfg)
    from .limits import check_model_config

    check_model_config(cfg, f"transformer file {str(p)!r}")  # before a model of that size is built
    import inspect

    known = set(inspect.signature(CogVideoXTransformer3DModel.__init__).parameters)
    with torch.device("meta"):
        model = CogVideoXTransformer3DModel(**{k: v for k, v in cfg.items() if k in known})
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    extra = sorted(set(sd) - set(own))
    bad = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in own
           if k in sd and sd[k].shape != own[k].shape]
    if missing or extra or bad:
        raise DualAdapterError(f"{str(p)!r} does not fit the CogVideoX config {cfg}: missing {missing[:5]}, "
                               f"unexpected {extra[:5]}, shapes {bad[:3]}")
    dt = parse_dtype(dtype) if dtype else None
    model.load_state_dict({k: (v.to(dt) if dt is not None and v.is_floating_point() else v) for k, v in sd.items()},
                          assign=True)
    # non-persistent buffers (sincos positions) are not in the file: rebuild them off the meta device
    pe = model.patch_embed
    if getattr(pe, "pos_embedding", None) is not None and pe.pos_embedding.is_meta:
        pe.register_buffer("pos_embedding", pe._get_positional_embeddings(pe.sample_height, pe.sample_width,
                                                                           pe.sample_frames, device="cpu"),
                           persistent=pe.use_learned_positional_embeddings)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise DualAdapterError(f"{str(p)!r}: tensors not filled from the file: {left[:5]}")
    model.to(device)
    model.requires_grad_(False)
    return model.eval()


# --------------------------------------------------------------------------------------------
# fidelity of core's port vs the diffusers model


class NativeDivergence(str):
    """A cause (text) with ``severity``: ``"refuse"`` (native runs another model) or ``"warn"``."""

    severity: str = "warn"

    def __new__(cls, text: str, severity: str):
        o = super().__new__(cls, text)
        o.severity = severity
        return o


def native_divergences(config: Mapping[str, Any]) -> list[NativeDivergence]:
    """Where core ComfyUI's CogVideoX port (0.33) computes something else than diffusers for a model
    with this (diffusers) config, so adapters / LoRAs trained on the diffusers model meet another model.

    Measured on tiny configs (tests/backbones/test_native.py, and the real-host test against core's forward):
      * 1.5 (``patch_size_t`` = 2, RoPE ``slice`` grid): native == diffusers; nothing returned.
      * 1.0 RoPE models (5B, 5B-I2V): native multiplies the RoPE grid by ``spatial_interpolation_scale``
        (1.875 on the released configs) where diffusers uses integer positions -> ``warn``.
      * 2B-style sincos positions: the sincos buffer is not saved in the weights, so core detects the
        model as RoPE (and core's sincos split is 2/3 : 1/3 spatial:temporal where diffusers uses
        3/4 : 1/4) -> ``refuse``.
      * learned positions + RoPE (5B-I2V 1.0): core detects learned positions *without* RoPE -> ``refuse``.
      * heads not 64-d wide: core's detection assumes 64 -> ``refuse`` (the file does not load).
    """
    c = dict(config)
    out: list[NativeDivergence] = []
    rope = bool(c.get("use_rotary_positional_embeddings"))
    learned = bool(c.get("use_learned_positional_embeddings"))
    if int(c.get("attention_head_dim", 64)) != 64:
        out.append(NativeDivergence(f"core's model detection assumes 64-d attention heads; this model has "
                                    f"{c.get('attention_head_dim')}-d heads (it cannot load natively)", "refuse"))
    if not rope and not learned:
        out.append(NativeDivergence("sincos positions (2B-style): the sincos table is not stored in the weights, so "
                                    "core detects the model as a RoPE model, and core's sincos split is 2/3:1/3 "
                                    "where diffusers uses 3/4:1/4", "refuse"))
    if rope and learned:
        out.append(NativeDivergence("learned positions + RoPE (5B-I2V 1.0): core detects learned positions "
                                    "without RoPE", "refuse"))
    if rope and c.get("patch_size_t") is None:
        s = float(c.get("spatial_interpolation_scale", 1.875))
        if s != 1.0:
            out.append(NativeDivergence(f"RoPE scale: core multiplies the 1.0-model RoPE grid by "
                                        f"spatial_interpolation_scale ({s:g}); diffusers uses integer positions",
                                        "warn"))
    return out


def native_model_config(diffusion_model) -> dict:
    """The diffusers-style architecture fields of a model core ComfyUI built (read by attribute only)."""
    dm = diffusion_model
    pe = getattr(dm, "patch_embed", None)
    return {"num_layers": len(dm.blocks), "num_attention_heads": int(dm.num_attention_heads),
            "attention_head_dim": int(dm.attention_head_dim),
            "time_embed_dim": int(dm.blocks[0].norm1.linear.weight.shape[1]) if len(dm.blocks) else None,
            "text_embed_dim": int(pe.text_proj.weight.shape[1]) if pe is not None else None,
            "in_channels": int(dm.in_channels), "patch_size": int(dm.patch_size),
            "patch_size_t": dm.patch_size_t, "use_rotary_positional_embeddings": bool(dm.use_rotary_positional_embeddings)}


def _fingerprint(cfg: dict) -> str:
    from types import SimpleNamespace

    from .backbones.cogvideox import config_fingerprint

    return config_fingerprint(SimpleNamespace(config=cfg))


def native_model_divergences(diffusion_model, trained_fingerprint: str | None = None) -> list[NativeDivergence]:
    """:func:`native_divergences` for a model core ComfyUI has *built* (its ``CogVideoXTransformer3DModel``,
    read by attribute only): what core detected is compared with what the released model of that size uses.

      * 30 heads (2B-class), RoPE, no learned positions -> a 2B detected as RoPE (it uses sincos) -> refuse;
      * learned positions without RoPE on a 1.0 model with 32 input channels -> 5B-I2V 1.0 detected without
        its RoPE -> refuse;
      * ``trained_fingerprint`` (``base_fingerprint`` of adapters / LoRA metadata) that matches this
        architecture with the *other* position type -> core picked the wrong positions -> refuse;
      * RoPE on a 1.0 model (``patch_size_t`` None) with ``spatial_interpolation_scale`` != 1 -> warn.
    """
    dm = diffusion_model
    pe = getattr(dm, "patch_embed", None)
    heads = int(getattr(dm, "num_attention_heads", 0))
    rope = bool(getattr(dm, "use_rotary_positional_embeddings", False))
    learned = bool(getattr(pe, "use_learned_positional_embeddings", False))
    pt = getattr(dm, "patch_size_t", None)
    out: list[NativeDivergence] = []
    if heads == 30 and rope and not learned:
        out.append(NativeDivergence("a 2B-class model (30 heads) that core built as a RoPE model: the released 2B "
                                    "uses sincos positions, which are not stored in its weights, so core's detection "
                                    "picks RoPE (and core's sincos split is 2/3:1/3 where diffusers uses 3/4:1/4)",
                                    "refuse"))
    if learned and not rope and pt is None and int(getattr(dm, "in_channels", 0)) == 32:
        out.append(NativeDivergence("a 5B-I2V 1.0-class model that core built with learned positions and without "
                                    "RoPE; the released model uses both", "refuse"))
    if trained_fingerprint:
        cfg = native_model_config(dm)
        if trained_fingerprint != _fingerprint(cfg) and trained_fingerprint == _fingerprint(
                dict(cfg, use_rotary_positional_embeddings=not rope)):
            out.append(NativeDivergence(
                f"positions: the adapters / LoRA were trained on this architecture with "
                f"{'sincos (no RoPE)' if rope else 'RoPE'} positions, but core built it "
                f"{'with RoPE' if rope else 'without RoPE'} (core detects positions from the weights, and a sincos "
                f"table is not stored in them)", "refuse"))
    if rope and pt is None:
        s = float(getattr(dm, "spatial_interpolation_scale", 1.0))
        if s != 1.0:
            out.append(NativeDivergence(f"RoPE scale: core multiplies the 1.0-model RoPE grid by "
                                        f"spatial_interpolation_scale ({s:g}); diffusers uses integer positions",
                                        "warn"))
    return out
