"""Validation samples while a run trains (what musubi-tuner, ai-toolkit and finetrainers call "sample prompts").

Every ``every`` steps the shared loop (:func:`dual_adapter.training.train_loop`) asks the run's
:class:`Previewer` for one short video made with the weights *as they are at that step*: the trainer binds the
denoiser it trains (a weight-sharing copy of the loaded model, so nothing is reloaded) and the previewer
samples it with a fixed prompt and seed, so successive previews differ only by what was learned. The training
stays bit-identical to a run without previews: sampling runs under ``torch.no_grad``, in eval mode (no LoRA
dropout), inside a fork of the global RNG (CPU and CUDA), from its own CPU generator; every training step draws
from its own per-step generator anyway.

Files, in the run's ``previews`` folder: ``preview_NNNNNN.webp`` (an animated WebP per preview step, NNNNNN = the
step) and ``previews.png``, a contact sheet of every preview of the run so far (one row per step, evenly spaced
frames), rewritten after each preview. The time spent sampling is reported at the end of the run as a share of
the training time (:attr:`Previewer.seconds`).

Costs (docs/training.md has the measured figures): a preview is one sampling call of ``steps`` denoising steps
(twice the forward passes with ``cfg > 1``) at ``num_frames`` frames plus one VAE decode.
"""
from __future__ import annotations

import contextlib
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from .errors import DualAdapterError, InterruptedByUser

log = logging.getLogger(__name__)

__all__ = ["PreviewOptions", "Previewer", "backbone_renderer", "contact_sheet", "preview_frames", "auto_every",
           "AUTO_EVERY"]

#: Frames a preview has at most (a short video; the model's own length when shorter).
PREVIEW_FRAMES = 13
#: Steps between previews when the front end says "auto" (-1) on a real model.
AUTO_EVERY = 100


