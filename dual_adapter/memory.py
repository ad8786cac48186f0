"""Two memory levers for any transformer backbone: fp8 storage of the frozen base weights and block swap.

Both act on the frozen (``requires_grad=False``) weights only, so LoRA / adapter parameters train as usual,
and both work on any ``nn.Module`` (CogVideoX, Wan, U-Nets); docs/performance.md ("Memory levers") says what
each saves and costs.

* :func:`store_fp8` keeps the frozen ``nn.Linear`` weights in ``torch.float8_e4m3fn`` (1 byte per weight
  instead of 2 in bf16) with one fp32 scale per output row, and upcasts each layer's weight to the compute
  dtype inside its forward (and again in backward: the autograd graph keeps the fp8 tensor, never an upcast
  copy). The modules stay ``nn.Linear`` (a subclass, :class:`Fp8Linear`), so peft LoRA layers wrap them as
  before. The forward differs from the bf16 one by fp8 rounding of the weights (e4m3: 3 mantissa bits, a
  relative error of at most 2^-4 per weight).
* :class:`BlockSwap` keeps the frozen weights of the first ``n`` blocks of a block list (``transformer_blocks``
  on CogVideoX, ``blocks`` on Wan) on a host device (the CPU) and copies each block to the compute device just
  before it runs, the next one ahead on a side CUDA stream (overlapped with the running block), dropping the
  copy after use. Outputs and gradients are bit-identical to running without it. On a CPU-only machine the
  same code path runs with host = compute = CPU (each use works on a fresh copy), which is how it is tested.

:func:`memory_levers` applies both to a trainer's weight-sharing copy of the model (the loaded model is not
changed unless ``release_loaded``).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import DualAdapterError

log = logging.getLogger(__name__)

__all__ = ["FP8_DTYPE", "FP8_MAX", "DEFAULT_FP8_EXCLUDE", "Fp8Linear", "store_fp8", "fp8_round_trip",
           "find_blocks", "BlockSwap", "memory_levers", "BLOCK_LISTS"]

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn value
# name parts of Linears left in their dtype: adapters / LoRA (trainable or small), embeddings, norms and the
# time / modulation path (small layers whose precision steers every block)
DEFAULT_FP8_EXCLUDE = ("lora_", "adapter", "controller", "embed", "norm", "time", "modulation")
# block lists tried in order when none is named
BLOCK_LISTS = ("transformer_blocks", "blocks", "single_transformer_blocks", "layers")


# --------------------------------------------------------------------------------------------
# fp8 storage


def _dequant(w8: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return w8.to(dtype) * scale.to(dtype)


def fp8_round_trip(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w8, scale)``: ``weight [out, in]`` in e4m3fn with one fp32 scale per output row ``[out, 1]``
    (``scale = max|row| / 448``), so that ``w8.float() * scale`` approximates ``weight``."""
    w = weight.detach().float()
    amax = w.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12)
    scale = amax / FP8_MAX
    return (w / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


class _Fp8LinearFn(torch.autograd.Function):
    """``y = x W^T + b`` with ``W`` upcast from fp8 in forward and again in backward: only the fp8 weight
    is kept for backward (an upcast copy would double the frozen weights' memory across the graph)."""

    @staticmethod
    def forward(ctx, x, w8, scale, bias, dtype):
        ctx.save_for_backward(w8, scale)
        ctx.dtype = dtype
        ctx.bias_grad = bias is not None and bias.requires_grad
        return F.linear(x, _dequant(w8, scale, dtype), bias)

    @staticmethod
    def backward(ctx, g):
        w8, scale = ctx.saved_tensors
        gx = g.to(ctx.dtype).matmul(_dequant(w8, scale, ctx.dtype)) if ctx.needs_input_grad[0] else None
        gb = g.reshape(-1, g.shape[-1]).sum(0) if ctx.bias_grad else None
        return gx, None, None, gb, None


class Fp8Linear(nn.Linear):
    """An ``nn.Linear`` whose frozen ``weight`` is stored in fp8 (e4m3fn) with a per-row fp32 ``weight_scale``
    buffer ``[out, 1]``; the forward computes in the autocast dtype when autocast is on, else in the input's
    dtype. ``compute_dtype`` (the weight's dtype before conversion) is what peft reads to pick the dtype of a
    LoRA wrapped around this layer. Made by :func:`store_fp8`; not trainable."""

    compute_dtype: torch.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dev = x.device.type
        dt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        if not dt.is_floating_point or dt.itemsize < 2:
            dt = self.compute_dtype
        b = None if self.bias is None else self.bias.to(dt)
        return _Fp8LinearFn.apply(x.to(dt), self.weight, self.weight_scale, b, dt)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", fp8 storage (compute {self.compute_dtype})"


def _excluded(name: str, exclude: Sequence[str]) -> bool:
    return "." not in name or any(e in name for e in exclude)


def store_fp8(module: nn.Module, exclude: Sequence[str] = DEFAULT_FP8_EXCLUDE, release_loaded: bool = False,
              keep: Iterable[torch.Tensor] = ()) -> int:
    """Store the frozen ``nn.Linear`` weights of ``module`` in fp8 (e4m3fn, a per-row scale), in place.

    Converted: every ``nn.Linear`` below the root (the root's own heads, e.g. ``proj_out``, stay) whose weight
    does not require grad, is not in ``keep`` (parameters a trainer trains, frozen for now or not) and whose
    qualified name contains none of ``exclude`` (default: LoRA and adapter layers, embeddings, norms, the time /
    modulation path). Each becomes an :class:`Fp8Linear` holding a *new*
    fp8 ``weight`` Parameter: on a weight-sharing copy (:func:`dual_adapter.patches.shallow_copy_module`) the
    original model keeps its weights, and ``release_loaded`` then frees their storage (for a process that
    ends after training: the original becomes unusable). Biases keep their dtype. peft LoRA layers wrapped
    around converted Linears (before or after conversion) work unchanged.

    Returns:
        the bytes the converted weights took before minus after (scales included), per the stored dtypes.

    Raises:
        DualAdapterError: ``module`` is not an ``nn.Module``.
    """
    if not isinstance(module, nn.Module):
        raise DualAdapterError(f"store_fp8: expected a torch module, got {type(module).__name__}")
    saved = 0
    keep_ids = {id(t) for t in keep}
    with torch.no_grad():
        for name, m in list(module.named_modules()):
            if type(m) is not nn.Linear or m.weight.requires_grad or id(m.weight) in keep_ids \
                    or _excluded(name, exclude):
                continue
            w = m.weight
            if not w.dtype.is_floating_point or w.dtype.itemsize < 2:
                continue
            w8, scale = fp8_round_trip(w)
            before = w.numel() * w.element_size()
            m.__class__ = Fp8Linear
            m.compute_dtype = w.dtype
            m._parameters["weight"] = nn.Parameter(w8, requires_grad=False)
            m.register_buffer("weight_scale", scale)
            if release_loaded:
                w.data = torch.empty(0, dtype=w.dtype, device=w.device)
            saved += before - w8.numel() - scale.numel() * 4
    return saved


# --------------------------------------------------------------------------------------------
# block swap


def find_blocks(model: nn.Module, attr: str | None = None) -> tuple[str, nn.ModuleList]:
    """``(name, blocks)``: the block list ``model.<attr>`` (an ``nn.ModuleList``), or, with ``attr`` None, the
    first of :data:`BLOCK_LISTS` the model has.

    Raises:
        DualAdapterError: no such list (the message lists the model's ModuleList attributes).
    """
    names = [attr] if attr else list(BLOCK_LISTS)
    for n in names:
        b = getattr(model, n, None)
        if isinstance(b, nn.ModuleList) and len(b):
            return n, b
    have = [k for k, v in model.named_children() if isinstance(v, nn.ModuleList)]
    raise DualAdapterError(f"block swap: {type(model).__name__} has no block list "
                           f"{attr or ' / '.join(BLOCK_LISTS)!r}; its ModuleLists: {have or 'none'}")


class _Stream:
    """The side stream of the copies (CUDA), or nothing (the copy runs in line)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None

    def context(self):
        return torch.cuda.stream(self.stream) if self.cuda else contextlib.nullcontext()


class BlockSwap:
    """Keep the frozen weights of the first ``n`` blocks of ``model.<blocks>`` on ``host`` and bring each block
    to ``device`` just before it runs (the next swapped block is copied ahead, on a side stream on CUDA),
    dropping the copy after the block ran. Outputs and gradients are bit-identical to no swap.

    Parameters that require grad (LoRA, adapters inside a block) stay where they are. In training, the memory
    is saved only with gradient checkpointing: without it the autograd graph keeps every block's weights
    until backward. In backward the recomputed blocks come in again, in reverse order (the swap follows the
    direction the blocks run in).

    Args:
        model: the module whose ``forward`` runs the blocks (its other weights stay where they are).
        n: blocks to keep on ``host`` (the first ``n``; 0 = none; more than the model has = all).
        blocks: name of the block list (default: the first of :data:`BLOCK_LISTS` found).
        device: compute device (default: the device of the model's first parameter).
        host: where the swapped weights live (``"cpu"``); pinned when ``device`` is CUDA, so copies overlap.
        keep: parameters never swapped (those a trainer trains, even while frozen for a phase).

    Use as a context manager or call :meth:`remove` (puts the swapped weights back on ``device``).
    ``moves`` counts the block copies made, ``most_resident`` the most swapped blocks on the device at once.

    Raises:
        DualAdapterError: bad ``n`` or no block list.
    """

    def __init__(self, model: nn.Module, n: int, blocks: str | None = None, device=None, host="cpu",
                 keep: Iterable[torch.Tensor] = ()):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise DualAdapterError(f"block_swap={n!r}: must be an integer >= 0 (blocks kept on the CPU)")
        self.name, self.blocks = find_blocks(model, blocks)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.host = torch.device(host)
        self.swapped = set(range(min(n, len(self.blocks))))
        self.stream = _Stream(self.device)
        pin = self.device.type == "cuda" and self.host.type == "cpu"
        keep_ids = {id(t) for t in keep}
        # per swapped block: [(module, store ("_parameters" / "_buffers"), key, host tensor)]
        self._slots: dict[int, list] = {}
        with torch.no_grad():
            for i in self.swapped:
                slots = []
                for mod in self.blocks[i].modules():
                    for store in ("_parameters", "_buffers"):
                        for k, t in list(getattr(mod, store).items()):
                            if t is None or id(t) in keep_ids or (store == "_parameters" and t.requires_grad):
                                continue
                            h = t.detach().to(self.host)
                            if pin:
                                h = h.pin_memory()
                            if store == "_parameters":
                                h = nn.Parameter(h, requires_grad=False)
                            getattr(mod, store)[k] = h
                            slots.append((mod, store, k, h))
                self._slots[i] = slots
        self._ready: dict[int, object] = {}  # block -> CUDA event of its copy (None on CPU)
        self._last: int | None = None
        self.moves = 0
        self.most_resident = 0  # most swapped blocks on the device at once (a test hook)
        self._hooks = [model.register_forward_pre_hook(self._root_pre)]
        for i, blk in enumerate(self.blocks):
            self._hooks.append(blk.register_forward_pre_hook(lambda m, a, i=i: self._pre(i)))
            self._hooks.append(blk.register_forward_hook(lambda m, a, o, i=i: self._post(i)))

    # -- moves
    def _start(self, i: int) -> None:
        if i not in self.swapped or i in self._ready:
            return
        with torch.no_grad(), self.stream.context():
            for mod, store, k, h in self._slots[i]:
                t = h.to(self.device, non_blocking=True) if h.device != self.device else h.detach().clone()
                getattr(mod, store)[k] = nn.Parameter(t, requires_grad=False) if store == "_parameters" else t
            ev = None
            if self.stream.cuda:
                ev = torch.cuda.Event()
                ev.record(self.stream.stream)
        self._ready[i] = ev
        self.moves += 1

    def _wait(self, i: int) -> None:
        ev = self._ready.get(i)
        if ev is None or not self.stream.cuda:
            return
        cur = torch.cuda.current_stream(self.device)
        cur.wait_event(ev)
        for mod, store, k, _ in self._slots[i]:
            getattr(mod, store)[k].record_stream(cur)  # the allocator must not reuse it while `cur` runs
        self._ready[i] = None

    def _evict(self, i: int) -> None:
        if i not in self._ready:
            return
        for mod, store, k, h in self._slots[i]:
            getattr(mod, store)[k] = h  # the device copy is freed once autograd no longer holds it
        del self._ready[i]

    # -- hooks
    def _root_pre(self, module, args) -> None:
        self._last = None
        if self.swapped:
            self._start(min(self.swapped))

    def _pre(self, i: int) -> None:
        step = 1 if self._last is None or i > self._last else -1  # backward recomputes blocks in reverse
        self._last = i
        nxt = i + step
        for j in list(self._ready):  # at most two swapped blocks on the device: this one and the next
            if j not in (i, nxt):
                self._evict(j)
        self._start(i)
        self._wait(i)
        if nxt in self.swapped:
            self._start(nxt)
        self.most_resident = max(self.most_resident, len(self._ready))

    def _post(self, i: int) -> None:
        self._evict(i)

    # -- life cycle
    def remove(self) -> None:
        """Remove the hooks and put the swapped weights on the compute device."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        with torch.no_grad():
            for i, slots in self._slots.items():
                self._ready.pop(i, None)
                for mod, store, k, h in slots:
                    t = h.detach().to(self.device)
                    getattr(mod, store)[k] = nn.Parameter(t, requires_grad=False) if store == "_parameters" else t
        self._slots = {}

    def __enter__(self) -> "BlockSwap":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


@contextlib.contextmanager
def memory_levers(model: nn.Module, *, fp8: bool = False, block_swap: int = 0, blocks: str | None = None,
                  device=None, release_loaded: bool = False, trainable: Iterable[torch.Tensor] = ()
                  ) -> Iterator[BlockSwap | None]:
    """Apply the levers to ``model`` (a trainer's weight-sharing copy, after its LoRA / adapters are in place)
    for the duration of the ``with``: fp8 storage of the frozen Linears (:func:`store_fp8`, stays after the
    block: the copy is the trainer's own) and block swap of the first ``block_swap`` blocks
    (:class:`BlockSwap`, removed at the end). Yields the :class:`BlockSwap` or None. ``release_loaded``:
    free the loaded model's weights that the copy replaced by fp8 ones (see :func:`store_fp8`). ``trainable``:
    the parameters the trainer trains (left as they are by both levers, even while frozen for a phase)."""
    trainable = list(trainable)
    if fp8:
        saved = store_fp8(model, release_loaded=release_loaded, keep=trainable)
        log.info("fp8 base weights: %.2f GB saved", saved / 1e9)
    swap = BlockSwap(model, int(block_swap), blocks, device, keep=trainable) if block_swap else None
    try:
        yield swap
    finally:
        if swap is not None:
            swap.remove()


def frozen_bytes(modules: Iterable[nn.Module]) -> int:
    """Bytes of the frozen parameters and buffers of ``modules`` (shared tensors counted once)."""
    seen, n = set(), 0
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            if (isinstance(t, nn.Parameter) and t.requires_grad) or id(t) in seen:
                continue
            seen.add(id(t))
            n += t.numel() * t.element_size()
    return n
