"""What a method needs from a video backbone (the interface every backbone module implements).

A method (TAP / AH motion LoRA, CustomTTT, ...) talks to a backbone only through
:class:`VideoBackbone`; it never names ``transformer_blocks``, ``attn1`` or ``down_blocks``
itself. One module or package per backbone implements it (``cogvideox/``, ``unet3d.py``,
``animatediff.py``); :mod:`dual_adapter.backbones` finds them, so adding a backbone touches
one new module (or package) and nothing else.

The interface, in the terms of the issue that asked for it:

* **blocks** - :meth:`VideoBackbone.blocks`: the denoiser's blocks in forward order
  (:class:`BlockInfo`: name, stage ``down``/``mid``/``up``/``joint``, stage index, module);
* **attention modules by role** - :meth:`VideoBackbone.attention_modules` with a role of
  :data:`ROLES`: ``spatial`` (self-attention within a frame), ``temporal`` (attention across
  frames at one position), ``cross`` (attention to the text), ``joint`` (CogVideoX: one attention
  over text + all frames and positions);
* **where text enters** - :meth:`VideoBackbone.text_entry_points`: the modules that read the
  text embedding, and :meth:`VideoBackbone.encode_prompt`; :meth:`VideoBackbone.text_argument`: how a block receives
  the text (CustomTTT's prompt influence replaces one block's);
* **forward process and clean estimate** - :meth:`VideoBackbone.noisy_latents` (``x_t`` at a model timestep),
  :meth:`VideoBackbone.x0_from_prediction` (``x0`` from a denoiser output);
* **training objective and scheduler** - :attr:`VideoBackbone.prediction_type`
  (``epsilon`` / ``v_prediction``), :meth:`VideoBackbone.training_target`,
  :meth:`VideoBackbone.make_scheduler`, :meth:`VideoBackbone.noise_scheduler`;
* **latent layout and VAE** - :attr:`VideoBackbone.latent_layout` (``"BCFHW"`` or ``"BFCHW"``),
  :meth:`VideoBackbone.encode_frames`, :meth:`VideoBackbone.decode_latents`,
  :meth:`VideoBackbone.predict` (one denoiser call in the backbone's own layout),
  :meth:`VideoBackbone.latent_shape`, :meth:`VideoBackbone.scheduler_step` (what the shared sampler,
  :func:`dual_adapter.sampling.sample`, needs beyond ``predict`` and ``make_scheduler``);
* **frame-count rules** - :meth:`VideoBackbone.check_video_size`,
  :meth:`VideoBackbone.latent_frames`, :attr:`VideoBackbone.default_size`;
* **image-to-video conditioning** - :attr:`VideoBackbone.image_to_video`,
  :meth:`VideoBackbone.image_conditioning` (an :class:`ImageConditioning`: what the denoiser takes beside the noisy
  latents), passed as ``cond`` to :meth:`VideoBackbone.predict` / :meth:`VideoBackbone.training_loss`, and
  :meth:`VideoBackbone.finish_sample`;
* **several denoisers** (Wan 2.2 A14B's high- and low-noise experts) - :meth:`VideoBackbone.denoiser_names`,
  :meth:`VideoBackbone.denoiser_for` (which one serves a timestep: the sampler asks it every step),
  :meth:`VideoBackbone.get_denoiser`, :meth:`VideoBackbone.expert` (a one-denoiser backbone trained on the
  timesteps its denoiser serves); one-denoiser backbones keep the defaults;
* **optional parts** - block adapters (DualReal: :meth:`VideoBackbone.block_container`,
  :meth:`VideoBackbone.adapter_dims`, :meth:`VideoBackbone.adapted_block_forward`; :meth:`VideoBackbone.has_block_adapters`
  says whether they are there) and an image mode (MotionDirector's spatial path: :meth:`VideoBackbone.spatial_transformers`,
  :meth:`VideoBackbone.without_temporal_modules`); the defaults say the backbone lacks them;
* **what trained adapters depend on** - :meth:`VideoBackbone.width`, :meth:`VideoBackbone.architecture`
  and :meth:`VideoBackbone.fingerprint` (stored in adapter metadata, checked when one is applied),
  :attr:`VideoBackbone.motion_role` (the attention role a motion LoRA such as TAP targets).

The training objective a trainer optimises is :meth:`VideoBackbone.training_loss` (the shared
:func:`dual_adapter.training.diffusion_loss` dispatches to it); a trainer holding only its trainable
denoiser gets the backbone with :func:`dual_adapter.backbones.backbone_for`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import DualAdapterError

__all__ = ["ROLES", "BlockInfo", "ImageConditioning", "VideoBackbone", "check_role", "parse_dtype", "check_device",
           "prepare_image"]

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



@contextlib.contextmanager
def offloaded(module, device: str, offload: bool):
    """Yield ``module`` on ``device``: moved there for the block and back to the CPU afterwards when ``offload``
    (and ``device`` is not the CPU), else as it is."""
    if not offload or device == "cpu":
        yield module
        return
    module.to(device)
    try:
        yield module
    finally:
        module.to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


#: Attention roles a backbone can report (see the module docstring).
ROLES = ("spatial", "temporal", "cross", "joint")


def check_role(role: str) -> str:
    """Return ``role`` or raise :class:`DualAdapterError` listing :data:`ROLES`."""
    if role not in ROLES:
        raise DualAdapterError(f"attention role {role!r} is not one of {', '.join(ROLES)}")
    return role


@dataclass(frozen=True)
class BlockInfo:
    """One block of the denoiser, in forward order.

    Attributes:
        name: module name inside the denoiser (``down_blocks.2``, ``transformer_blocks.7``).
        stage: ``down`` / ``mid`` / ``up`` (U-Nets) or ``joint`` (transformers).
        index: index within its stage (``up_blocks.1`` -> 1).
        module: the block itself.
        has_text: whether text enters this block (a cross- or joint attention reads it).
    """

    name: str
    stage: str
    index: int
    module: nn.Module
    has_text: bool


@dataclass
class ImageConditioning:
    """What an image-to-video denoiser takes beside the noisy latents (:meth:`VideoBackbone.image_conditioning`).

    Every tensor has the batch first (1 or the batch of the latents it goes with; :meth:`expand` repeats it).

    Attributes:
        concat: latents joined to the noisy latents on the channel axis, in the backbone's ``latent_layout``
            ``[B, F, C', h, w]`` (CogVideoX I2V: the image's latent frame, then zeros; Wan 2.1 I2V: a first-frame
            mask of ``vae_scale_temporal`` channels and the latents of the image followed by blank frames), or None.
        image_embeds: ``[B, N, D]`` image-encoder features the cross-attention reads beside the text (Wan 2.1 I2V:
            CLIP ViT-H penultimate hidden states, N = 257), or None.
        first_frame: ``[B, 1, C, h, w]`` latent frame that replaces the first latent frame of the video, with
            timestep 0 on its tokens (Wan 2.2 TI2V), or None.
    """

    concat: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    first_frame: torch.Tensor | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        """The fields that are set, by name."""
        return {k: v for k, v in (("concat", self.concat), ("image_embeds", self.image_embeds),
                                  ("first_frame", self.first_frame)) if v is not None}

    def expand(self, batch: int) -> "ImageConditioning":
        """The conditioning for ``batch`` samples: fields of batch 1 expanded, of batch ``b`` dividing ``batch``
        repeated (a classifier-free-guidance batch ``[negative; positive]`` of a batch-``b`` conditioning).

        Raises:
            DualAdapterError: a field's batch neither 1 nor divides ``batch``.
        """
        out = {}
        for k, v in self.tensors().items():
            b = v.shape[0]
            if b == batch:
                out[k] = v
            elif b and batch % b == 0:
                out[k] = v.repeat(batch // b, *([1] * (v.ndim - 1)))
            else:
                raise DualAdapterError(f"image conditioning {k} has batch {b}; cannot serve a batch of {batch}")
        return ImageConditioning(**out)

    @staticmethod
    def cat(conds: Sequence["ImageConditioning | None"]) -> "ImageConditioning | None":
        """The conditionings of several samples joined on the batch axis (each field of every one, in order);
        None where any is None (no conditioning) or none are given.

        Raises:
            DualAdapterError: conditionings with different fields set.
        """
        conds = list(conds)
        if not conds or any(c is None for c in conds):
            return None
        if len(conds) == 1:
            return conds[0]
        keys = {tuple(c.tensors()) for c in conds}
        if len(keys) > 1:
            raise DualAdapterError(f"cannot join image conditionings with different fields: {sorted(keys)}")
        return ImageConditioning(**{k: torch.cat([c.tensors()[k] for c in conds]) for k in next(iter(keys))})

    def select(self, index: torch.Tensor) -> "ImageConditioning":
        """The conditioning of the samples ``index`` (fields of batch 1 are kept as they are)."""
        return ImageConditioning(**{k: (v if v.shape[0] == 1 else v[index.to(v.device)])
                                    for k, v in self.tensors().items()})

    def to(self, device=None, dtype=None) -> "ImageConditioning":
        """Every field moved / cast (``dtype`` applies to floating fields)."""
        return ImageConditioning(**{k: v.to(device=device, dtype=dtype if v.is_floating_point() else None)
                                    for k, v in self.tensors().items()})


def prepare_image(image: torch.Tensor, height: int, width: int, name: str = "image") -> torch.Tensor:
    """A conditioning image as ``[1, height, width, 3]`` float32 in 0..1.

    ``image``: ``[H, W, 3]`` or ``[1, H, W, 3]`` float 0..1 (a ComfyUI IMAGE of one picture); resized to cover
    ``height x width`` keeping its aspect ratio, then centre-cropped (:func:`dual_adapter.media.fit_frames`).

    Raises:
        DualAdapterError: not a tensor, another layout, several images, or values outside 0..1 / not finite
            (names ``name``).
    """
    from ..media import check_frame_values, fit_frames

    if not torch.is_tensor(image):
        raise DualAdapterError(f"{name} must be a tensor [H, W, 3] or [1, H, W, 3] (float 0..1), got "
                               f"{type(image).__name__}")
    x = image.unsqueeze(0) if image.ndim == 3 else image
    if x.ndim != 4 or x.shape[0] != 1 or x.shape[-1] != 3:
        raise DualAdapterError(f"{name} must be one RGB image [H, W, 3] or [1, H, W, 3] (float 0..1), got shape "
                               f"{tuple(image.shape)}")
    x = check_frame_values(x.float(), name).clamp(0, 1)
    if tuple(x.shape[1:3]) == (height, width):
        return x.cpu().contiguous()
    return fit_frames(x.cpu(), height, width)


class VideoBackbone:
    """A loaded text-to-video model seen through the roles a method needs.

    Subclasses set :attr:`kind` and implement every method below. Instances carry the parts
    (``denoiser``, ``vae``, ``text_encoder``, ``tokenizer``) and the execution ``device`` / ``dtype``.

    Layouts: video latents are in the VAE's *scaled* latent space. Frames (input and output of the
    VAE) are ``[F, H, W, 3]`` float in 0..1 (ComfyUI IMAGE). Text embeddings are ``[B, L, D_text]``.
    """

    #: short name used on the command line, in file metadata and in error messages
    kind: str = "?"
    #: human-readable family name, e.g. "ZeroScope / ModelScope T2V (UNet3D)"
    family: str = "?"
    #: ``"BCFHW"`` (U-Nets, ComfyUI LATENT) or ``"BFCHW"`` (CogVideoX transformer)
    latent_layout: str = "BCFHW"
    #: what the denoiser predicts: ``"epsilon"`` or ``"v_prediction"``
    prediction_type: str = "epsilon"
    #: the attention role motion LoRAs (TAP) target: ``"temporal"`` on U-Nets, ``"joint"`` on CogVideoX
    motion_role: str = "temporal"
    #: whether the denoiser takes a conditioning image (an image-to-video model; see :meth:`image_conditioning`)
    image_to_video: bool = False

    @property
    def needs_image(self) -> bool:
        """Whether sampling needs a conditioning image (default: every image-to-video model; Wan 2.2 TI2V samples
        text-to-video without one)."""
        return bool(self.image_to_video)
    #: the denoiser's component name in diffusers, the prefix of its LoRA keys (``transformer.{module}.lora_A.weight``
    #: on DiTs, ``unet.{module}...`` on U-Nets): :class:`~dual_adapter.lora.file.LoraFile` s trained or loaded for
    #: this backbone use it
    lora_prefix: str = "transformer"

    name: str = "?"
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    denoiser: nn.Module
    #: the noise-schedule config (diffusers ``scheduler_config.json`` content) of :meth:`noise_scheduler`
    scheduler_config: dict
    vae: Any
    text_encoder: Any
    tokenizer: Any

    # ---------------------------------------------------------------- structure
    def blocks(self, denoiser: nn.Module | None = None) -> list[BlockInfo]:
        """The denoiser's blocks in forward order (of ``denoiser``, default :attr:`denoiser`)."""
        raise NotImplementedError

    def attention_modules(self, role: str, denoiser: nn.Module | None = None) -> dict[str, nn.Module]:
        """Module name -> attention module (diffusers ``Attention``) of ``role`` (see :data:`ROLES`)."""
        raise NotImplementedError

    def text_entry_points(self, denoiser: nn.Module | None = None) -> dict[str, nn.Module]:
        """Module name -> module that reads the text embedding (cross or joint attention)."""
        raise NotImplementedError

    def spatial_transformers(self, denoiser: nn.Module | None = None) -> dict[str, nn.Module]:
        """Module name -> per-frame transformer whose ``transformer_blocks[i].attn1`` / ``.ff`` projections
        MotionDirector's spatial path trains (U-Nets: every ``Transformer2DModel``). Default: none (a backbone
        without them trains TAP without the spatial path)."""
        return {}

    @contextlib.contextmanager
    def without_temporal_modules(self, denoiser: nn.Module | None = None):
        """Context manager: run ``denoiser`` (default :attr:`denoiser`) as an image model, every module that mixes
        frames passing its input through (MotionDirector's spatial path; CustomTTT's appearance LoRA on
        AnimateDiff). Yields the denoiser.

        Raises:
            DualAdapterError: this default: the backbone has no image mode.
        """
        raise DualAdapterError(f"model {self.name!r} ({self.family}) has no image mode (a forward with its temporal "
                               f"modules bypassed); MotionDirector's spatial path needs one: set spatial_path off")
        yield  # pragma: no cover - a generator, for contextmanager

    def text_argument(self) -> tuple[str, int | None]:
        """``(keyword, position)``: how the denoiser passes the text to a block of :meth:`blocks` that has text
        (a method that replaces one block's text, such as CustomTTT's prompt influence, looks for the keyword
        first, then the position). Default ``("encoder_hidden_states", None)``: by keyword, as diffusers'
        CogVideoX and U-Nets call their blocks."""
        return "encoder_hidden_states", None

    def width(self, denoiser: nn.Module | None = None) -> int:
        """Hidden width of the blocks (for error messages about adapters of another model size)."""
        raise NotImplementedError

    def architecture(self, denoiser: nn.Module | None = None) -> dict:
        """The config fields a trained adapter depends on (JSON-able; stored in adapter metadata).
        Default: every JSON-able scalar of ``denoiser.config``."""
        c = dict(getattr(self.pick_denoiser(denoiser), "config", None) or {})
        return {k: v for k, v in sorted(c.items()) if not k.startswith("_") and
                isinstance(v, (int, float, str, bool, type(None)))}

    def fingerprint(self, denoiser: nn.Module | None = None) -> str:
        """Short hash of :meth:`architecture` (adapters store it; another variant logs a warning)."""
        import hashlib
        import json

        blob = json.dumps(self.architecture(denoiser), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def pick_denoiser(self, denoiser: nn.Module | None = None) -> nn.Module:
        """``denoiser`` if given, else the backbone's own (never tests a module for truth: a compiled module
        raises there, and a module with ``__len__`` can be falsy)."""
        return self.denoiser if denoiser is None else denoiser

    # ---------------------------------------------------------------- several denoisers (Wan 2.2 A14B's experts)
    def denoiser_names(self) -> tuple[str, ...]:
        """Names of the denoisers that share the sampling steps, in the order they serve them (``("denoiser",)``
        on one-denoiser backbones; Wan 2.2 A14B: ``("high_noise", "low_noise")``). Each is a part for :meth:`use`."""
        return ("denoiser",)

    def denoiser_for(self, t: float | torch.Tensor) -> str:
        """The name (of :meth:`denoiser_names`) of the denoiser that serves timestep ``t`` (a number on the
        scheduler's timestep scale, 0..num_train_timesteps). Default: the one denoiser."""
        return "denoiser"

    def get_denoiser(self, name: str) -> nn.Module:
        """The denoiser module called ``name`` (of :meth:`denoiser_names`).

        Raises:
            DualAdapterError: another name.
        """
        if name not in self.denoiser_names():
            raise DualAdapterError(f"{name!r} is not a denoiser of this model ({', '.join(self.denoiser_names())})")
        return self.denoiser

    def expert(self, name: str) -> "VideoBackbone":
        """A one-denoiser backbone of denoiser ``name`` whose training noise schedule holds only the timesteps that
        denoiser serves (a trainer given it trains that denoiser's LoRA or adapters on its own timesteps).
        Default: this backbone (its one denoiser serves every timestep).

        Raises:
            DualAdapterError: ``name`` is not one of :meth:`denoiser_names`.
        """
        self.get_denoiser(name)
        return self

    def time_patch(self, denoiser: nn.Module | None = None) -> int:
        """Latent frames the denoiser patches together in time (2 on CogVideoX 1.5, else 1); losses that
        pick a latent frame count the frames after the padding this implies."""
        return 1

    def pad_latent_frames(self, latents: torch.Tensor, denoiser: nn.Module | None = None) -> torch.Tensor:
        """Latents (in :attr:`latent_layout`) padded in time to what the denoiser patches (CogVideoX 1.5: copies
        of the first latent frame in front, as its pipeline pads). Default: unchanged."""
        return latents

    # ---------------------------------------------------------------- block adapters (DualReal)
    def block_container(self, denoiser: nn.Module | None = None) -> nn.ModuleList:
        """The ``nn.ModuleList`` holding :meth:`blocks` (a method that wraps blocks replaces its items in place,
        on a weight-sharing copy). Default: the parent module of the first block."""
        d = self.pick_denoiser(denoiser)
        return d.get_submodule(self.blocks(d)[0].name.rsplit(".", 1)[0])

    def has_block_adapters(self) -> bool:
        """Whether block adapters (DualReal's DA-blocks) run on this backbone. Default: whether it implements
        :meth:`adapted_block_forward` (with :meth:`adapter_dims`)."""
        return type(self).adapted_block_forward is not VideoBackbone.adapted_block_forward

    def adapter_dims(self, denoiser: nn.Module | None = None) -> tuple[int, int, int]:
        """``(width D, blocks L, T)``: what block adapters are sized by; ``T`` is the width of the timestep
        features the StageBlender controller reads (CogVideoX: its ``time_embed_dim``)."""
        raise NotImplementedError

    def prepare_block_adapters(self, denoiser: nn.Module, state: dict) -> None:
        """Called once when a method wraps the blocks of ``denoiser`` (a patched copy) with adapters: a backbone
        whose blocks do not receive what :meth:`adapted_block_forward` needs may capture it into ``state`` (a
        dict shared by the wrapped blocks, refreshed every model call). Default: nothing."""

    def adapted_block_forward(self, block, hooks, state: dict, *args, **kwargs):
        """One block's forward, with adapters: the block's own computation, written out with three hook calls.

        ``block`` has the block's sub-modules under their own names; ``args`` / ``kwargs`` are what the denoiser
        passes the block. ``hooks.begin(hidden_states, text_tokens, time)`` comes first (the video tokens
        ``[B, N, D]``, the text tokens as the block sees them ``[B, L, D]``, the timestep features ``[B, T]`` of
        :meth:`adapter_dims`); then for each sub-layer ``kind`` (``"attn"``, ``"ff"``) with output ``out`` and
        normalised input ``n``: ``p = hooks.params(kind, out.dtype)`` and, when ``p`` is not None,
        ``out = hooks.apply(out, n, p)`` *before* the sub-layer's gate. Returns what the block returns."""
        raise NotImplementedError

    # ---------------------------------------------------------------- text
    def encode_prompt(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """Text embeddings ``[B, L, D_text]`` of ``prompts`` on the execution device."""
        raise NotImplementedError

    # ---------------------------------------------------------------- objective / schedulers
    def noise_scheduler(self):
        """The training noise scheduler (``add_noise``, ``alphas_cumprod``, ``num_train_timesteps``)."""
        raise NotImplementedError

    def make_scheduler(self, name: str = "ddim"):
        """A sampling scheduler of this model's noise schedule (``ddim``, ``dpm``...)."""
        raise NotImplementedError

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the denoiser should output at ``x_t = add_noise(x0, noise, t)``."""
        if self.prediction_type == "epsilon":
            return noise
        return self.noise_scheduler().get_velocity(x0, noise, t)

    def training_loss(self, denoiser: nn.Module | None, noise_scheduler, latents: torch.Tensor, text: torch.Tensor,
                      *, generator: torch.Generator | None = None, timesteps: torch.Tensor | None = None,
                      noise: torch.Tensor | None = None, reduce: bool = True, error_fn=None,
                      cond: ImageConditioning | None = None) -> torch.Tensor:
        """The training objective at one draw of ``t ~ U[0, T)`` and ``eps`` (``generator``, unless given).

        ``cond``: the image conditioning of an image-to-video model (:meth:`image_conditioning`); None on an
        image-to-video model means :meth:`training_conditioning` of ``latents`` (the clip's first frame).

        Default: ``mean(error_fn(predict(x_t) - training_target))`` (``error_fn`` default ``d ** 2``), the
        plain epsilon / v MSE of diffusers' training scripts. ``latents`` are clean scaled latents in
        :attr:`latent_layout`; ``reduce=False`` returns the per-sample loss ``[B]``.
        """
        B = latents.shape[0]
        if timesteps is None:
            timesteps = torch.randint(0, int(noise_scheduler.config.num_train_timesteps), (B,), generator=generator)
        timesteps = timesteps.to(latents.device).long()
        if noise is None:
            noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
        noise = noise.to(latents.device, latents.dtype)
        x_t = noise_scheduler.add_noise(latents, noise, timesteps)
        if text.shape[0] == 1 and B > 1:
            text = text.expand(B, -1, -1)
        extra = {} if cond is None else {"cond": cond.expand(B)}
        pred = self.predict(x_t, timesteps, text, denoiser=denoiser, **extra).float()
        if self.prediction_type == "epsilon":
            target = noise.float()
        else:
            target = noise_scheduler.get_velocity(latents.float(), noise.float(), timesteps)
        d = pred - target
        err = d ** 2 if error_fn is None else error_fn(d)
        per = err.reshape(B, -1).mean(1)
        return per.mean() if reduce else per

    def noisy_latents(self, noise_scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The forward process at model timesteps ``t`` ``[B]``: ``x_t`` from clean latents ``x0`` and ``noise``
        (both in :attr:`latent_layout`). Default: ``noise_scheduler.add_noise`` (``sqrt(abar_t) x0 + sqrt(1 -
        abar_t) noise``, the DDPM schedules of CogVideoX and the U-Nets)."""
        return noise_scheduler.add_noise(x0, noise, t)

    def x0_from_prediction(self, scheduler, prediction: torch.Tensor, x_t: torch.Tensor, t) -> torch.Tensor:
        """The clean-latent estimate from a denoiser output at ``x_t`` and model timestep ``t`` (an int, a 0-d
        or a ``[B]`` tensor). Default (DDPM schedules, ``abar = scheduler.alphas_cumprod[t]``):
        ``sqrt(abar) x_t - sqrt(1 - abar) v`` for v-prediction, ``(x_t - sqrt(1 - abar) eps) / sqrt(abar)`` for
        epsilon-prediction."""
        t = torch.as_tensor(t).to("cpu").long()
        abar = scheduler.alphas_cumprod[t].float().to(x_t.device, torch.float32)
        if abar.ndim == 1:
            abar = abar.view(-1, *([1] * (x_t.ndim - 1)))
        if self.prediction_type == "epsilon":
            return (x_t - (1 - abar).sqrt() * prediction) / abar.sqrt()
        return abar.sqrt() * x_t - (1 - abar).sqrt() * prediction

    def predict(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                denoiser: nn.Module | None = None) -> torch.Tensor:
        """One denoiser call: ``latents`` in :attr:`latent_layout`, timesteps ``[B]``, text ``[B, L, D]``.
        Image-to-video backbones also take ``cond=`` an :class:`ImageConditioning` of the same batch."""
        raise NotImplementedError

    # ---------------------------------------------------------------- image-to-video
    def image_conditioning(self, image: torch.Tensor, num_frames: int, height: int, width: int) -> ImageConditioning:
        """What the denoiser needs beside the noisy latents to start the video from ``image`` (``[H, W, 3]`` or
        ``[1, H, W, 3]`` float 0..1, fitted to ``height x width`` by :func:`prepare_image`), batch 1.

        Raises:
            DualAdapterError: a text-to-video model (this default), a bad image or video size.
        """
        raise DualAdapterError(f"model {self.name!r} ({self.family}) is a text-to-video model; a conditioning image "
                               f"needs an image-to-video model (CogVideoX-5B-I2V, CogVideoX1.5-5B-I2V, Wan 2.1 I2V, "
                               f"Wan 2.2 TI2V-5B; docs/backbones.md)")

    def training_conditioning(self, latents: torch.Tensor, denoiser: nn.Module | None = None):
        """The conditioning a trainer gives an image-to-video denoiser for a clip of clean ``latents`` (the clip's
        first frame as the image); None on text-to-video models (this default)."""
        return None

    def item_conditioning(self, latents: torch.Tensor, denoiser: nn.Module | None = None):
        """The conditioning of training items ``latents [B, F, C, h, w]`` that a trainer computes once, before its
        training loop (while the VAE is still on the accelerator), and passes as ``cond=`` to every step of those
        items: equal to :meth:`training_conditioning` where that needs more than the latents (Wan 2.1 I2V decodes the
        first frame and encodes it with the VAE and the image encoder). None (this default): nothing worth
        precomputing; the objective builds the conditioning from each step's latents itself."""
        return None

    def finish_sample(self, latents: torch.Tensor, cond: ImageConditioning | None) -> torch.Tensor:
        """The sampler's last latents made final (Wan 2.2 TI2V: the image's latent frame put back in front).
        Default: unchanged."""
        return latents

    def scheduler_step(self, scheduler, prediction: torch.Tensor, timesteps: torch.Tensor, i: int,
                       latents: torch.Tensor, state: Any = None, **kw) -> tuple[torch.Tensor, Any]:
        """One sampling step of ``scheduler`` (from :meth:`make_scheduler`) at ``timesteps[i]``.

        ``prediction``: the (guided) denoiser output, float; ``latents``: the current latents in
        :attr:`latent_layout`; ``state``: what this method returned at step ``i - 1`` (None at the first step);
        ``kw``: extra ``scheduler.step`` arguments (``generator``). Returns ``(next latents, state)``.
        Default: diffusers' ``scheduler.step(prediction, t, latents.float())``, no state.
        """
        return scheduler.step(prediction, timesteps[i], latents.float(), return_dict=False, **kw)[0], None

    # ---------------------------------------------------------------- VAE and sizes
    @property
    def default_size(self) -> tuple[int, int, int]:
        """(frames, height, width) the model was trained at."""
        raise NotImplementedError

    @property
    def vae_scale(self) -> int:
        """Spatial compression of the VAE (pixels per latent pixel, 8 on the released models)."""
        raise NotImplementedError

    @property
    def latent_channels(self) -> int:
        """Channels of a latent frame."""
        raise NotImplementedError

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames of a ``num_frames`` video."""
        raise NotImplementedError

    def latent_shape(self, batch: int, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        """Shape of the initial noise of ``batch`` videos of ``num_frames x height x width`` pixels, in
        :attr:`latent_layout`, with the time axis padded to a multiple of :meth:`time_patch` (CogVideoX 1.5:
        the sampler draws the padding frames as noise too and drops them, in front, after the last step)."""
        T = self.latent_frames(num_frames)
        T += (-T) % self.time_patch()
        s = self.vae_scale
        dims = {"B": batch, "F": T, "C": self.latent_channels, "H": height // s, "W": width // s}
        return tuple(dims[a] for a in self.latent_layout)

    def check_video_size(self, num_frames: int, height: int, width: int) -> None:
        """Raise :class:`DualAdapterError` naming the input and valid values if the size does not fit."""
        raise NotImplementedError

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """``[F, H, W, 3]`` (0..1) -> scaled latents ``[1, C, F', h, w]`` (U-Nets) in :attr:`latent_layout`."""
        raise NotImplementedError

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents in :attr:`latent_layout` -> frames ``[B, F, H, W, 3]`` (0..1)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- memory
    #: parts stay on CPU and move to :attr:`device` only while they run
    cpu_offload: bool = False

    def use(self, part: str):
        """Context manager yielding ``part`` (``"denoiser"``, ``"vae"``, ``"text_encoder"``) on the execution
        device (CPU-offload aware where the backbone offloads)."""
        return contextlib.nullcontext(getattr(self, part))

    def release(self, *parts: str) -> None:
        """Move ``parts`` (e.g. ``"vae", "text_encoder"``) to CPU to free accelerator memory."""
        for p in parts:
            m = getattr(self, p, None)
            if m is not None and self.device != "cpu":
                m.to("cpu")

    @contextlib.contextmanager
    def released(self, *parts: str, when: bool = True):
        """Within the block, ``parts`` (e.g. ``"text_encoder", "vae"``) that sit on an accelerator are moved to the
        CPU (:meth:`release`) and put back afterwards, also on an error. Nothing moves when ``when`` is false, on the
        CPU, or with :attr:`cpu_offload` (the parts are on the CPU between uses already)."""
        moved = []
        if when and getattr(self, "device", "cpu") != "cpu" and not getattr(self, "cpu_offload", False):
            for part in parts:
                m = getattr(self, part, None)
                if m is not None and next(m.parameters()).device.type != "cpu":
                    moved.append((part, next(m.parameters()).device))
            self.release(*[p for p, _ in moved])
        try:
            yield
        finally:
            for part, d in moved:
                getattr(self, part).to(d)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, kind={self.kind!r}, device={self.device!r})"