def auto_every(every: int, backbone=None) -> int:
    """``every`` as given, or for -1 ("auto") :data:`AUTO_EVERY` on a real model and 0 (off) on the built-in test
    models (``tiny*``, ``mini*``), whose CPU runs would spend most of their time sampling.

    Raises:
        DualAdapterError: ``every`` < -1 or not an integer.
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < -1:
        raise DualAdapterError(f"preview_every={every!r}: must be an integer >= -1 (-1 = auto, 0 = off)")
    if every != -1:
        return every
    name = str(getattr(backbone, "name", "") or "")
    return 0 if name.startswith(("tiny", "mini")) else AUTO_EVERY


@dataclass
class PreviewOptions:
    """What a preview is (see the module docstring).

    Attributes:
        every: steps between previews (0 = off). A preview is also made after the last step.
        prompt: the validation prompt; ``None`` or empty = the run's prompt (DualReal: the identity prompt
            followed by the motion prompt; TTT merge: the combined prompt).
        seed: the preview's noise seed (fixed, so successive previews are comparable).
        steps: denoising steps of a preview (10; the sampler's own default is 50 on CogVideoX).
        cfg: guidance scale (6; 1 = no guidance, half the cost).
        num_frames: frames; 0 = a short video (:data:`PREVIEW_FRAMES` or the model's length if shorter, rounded
            down to a length the model takes). height, width: pixels; 0 = the run's training size.
        folder: where the files go (``None``: no files, e.g. the in-memory preview of a node without a run folder).
        on_preview: ``on_preview(step, frames)`` after each preview, frames ``[F, H, W, 3]`` float 0..1 (the node's
            progress preview).
    """

    every: int = 0
    prompt: str | None = None
    seed: int = 0
    steps: int = 10
    cfg: float = 6.0
    num_frames: int = 0
    height: int = 0
    width: int = 0
    folder: str | Path | None = None
    on_preview: Callable[[int, torch.Tensor], None] | None = None

    def validate(self) -> None:
        """Raise :class:`DualAdapterError` naming the first invalid field (``preview_every`` etc.)."""
        for k, low in (("every", 0), ("steps", 1), ("num_frames", 0), ("height", 0), ("width", 0)):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise DualAdapterError(f"preview_{k}={v!r}: must be an integer >= {low}"
                                       + (" (0 = no previews)" if k == "every" else ""))
        if isinstance(self.cfg, bool) or not isinstance(self.cfg, (int, float)) or not self.cfg == self.cfg \
                or self.cfg in (float("inf"), float("-inf")):
            raise DualAdapterError(f"preview_cfg={self.cfg!r}: must be a finite number (1 = no guidance)")

    @property
    def enabled(self) -> bool:
        return bool(self.every)


def preview_frames(backbone, num_frames: int = 0) -> int:
    """The frame count of a preview on ``backbone``: ``num_frames`` if given, else the shortest of
    :data:`PREVIEW_FRAMES` and the model's length, rounded down to ``frame_step * k + 1``."""
    if num_frames:
        return int(num_frames)
    f0 = int(backbone.default_size[0])
    step = int(backbone.frame_step()) if hasattr(backbone, "frame_step") else 1
    n = min(f0, PREVIEW_FRAMES)
    return max(1, (n - 1) // step * step + 1) if step > 1 else n


def backbone_renderer(backbone, prompt_embeds: torch.Tensor, options: PreviewOptions, *, height: int, width: int,
                      negative_embeds: torch.Tensor | None = None, scheduler: str = "ddim"):
    """``render(denoiser) -> frames [F, H, W, 3]``: sample ``denoiser`` (the trainer's weight-sharing model) with
    the backbone's sampler and decode with its VAE (moved to the execution device for the decode when the trainer
    moved it off, then back). ``prompt_embeds`` ``[1, L, D]`` are computed once, before training."""
    from .backbones import as_backbone
    from .sampling import sample

    backbone = as_backbone(backbone)
    n = preview_frames(backbone, options.num_frames)
    h, w = int(options.height or height), int(options.width or width)
    backbone.check_video_size(n, h, w)
    neg = negative_embeds
    if neg is None and options.cfg > 1:
        neg = backbone.encode_prompt("")

    def render(denoiser) -> torch.Tensor:
        lat = sample(backbone, prompt_embeds, neg, num_frames=n, height=h, width=w, steps=int(options.steps),
                     cfg=float(options.cfg), seed=int(options.seed), scheduler=scheduler, denoiser=denoiser)
        vae = getattr(backbone, "vae", None)
        moved = None
        if vae is not None and str(backbone.device) != "cpu" and not getattr(backbone, "cpu_offload", False):
            moved = next(vae.parameters()).device
            vae.to(backbone.device)
        try:
            return backbone.decode_latents(lat)[0].float().cpu()
        finally:
            if moved is not None and moved != next(vae.parameters()).device:
                vae.to(moved)

    return render


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module):
    """Every sub-module in eval mode (no dropout) for the block; each one's own mode is restored after."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, t in modes:
            m.training = t


_NAME = re.compile(r"preview_(\d{6})\.webp$")


def contact_sheet(rows: Sequence[tuple[int, torch.Tensor]], columns: int = 6, tile: int = 128) -> torch.Tensor:
    """One image of previews: a row per ``(step, frames [F, H, W, 3])``, ``columns`` evenly spaced frames each
    (tile height ``tile`` px, aspect kept), the step written at the left. Returns ``[H, W, 3]`` float 0..1."""
    import numpy as np
    from PIL import Image, ImageDraw

    label_w, gap = 72, 4
    strips = []
    for step, frames in rows:
        T = frames.shape[0]
        idx = [round(i * (T - 1) / max(1, columns - 1)) for i in range(min(columns, T))]
        h, w = frames.shape[1:3]
        tw = max(1, round(w * tile / h))
        row = Image.new("RGB", (label_w + len(idx) * (tw + gap), tile + gap), "white")
        for j, i in enumerate(idx):
            arr = (frames[i].clamp(0, 1).numpy() * 255).round().astype(np.uint8)
            im = Image.fromarray(arr).resize((tw, tile), Image.NEAREST if tile >= h else Image.BILINEAR)
            row.paste(im, (label_w + j * (tw + gap), gap // 2))
        ImageDraw.Draw(row).text((4, tile // 2 - 6), f"step {step}", fill="black")
        strips.append(row)
    W = max(s.width for s in strips)
    sheet = Image.new("RGB", (W, sum(s.height for s in strips)), "white")
    y = 0
    for s in strips:
        sheet.paste(s, (0, y))
        y += s.height
    return torch.from_numpy(np.asarray(sheet, dtype=np.float32) / 255.0)


def _read_webp(path: Path) -> torch.Tensor:
    import numpy as np
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        frames = [np.asarray(f.convert("RGB"), dtype=np.float32) / 255.0 for f in ImageSequence.Iterator(im)]
    return torch.from_numpy(np.stack(frames))


class Previewer:
    """The preview hook of :func:`dual_adapter.training.train_loop` (see the module docstring).

    Args:
        options: :class:`PreviewOptions` (``every`` > 0).
        render: ``render(denoiser) -> frames [F, H, W, 3]`` (e.g. :func:`backbone_renderer`).
        fps: frame rate of the WebP files (8, CogVideoX's).

    The trainer calls :meth:`bind` with the denoiser it trains (and, optionally, a context manager factory that
    puts it in its inference configuration, e.g. the spatial LoRA path off); the loop calls :meth:`due` and
    :meth:`__call__`.
    """

    def __init__(self, options: PreviewOptions, render: Callable[[torch.nn.Module], torch.Tensor], fps: float = 8.0):
        options.validate()
        self.options = options
        self.render = render
        self.fps = float(fps)
        self.denoiser: torch.nn.Module | None = None
        self.around: Callable[[], contextlib.AbstractContextManager] | None = None
        self.seconds = 0.0
        self.count = 0
        self.files: list[Path] = []
        self.folder = Path(options.folder) if options.folder is not None else None

    def bind(self, denoiser: torch.nn.Module, around: Callable[[], contextlib.AbstractContextManager] | None = None):
        """The model to sample (the trainer's weight-sharing copy, its trainable weights live)."""
        self.denoiser, self.around = denoiser, around
        return self

    def due(self, step: int, total: int) -> bool:
        """True after every ``every``-th step and after the last one."""
        every = int(self.options.every)
        return every > 0 and (step % every == 0 or step == total)

    def forget_after(self, step: int) -> None:
        """On resume: remove the files of previews after ``step`` (they belong to the steps about to be redone)."""
        if self.folder is None or not self.folder.is_dir():
            return
        for p in self.folder.iterdir():
            m = _NAME.match(p.name)
            if m and int(m.group(1)) > step:
                p.unlink()

    def __call__(self, step: int) -> torch.Tensor | None:
        """Sample one preview at ``step`` (no gradient, eval mode, forked RNG), write its files, call
        ``on_preview``. A sampling failure (e.g. non-finite latents) is logged and the run goes on; an
        interrupt propagates. Returns the frames, or None when it failed."""
        if self.denoiser is None:
            raise DualAdapterError("Previewer: the trainer did not bind its denoiser")
        t0 = time.time()
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad(), _eval_mode(self.denoiser), \
                    (self.around() if self.around is not None else contextlib.nullcontext()):
                frames = self.render(self.denoiser)
        except (InterruptedByUser, KeyboardInterrupt):
            raise
        except Exception as e:  # a preview never ends a run
            if type(e).__name__ == "InterruptProcessingException":
                raise
            log.warning("preview at step %d failed (training goes on): %s", step, e)
            self.seconds += time.time() - t0
            return None
        self.count += 1
        if self.folder is not None:
            self._write(step, frames)
        self.seconds += time.time() - t0
        if self.options.on_preview is not None:
            self.options.on_preview(int(step), frames)
        return frames

    def _write(self, step: int, frames: torch.Tensor) -> None:
        from .media import save_image, write_video

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"preview_{int(step):06d}.webp"
        write_video(frames, path, fps=self.fps, overwrite=True)
        self.files.append(path)
        rows = []
        for p in sorted(self.folder.iterdir()):
            m = _NAME.match(p.name)
            if m:
                rows.append((int(m.group(1)), frames if p == path else _read_webp(p)))
        save_image(contact_sheet(rows), self.folder / "previews.png", overwrite=True)

    def report(self, train_seconds: float) -> str:
        """``"previews: N samples, X s (Y% of the training time)"`` (logged by the loop at the end)."""
        share = 100.0 * self.seconds / train_seconds if train_seconds > 0 else 0.0
        return f"previews: {self.count} samples, {self.seconds:.1f} s ({share:.1f}% of the training time)"
