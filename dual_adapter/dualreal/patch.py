"""The DualReal model patch: DA-blocks + StageBlender on a weight-sharing copy of a DiT backbone.

:class:`DualRealPatch` (a model patch, see :mod:`dual_adapter.patches`) replaces every block of the copy it
is applied to (the backbone's :meth:`~dual_adapter.backbones.base.VideoBackbone.block_container`) by a
:class:`DABlock`, which holds the original block (same weight tensors) and that block's four adapters. The
block's own computation is the backbone's :meth:`~dual_adapter.backbones.base.VideoBackbone.adapted_block_forward`
(CogVideoX's and Wan's live in their backbone modules), which calls the DA-block's hooks: the adapter outputs
are added to the attention / feed-forward outputs *before* the gates (docs/dualreal.md)::

    attn_out += w_id * A_id_attn(n1) + w_mo * A_mo_attn(n1, c);   h += gate_msa * attn_out
    ff_out   += w_id * A_id_ff(n2)   + w_mo * A_mo_ff(n2, c);     h += gate_ff  * ff_out

(on CogVideoX over the ``[text; visual]`` tokens, the text stream with its own gates; on Wan over the video tokens,
docs/wan.md). Block 0 runs the StageBlender controller on the max-pooled text and video tokens it receives and the
timestep features, and shares ``alpha [B, n]`` with the other blocks through a :class:`DualRealContext`.

The two adapters of a sub-layer run as one fused computation (one down-projection GEMM of width
2h + 8, GELU, one batched up-projection GEMM that also adds the sub-layer output; the 8 extra "bias
units" carry the per-sample up biases, see ``_UNITS``), over the sub-layer's tokens in one pass.
With frozen adapters (sampling) the per-sample scaled up-projections of all blocks are made once per
forward (:meth:`DualRealContext.up_table`). It is algebraically the per-adapter formula of :class:`~dual_adapter.dualreal.adapters.Adapter`
(``down(n + lambda W_cond(c)) = down(n) + down_W (lambda W_cond(c))``), only cheaper; the tests
check the two agree.

With classifier-free guidance the sampler batches ``[negative; positive]``; the reference
embedding ``c`` is broadcast so that both branches use the same ``c`` (docs/dualreal.md, sampling with the adapters).
"""
from __future__ import annotations

import copy
import logging
import math
from typing import Any

import torch
from torch import nn
import torch.nn.functional as F

from ..errors import DualAdapterError
from .adapters import DualRealAdapters, DualRealConfig

log = logging.getLogger(__name__)

__all__ = ["DualRealContext", "DABlock", "DualRealPatch", "check_compatible", "check_dims", "find_context", "w_cond_trained"]


def check_dims(config: DualRealConfig, width: int, blocks: int, tdim: int, what: str = "this model") -> None:
    """Raise :class:`DualAdapterError` unless adapters made for ``config`` fit a model of width ``width``,
    ``blocks`` transformer blocks and timestep-embedding width ``tdim`` (the message names both values of
    each mismatch and ``what`` the model is). Shared by the diffusers and the native (ComfyUI) paths."""
    problems = []
    if config.dim != width:
        problems.append(f"width {config.dim} (model: {width})")
    if config.num_blocks != blocks:
        problems.append(f"{config.num_blocks} blocks (model: {blocks})")
    if config.time_embed_dim != tdim:
        problems.append(f"timestep-embedding width {config.time_embed_dim} (model: {tdim})")
    if problems:
        raise DualAdapterError(f"DualReal adapters do not fit {what}: they were made for "
                               + ", ".join(problems) + "; use adapters trained on the same model")


def check_compatible(config: DualRealConfig, transformer, fingerprint: str | None = None) -> None:
    """Check that adapters built for ``config`` fit ``transformer``.

    Raises:
        DualAdapterError: another width, block count or timestep-embedding width (the message names
            both the adapters' and the model's values).
    """
    from ..backbones import backbone_for

    bb = backbone_for(transformer)
    check_dims(config, *bb.adapter_dims(transformer), "this model")
    own = bb.fingerprint(transformer) if fingerprint else None
    if fingerprint and fingerprint != own:
        log.warning("DualReal adapters were trained on a model with another config fingerprint (%s, model: %s); "
                    "width and block count match, applying anyway", fingerprint, own)


class DualRealContext:
    """State shared by the DA-blocks of one patched model during a forward pass.

    Attributes:
        config: the adapters' :class:`DualRealConfig`.
        reference: reference-image embedding ``[Bc, 1, 1024]`` or ``None`` (no ``W_cond`` term).
            Trainers set it per step; with a model batch ``B`` that is a multiple of ``Bc`` it is
            tiled (``[c; c]`` for the CFG batch ``[negative; positive]``).
        fixed_weights: ``(w_id, w_mo)`` used instead of the controller, or ``None``.
        identity_scale, motion_scale: multiply ``w_id`` / ``w_mo`` (inference overrides).
        recorder: list; when not None, every controller call appends ``alpha`` ``[B, n]`` (CPU float32).
        alpha: the last controller output ``[B, n]`` (``None`` without controller / fixed weights).
    """

    def __init__(self, config: DualRealConfig, reference: torch.Tensor | None = None,
                 fixed_weights: tuple[float, float] | None = None, identity_scale: float = 1.0,
                 motion_scale: float = 1.0, recorder: list | None = None):
        self.config = config
        self.reference = reference
        self.fixed_weights = fixed_weights
        self.identity_scale = float(identity_scale)
        self.motion_scale = float(motion_scale)
        self.recorder = recorder
        self.alpha: torch.Tensor | None = None
        self._cond_cache = None
        self.blocks: list = []  # the DA-blocks (set by DualRealPatch.apply)
        self._wtab = None  # (alpha, [B, n, 2] (w_id, w_mo) per group), see _weight_table
        self._tables: dict = {}  # per-forward up-projection tables of frozen adapters (see up_table)
        self._stacked: dict = {}  # the frozen blocks' stacked up-projections
        self._gidx = None
        #: what the backbone captures for its adapted blocks per model call (see
        #: VideoBackbone.prepare_block_adapters; Wan: the timestep features)
        self.state: dict = {}

    def run_controller(self, controller: nn.Module | None, hidden_states, encoder_hidden_states, temb) -> None:
        """Compute ``alpha`` from the block-0 input tokens (max-pooled) and ``temb``."""
        self._wtab, self._tables = None, {}
        if controller is None or self.fixed_weights is not None:
            self.alpha = None
            return
        pool = torch.maximum(encoder_hidden_states.amax(1), hidden_states.amax(1))  # [B, D]
        w = controller.pool_proj.weight
        if not _autocast_on(pool.device.type):
            pool, temb = pool.to(w.dtype), temb.to(w.dtype)
        self.alpha = controller(pool, temb).float()
        if self.recorder is not None:
            self.recorder.append(self.alpha.detach().to("cpu", torch.float32))

    def _weight_table(self) -> torch.Tensor:
        """``[B, n, 2]``: (w_id, w_mo) of every group from ``alpha``, made once per forward."""
        if self._wtab is None or self._wtab[0] is not self.alpha:
            a, S = self.alpha, self.config.scale
            w_id = a if self.identity_scale == 1 else a * self.identity_scale
            w_mo = S - a if self.motion_scale == 1 else (S - a) * self.motion_scale
            self._wtab = (a, torch.stack([w_id, w_mo], -1))
        return self._wtab[1]

    def weights(self, group: int, batch: int, device) -> tuple[Any, Any]:
        """``(w_id, w_mo)`` of a block in ``group``: python floats or ``[B, 1, 1]`` float32 tensors."""
        S = self.config.scale
        if self.fixed_weights is not None:
            w_id, w_mo = self.fixed_weights
        elif self.alpha is None:  # no controller: the fixed-weights ablation
            w_id = w_mo = S / 2
        else:
            w = self._weight_table()[:, group].reshape(-1, 1, 1, 2)  # views of the per-forward table
            if w.shape[0] != batch and w.shape[0] == 1:
                w = w.expand(batch, 1, 1, 2)
            return w[..., 0], w[..., 1]
        return float(w_id) * self.identity_scale, float(w_mo) * self.motion_scale

    def up_table(self, kind: str, names: tuple, cond, cdt, batch: int):
        """``[B, L, K + 8, D]``: every block's up-projection (with its bias rows) scaled by its per-sample
        weights, made once per forward when every adapter is frozen (sampling), so that a DA-block adds
        only its GEMMs to the sampling step's kernel launches. ``None`` while training."""
        if not self.blocks:
            return None
        key = (kind, names, cdt, batch)
        if key in self._tables:
            return self._tables[key]
        tab = None
        if not any(p.requires_grad for b in self.blocks for p in b.adapters.parameters()):
            stat = [b._static_params(kind, names, cond, cdt) for b in self.blocks]
            skey = ("stack", kind, names, cdt)
            hit = self._stacked.get(skey)
            if hit is None or any(h is not s[2] for h, s in zip(hit[0], stat)):
                hit = ([s[2] for s in stat], torch.stack([s[2] for s in stat]))  # [L, K+8, D]
                self._stacked = {skey: hit}
            Wu = hit[1]
            hs = stat[0][3]
            if self.alpha is not None and self.fixed_weights is None:
                wtab = self._weight_table()
                if self._gidx is None or self._gidx.device != wtab.device:
                    self._gidx = torch.tensor([b.group for b in self.blocks], device=wtab.device)
                wt = wtab[:, self._gidx].to(cdt)  # [B, L, 2]
                if wt.shape[0] != batch:
                    wt = wt.expand(batch, -1, -1)
                ws = [wt[..., i: i + 1] for i, n in enumerate(("id", "motion")) if any(x.startswith(n) for x in names)]
            else:
                ws = list(self.weights(0, batch, Wu.device))
                ws = [w for w in ws if not _is_zero(w)]
            wv = _wvec(ws, hs, (batch, len(self.blocks)), Wu.device, cdt)  # [B, L, K+8]
            tab = wv.unsqueeze(-1) * Wu
        self._tables[key] = tab
        return tab

    def cond_for(self, batch: int, device, dtype) -> torch.Tensor | None:
        """The reference embedding broadcast to the model batch: ``[batch, 1, 1024]`` or None."""
        c = self.reference
        if c is None:
            return None
        hit = self._cond_cache
        if hit is not None and hit[0] is c and hit[1] == (batch, str(device), dtype):
            return hit[2]
        out = c.to(device=device, dtype=dtype)
        if out.shape[0] != batch:
            if batch % out.shape[0]:
                raise DualAdapterError(f"reference embedding has batch {c.shape[0]}; the model batch is {batch} "
                                       f"(expected 1 or a divisor of it)")
            out = out.repeat(batch // out.shape[0], 1, 1)
        self._cond_cache = (c, (batch, str(device), dtype), out)
        return out


def _autocast_on(device_type: str) -> bool:
    """``torch.is_autocast_enabled(device_type)``; False for devices autocast does not know (``meta``)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return False


def _is_zero(w) -> bool:
    return isinstance(w, (int, float)) and w == 0


# The fused adapter pair appends 8 "bias units" to its bottleneck: unit j < (number of adapters) has down
# weight 0 and down bias 16 (GELU(16) == 16 exactly, and x / 16 is exact), its up row is adapter j's up bias
# / 16 and its weight is adapter j's w: so the per-sample up biases ride in the up GEMM, and the GEMMs'
# inner size K + 8 stays a multiple of 8 (aligned for bf16 tensor cores) without a padding op.
_UNITS = 8
_BIAS_UNIT = 16.0


def _wvec(ws, hs, lead: tuple, device, cdt) -> torch.Tensor:
    """Per-sample bottleneck weights ``[*lead, K + 8]``: each adapter's weight over its h units, then over
    its bias unit, then zeros. ``ws``: floats or tensors ``[*lead, 1]`` (or broadcastable)."""
    parts = [torch.as_tensor(w, dtype=cdt, device=device).expand(*lead, 1) if not torch.is_tensor(w)
             else w.to(cdt).expand(*lead, 1) for w in ws]
    pieces = [w.expand(*lead, h) for w, h in zip(parts, hs)] + parts
    pieces.append(torch.zeros(*lead, _UNITS - len(ws), dtype=cdt, device=device))
    return torch.cat(pieces, -1)


class DABlock(nn.Module):
    """A transformer block with its four DualReal adapters (a DA-block).

    Holds the original block's sub-modules and direct parameters (CogVideoX ``norm1``, ``attn1``, ``norm2``,
    ``ff``; Wan ``attn1``, ``attn2``, ``ffn``, ``scale_shift_table``...: the same objects, weights shared with
    the loaded model) **under their own names**, so the patched model keeps the base model's module paths
    (``transformer_blocks.{i}.attn1.to_q``, ``blocks.{i}.attn1.to_q``) and any
    other patch that addresses modules by name (a LoRA) applies before or after DualReal alike.
    Also holds ``adapters`` (a :class:`~dual_adapter.dualreal.adapters.DABlockAdapters`) and, in
    block 0, the ``controller``; ``block`` is the wrapped block (an attribute, not a sub-module).
    ``forward`` has the wrapped block's signature and outputs: it is ``runner`` (the backbone's
    ``adapted_block_forward``; default CogVideoX's, for the native ComfyUI view) calling :meth:`begin`,
    :meth:`params` and :meth:`apply`.
    """

    def __init__(self, block: nn.Module, adapters: nn.Module, index: int, group: int, ctx: DualRealContext,
                 controller: nn.Module | None = None, runner=None):
        super().__init__()
        for name, child in block.named_children():  # same objects: a later patch that wraps attn1.to_q
            self.add_module(name, child)            # through this path changes the block's attn1 too
        for name, p in block.named_parameters(recurse=False):  # e.g. Wan's scale_shift_table: same tensor
            self.register_parameter(name, p)
        for name in ("norm1", "attn1", "norm2", "ff"):  # a view's parts (native blocks) are not its children
            if name not in self._modules and hasattr(block, name):
                object.__setattr__(self, name, getattr(block, name))
        object.__setattr__(self, "block", block)  # not registered: no second module path to the weights
        if runner is None:  # the native CogVideoX view (dualreal/native_patch.py)
            from ..backbones import backbone_modules

            runner = backbone_modules()["cogvideox"].for_denoiser(None).adapted_block_forward
        object.__setattr__(self, "runner", runner)  # the backbone's block forward with adapter hooks
        self.adapters = adapters
        self.controller = controller
        self.index = int(index)
        self.group = int(group)
        self.ctx = ctx
        self.skip = ctx.config.form == "official"
        self._cache: dict = {}

    # ---- the fused adapter pair ------------------------------------------------------------
    def _static_params(self, kind: str, names: tuple, cond, cdt):
        """Weight-only parts of the fused adapter pair, bottleneck K (sum of h) plus 8 bias units (see
        ``_UNITS``): ``Wd [K + 8, D]``, ``bd [Bc, 1, K + 8]`` (down bias plus ``lambda * down_W W_cond(c)`` for
        motion adapters; 16 on the used bias units), ``Wu [K + 8, D]`` (up weights, then up bias / 16 rows),
        ``hs`` (each adapter's h).

        Cached while no adapter parameter requires grad (sampling), since they do not change then.
        """
        ads = [getattr(self.adapters, n) for n in names]
        frozen = not any(p.requires_grad for a in ads for p in a.parameters())
        key = (kind, names, cdt, id(cond) if cond is not None else None)
        if frozen:
            hit = self._cache.get(key)
            if hit is not None and hit[0] is cond:
                return hit[1]
        lam = self.ctx.config.lam
        W0 = ads[0].down_linear.weight
        zero = W0.new_zeros(_UNITS, W0.shape[1])
        Wd = torch.cat([a.down_linear.weight for a in ads] + [zero], 0)
        bds = []
        for a in ads:
            bd = a.down_linear.bias.view(1, 1, -1)
            if a.condition_linear is not None and cond is not None and lam != 0:
                e = a.condition_linear(cond.to(a.condition_linear.weight.dtype))  # [Bc, 1, D]
                bd = bd + lam * F.linear(e, a.down_linear.weight)
            bds.append(bd)
        units = W0.new_zeros(1, 1, _UNITS)
        units[..., : len(ads)] = _BIAS_UNIT
        bds.append(units)
        B0 = max(b.shape[0] for b in bds)
        bd = torch.cat([b.expand(B0, 1, -1) for b in bds], -1)
        Wu = torch.cat([a.up_linear.weight.t() for a in ads] + [a.up_linear.bias.view(1, -1) / _BIAS_UNIT for a in ads]
                       + [zero[len(ads):]], 0)  # [K + 8, D]
        out = (Wd.to(cdt), bd.to(cdt), Wu.to(cdt), [a.down_linear.out_features for a in ads])
        if frozen:
            self._cache = {k: v for k, v in self._cache.items() if k[0] != kind}
            self._cache[key] = (cond, out)
        return out

    def _fused_params(self, kind: str, w_id, w_mo, cond, batch: int, dtype, autocast: bool):
        """Return ``(Wd [K + 8, D], bd [B|1, 1, K + 8], Wu [B, K + 8, D], s)`` or None.

        K = h per active adapter (plus 8 bias units, see ``_UNITS``); ``Wu`` is the up-projection with its
        bias rows, scaled per sample by each adapter's weight; ``s`` is the official form's skip weight
        (``w_id + w_mo``) or None.
        """
        names, ws = [], []
        if not _is_zero(w_id):
            names.append(f"id_{kind}_adapter")
            ws.append(w_id)
        if not _is_zero(w_mo):
            names.append(f"motion_{kind}_adapter")
            ws.append(w_mo)
        if not names:
            return None
        wdt = self.adapters.id_attn_adapter.down_linear.weight.dtype
        cdt = wdt if autocast else dtype  # compute dtype of the small weight tensors
        Wd, bd, Wu, hs = self._static_params(kind, tuple(names), cond, cdt)
        tab = self.ctx.up_table(kind, tuple(names), cond, cdt, batch)
        if tab is not None:
            Wu = tab[:, self.index]  # [B, K + 8, D], made once per forward for every block
        else:
            Wu = _wvec(ws, hs, (batch, 1), Wd.device, cdt).transpose(1, 2) * Wu  # [B, K + 8, D]
        s = None
        if self.skip:
            ctx = self.ctx
            if len(ws) == 2 and all(torch.is_tensor(w) for w in ws) and ctx.identity_scale == ctx.motion_scale:
                s = ctx.config.scale * ctx.identity_scale  # alpha + (scale - alpha), without a tensor op
            else:
                s = sum(ws)
        return Wd, bd, Wu, s

    @staticmethod
    def _apply_fused(base: torch.Tensor, n: torch.Tensor, params) -> torch.Tensor:
        """``base + sum_a w_a * A_a(n)`` for the fused adapter pair ``params``; the result (the residual
        stream's update) has ``base``'s dtype (the model dtype) in both forms."""
        if params is None:
            return base
        Wd, bd, Wu, s = params
        if n.dtype != base.dtype:
            n = n.to(base.dtype)  # autocast would cast it for the GEMM anyway; keeps the skip add in the model dtype
        if not _autocast_on(n.device.type):
            Wd, bd, Wu = Wd.to(n.dtype), bd.to(n.dtype), Wu.to(n.dtype)
        G = F.gelu(torch.baddbmm(bd, n, Wd.t().expand(n.shape[0], -1, -1)))  # [B, N, K + 8]
        out = torch.baddbmm(base, G, Wu)
        if s is not None:
            if torch.is_tensor(s):
                out = torch.addcmul(out, n, s.to(out.dtype))
            else:
                out = torch.add(out, n, alpha=float(s))
        return out

    # ---- forward: the backbone runs the block, calling the hooks below ---------------------
    def forward(self, *args, **kwargs):
        return self.runner(self, self, self.ctx.state, *args, **kwargs)

    def begin(self, hidden_states: torch.Tensor, text_tokens: torch.Tensor, time: torch.Tensor) -> None:
        """Hook at the start of the block: block 0 runs the StageBlender on the max-pooled video and text tokens
        and the timestep features; every block takes its weights and the reference embedding for this call."""
        ctx = self.ctx
        if self.index == 0:
            ctx.run_controller(self.controller, hidden_states, text_tokens, time)
        B = hidden_states.shape[0]
        self._w = ctx.weights(self.group, B, hidden_states.device)
        self._autocast = _autocast_on(hidden_states.device.type)
        self._cond = ctx.cond_for(B, hidden_states.device, self.adapters.motion_attn_adapter.down_linear.weight.dtype)
        self._batch = B

    def params(self, kind: str, dtype):
        """Hook: the fused adapter pair of sub-layer ``kind`` (``"attn"`` / ``"ff"``) for this call, or None."""
        return self._fused_params(kind, *self._w, self._cond, self._batch, dtype, self._autocast)

    def apply(self, out: torch.Tensor, n: torch.Tensor, params) -> torch.Tensor:
        """Hook: ``out + sum_a w_a * A_a(n)`` (the sub-layer output before its gate)."""
        return self._apply_fused(out, n, params)


def find_context(model: nn.Module) -> DualRealContext:
    """The :class:`DualRealContext` of a model patched by :class:`DualRealPatch`.

    Raises:
        DualAdapterError: the model carries no DualReal patch.
    """
    from ..backbones import backbone_for

    try:
        blocks = backbone_for(model).block_container(model)
    except (AttributeError, IndexError, NotImplementedError):
        blocks = None
    if blocks is not None and len(blocks) and isinstance(blocks[0], DABlock):
        return blocks[0].ctx
    raise DualAdapterError("this model has no DualReal adapters applied")


def w_cond_trained(adapters) -> bool:
    """Whether the motion adapters' ``W_cond`` was trained (so a reference embedding means something).

    False for a :class:`~dual_adapter.dualreal.checkpoint.DualRealAdapterSet` whose metadata says it was
    trained without reference embeddings (``w_cond_trained`` / ``uses_reference`` false); True otherwise
    (the authors' imported checkpoints were always trained with one; a live module is the caller's business).
    """
    meta = getattr(adapters, "meta", None) or {}
    for k in ("w_cond_trained", "uses_reference"):
        if meta.get(k) is False:
            return False
    return True


def reference_for_adapters(adapters, images: torch.Tensor, encoder: Any = None,
                           what: str = "reference_image") -> torch.Tensor | None:
    """The reference embedding ``c`` of a subject photo for sampling with ``adapters`` (docs/dualreal.md: at
    inference the motion adapters see ``W_cond(c)`` of the subject's reference image).

    Args:
        adapters: a :class:`~dual_adapter.dualreal.checkpoint.DualRealAdapterSet` (its metadata says how
            ``W_cond`` was trained: ``uses_reference`` / ``reference_encoder``).
        images: ``[N, H, W, 3]`` 0..1; the first image is encoded.
        encoder: the encoder to use (anything :func:`~dual_adapter.reference.encode_reference` takes, e.g.
            ComfyUI's CLIP_VISION); ``None`` = the built-in one the adapters were trained with (``"mini"`` or
            ``"tiny"``, :func:`~dual_adapter.reference.load_reference_encoder`).
        what: the input's name, for messages.

    Returns:
        ``[1, 1024]`` float32, or ``None`` (warned) when the adapters were trained without reference embeddings.

    Raises:
        DualAdapterError: no ``encoder`` and the adapters' encoder is not built in (e.g. CLIP ViT-H/14).

    An ``encoder`` other than the built-in one the adapters record (e.g. a CLIP_VISION for adapters trained with
    ``"mini"``) is used as given, with a warning: ``W_cond`` never saw its embeddings.
    """
    from ..reference import encode_reference, load_reference_encoder

    if not w_cond_trained(adapters):
        log.warning("%s is ignored: these adapters were trained without reference embeddings", what)
        return None
    name = (getattr(adapters, "meta", None) or {}).get("reference_encoder")
    if encoder is not None and name in ("mini", "tiny") and getattr(encoder, "name", None) != name:
        log.warning("%s: these adapters' W_cond was trained on the built-in %r reference encoder; the embedding of "
                    "the encoder given (%s) is not what it learned from (leave the encoder out to use %r)", what,
                    name, getattr(encoder, "name", type(encoder).__name__), name)
    if encoder is None:
        if name not in ("mini", "tiny"):
            raise DualAdapterError(f"{what} needs a CLIP vision ViT-H/14 encoder (clip_vision / --reference-encoder): "
                                   f"these adapters were trained with the reference encoder {name!r}, which is not "
                                   f"built in; or give a precomputed reference embedding instead")
        encoder = load_reference_encoder(name)
    return encode_reference(encoder, images[:1])


class DualRealPatch:
    """Model patch running DualReal's DA-blocks and StageBlender (docs/dualreal.md).

    Args:
        adapters: a :class:`~dual_adapter.dualreal.adapters.DualRealAdapters` module (used as is:
            training updates it) or a :class:`~dual_adapter.dualreal.checkpoint.DualRealAdapterSet`
            (saved/loaded adapters; materialised on the model's device and dtype when applied).
        reference: reference-image embedding (``[1024]``, ``[B, 1024]`` or ``[B, 1, 1024]``, or an
            object with ``.image_embeds``, e.g. ComfyUI's CLIP_VISION_OUTPUT) used for the motion
            adapters' ``W_cond``; ``None`` skips the ``W_cond`` term. The same ``c`` is used for
            both CFG branches. Ignored, with a warning, for adapters trained without reference
            embeddings (their ``W_cond`` is untrained; see :func:`w_cond_trained`).
        fixed_weights: ``(w_id, w_mo)`` instead of the controller (e.g. ``(0.1, 0.1)``).
        identity_scale, motion_scale: multiply each branch's weight (1 = as trained; 0 = off).
        recorder: a list that collects the controller output ``alpha`` of every model call
            (used by :func:`~dual_adapter.dualreal.readout.stageblender_readout`).

    Raises:
        DualAdapterError: bad reference embedding (not 1024-d, NaN/Inf), NaN/Inf adapter tensors or
            negative scales; on apply,
            adapters made for another model (names both widths / block counts).
    """

    def __init__(self, adapters, reference=None, *, fixed_weights: tuple[float, float] | None = None,
                 identity_scale: float = 1.0, motion_scale: float = 1.0, recorder: list | None = None):
        from ..reference import as_reference_embedding
        from .checkpoint import DualRealAdapterSet

        if not isinstance(adapters, (DualRealAdapters, DualRealAdapterSet)):
            raise DualAdapterError(f"adapters must be DualRealAdapters or DualRealAdapterSet, got "
                                   f"{type(adapters).__name__}")
        tensors = (adapters.state_dict.items() if isinstance(adapters, DualRealAdapterSet)
                   else adapters.state_dict().items())
        bad = [k for k, v in tensors if v.is_floating_point() and v.device.type != "meta"
               and not bool(torch.isfinite(v).all())]  # meta: shape-only (benchmarks/scale.py)
        if bad:
            raise DualAdapterError(f"DualReal adapters have NaN/Inf values in {len(bad)} tensor(s) (e.g. {bad[0]}): "
                                   f"the training diverged; use an earlier checkpoint or retrain with a lower lr")
        self.adapters = adapters
        self.reference = as_reference_embedding(reference) if reference is not None else None
        if self.reference is not None and not w_cond_trained(adapters):
            log.warning("these DualReal adapters were trained without reference embeddings, so their W_cond is "
                        "untrained (random); the reference embedding is ignored")
            self.reference = None
        if fixed_weights is not None:
            fixed_weights = tuple(float(x) for x in fixed_weights)
            if len(fixed_weights) != 2 or not all(math.isfinite(w) for w in fixed_weights):
                raise DualAdapterError(f"fixed_weights must be two finite numbers (w_id, w_mo), got {fixed_weights}")
        self.fixed_weights = fixed_weights
        for k, v in (("identity_scale", identity_scale), ("motion_scale", motion_scale)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise DualAdapterError(f"{k}={v!r}: must be a finite number >= 0")
        self.identity_scale = float(identity_scale)
        self.motion_scale = float(motion_scale)
        self.recorder = recorder
        self._cache: dict = {}

    @property
    def config(self) -> DualRealConfig:
        return self.adapters.config

    def _module_for(self, device, dtype) -> DualRealAdapters:
        from .checkpoint import DualRealAdapterSet

        if isinstance(self.adapters, DualRealAdapterSet):
            key = (str(device), dtype)
            if key not in self._cache:
                self._cache.clear()
                self._cache[key] = self.adapters.to_module(device=device, dtype=dtype)
            return self._cache[key]
        mod = self.adapters
        p = next(mod.parameters())
        if p.device == torch.device(device) and (p.dtype == dtype or any(q.requires_grad for q in mod.parameters())):
            return mod
        if any(q.requires_grad for q in mod.parameters()):
            raise DualAdapterError(f"trainable DualReal adapters are on {p.device}, the model on {device}; "
                                   f"move them first")
        key = (str(device), dtype)
        if key not in self._cache:
            self._cache.clear()
            self._cache[key] = copy.deepcopy(mod).to(device=device, dtype=dtype)
        return self._cache[key]

    def apply(self, transformer: nn.Module) -> DualRealContext:
        """Wrap every block of ``transformer`` (a weight-sharing copy) in a :class:`DABlock`.

        Returns the :class:`DualRealContext` (also reachable with :func:`find_context`).
        """
        from .checkpoint import DualRealAdapterSet

        from ..backbones import backbone_for

        fp = self.adapters.meta.get("base_fingerprint") if isinstance(self.adapters, DualRealAdapterSet) else None
        check_compatible(self.config, transformer, fp)
        bb = backbone_for(transformer)
        blocks = bb.block_container(transformer)
        if len(blocks) and isinstance(blocks[0], DABlock):
            raise DualAdapterError("this model already has DualReal adapters applied; apply one DualReal set only")
        p0 = next(transformer.parameters())
        mod = self._module_for(p0.device, p0.dtype)
        ctx = DualRealContext(self.config, self.reference, self.fixed_weights, self.identity_scale,
                              self.motion_scale, self.recorder)
        bb.prepare_block_adapters(transformer, ctx.state)
        for i in range(len(blocks)):
            blocks[i] = DABlock(blocks[i], mod.block(i), i, mod.block_group[i], ctx,
                                mod.controller if i == 0 else None, runner=bb.adapted_block_forward)
        ctx.blocks = list(blocks)
        return ctx

    def __repr__(self) -> str:
        c = self.config
        return (f"DualRealPatch(blocks={c.num_blocks}, dim={c.dim}, form={c.form}, groups={c.groups}, "
                f"reference={'yes' if self.reference is not None else 'no'})")
