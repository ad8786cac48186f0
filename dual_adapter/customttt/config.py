"""CustomTTT's settings and results, shared by every backbone (docs/customttt.md).

:class:`TTTConfig` names every choice of the TTT merge the paper leaves open, with its default;
:class:`TTTResult` is what :func:`dual_adapter.customttt.ttt_merge` returns.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from ..errors import DualAdapterError

__all__ = ["SPACES", "REFERENCES", "REFERENCE_ALIASES", "Callback", "TTTConfig", "TTTResult"]

#: Prediction spaces in which prompt influence is measured: ``x0`` (the clean-latent estimate) or ``v`` (the
#: denoiser's own output: v on CogVideoX, epsilon on the U-Nets, the flow velocity on Wan).
SPACES = ("x0", "v")
#: What the student is trained toward in the TTT merge (see :class:`TTTConfig`); the first is the default.
REFERENCES = ("x0_pred", "z_f_renoised", "z_f_as_x0")
#: Older names still accepted: ``"z_f"`` was ``"z_f_as_x0"`` (the default before the x0 prediction).
REFERENCE_ALIASES = {"z_f": "z_f_as_x0"}

Callback = Callable[[int, int, dict], None]


@dataclass
class TTTConfig:
    """Options of the TTT merge (CustomTTT sup; every choice the paper leaves open is named here).

    Teachers (appearance teacher = base + appearance LoRA + appearance prompt; motion teacher = base +
    motion LoRA + motion prompt):
        teacher_steps: ``f``, sampler steps each teacher runs from Gaussian noise (authors: 5).
        teacher_schedule: length of the sampler schedule those ``f`` steps are taken from (authors' DDIM 25):
            the reference is the latent after the first ``f`` of ``teacher_schedule`` steps (``f ==
            teacher_schedule`` gives the fully denoised teacher sample).
        teacher_scheduler: ``"ddim"`` (authors) or ``"dpm"``.
        teacher_cfg: guidance scale of the teachers. Authors: 9 on AnimateDiff; default 6, the CogVideoX
            value (what the papers on this backbone sample with).
        negative_prompt: the teachers' CFG negative prompt (default empty).
        teacher_seed: seed of the teachers' initial noise.
        shared_teacher_noise: both teachers start from the same noise (default True: their references share
            a layout, so the student is not asked to reconcile two unrelated compositions).
        appearance_frames: video length of the appearance teacher; None = the student's (default). 1 = a
            1-frame reference, as the appearance LoRA was trained on photos.
    Student (base + both LoRAs, all LoRA weights trainable, base frozen, combined prompt):
        reference: what the loss is toward (docs/customttt.md). After ``f = 5`` of 25 DDIM steps ``z_f``
            sits at ``t_f ~ 799`` (``abar ~ 0.006``: about ``0.08 x_0 + 1.0 noise``), so it is no clean sample.
            ``"x0_pred"`` (default): the teacher's clean-latent estimate at ``z_f`` (one extra guided teacher
            call), ``x0 = sqrt(abar_f) z_f - sqrt(1 - abar_f) v``, used as ``x_0`` of the CogVideoX objective:
            each step draws ``eps`` and ``t ~ U[t_lo, t_hi)``, ``x_t = add_noise(x0, eps, t)``, loss
            ``mean(1/(1-abar_t) (x0_student - x0)^2)`` (:func:`dual_adapter.training.diffusion_loss`).
            ``"z_f_renoised"``: ``z_f`` taken as what it is, a sample at ``t_f``; each step re-noises it
            forward to ``t ~ U[max(t_f + 1, t_lo), t_hi)`` with ``q(x_t | x_{t_f})``:
            ``x_t = sqrt(abar_t/abar_f) z_f + sqrt(1 - abar_t/abar_f) eps``, and the student's deterministic
            DDIM step from ``t`` back to ``t_f`` must land on ``z_f``: ``z_hat = sqrt(abar_f) x0_student +
            sqrt(1 - abar_f) eps_student``, loss ``mean((z_hat - z_f)^2)``. ``"z_f_as_x0"``: the literal reading
            used before, ``z_f`` treated as the clean sample ``x_0`` of the standard objective (the student
            learns to output the teachers' still-noisy latents). ``"z_f"`` is accepted as its old name.
            When the teachers run the whole schedule (``f == teacher_schedule``) all three coincide.
        renoise_timesteps: ``(t_lo, t_hi)``, the range of the re-noising timestep (default ``(0, 1000)``: the
            full range of the standard objective; ``z_f_renoised`` starts above ``t_f``).
        w_appearance, w_motion: ``L = w_a L_appearance + w_m L_motion`` (authors: 1 and 1, a plain sum).
        regenerate_references: draw new teacher noise and re-run both teachers every step (default False:
            the references are computed once; True costs ``2 f`` teacher calls per step).
        dropout: LoRA dropout during TTT (default 0).
    Optimiser (the shared loop, :func:`dual_adapter.training.train_loop`):
        steps: TTT steps (authors 30). optimizer: ``"adamw"`` (default: no extra package) or ``"lion"``
            (authors: Lion lr 1e-6, betas (0.9, 0.99), weight decay 0.1; needs ``lion-pytorch``; see
            :meth:`authors`). The AdamW defaults use the usual Lion -> AdamW conversion: lr x10 (1e-5),
            weight decay /10 (1e-2). Constant learning rate, no warm-up, grad clip 1.0.
        seed: seeds the re-noising draws. gradient_checkpointing, mixed_precision: as in TrainConfig.
        checkpoint_every: with a checkpoint path, rewrite the merged LoRA every N steps (and on stop).
        eval_draws: if > 0, the combined loss is also measured on this many fixed draws before and after
            TTT (reported in ``TTTResult.eval``).
    Video size: num_frames, height, width (default the model's).
    """

    steps: int = 30
    teacher_steps: int = 5
    teacher_schedule: int = 25
    teacher_scheduler: str = "ddim"
    teacher_cfg: float = 6.0
    negative_prompt: str = ""
    teacher_seed: int = 0
    shared_teacher_noise: bool = True
    appearance_frames: int | None = None
    reference: str = "x0_pred"
    renoise_timesteps: tuple[int, int] = (0, 1000)
    w_appearance: float = 1.0
    w_motion: float = 1.0
    regenerate_references: bool = False
    dropout: float = 0.0
    optimizer: str = "adamw"
    lr: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = True
    seed: int = 0
    checkpoint_every: int = 10
    eval_draws: int = 0
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None

    @classmethod
    def authors(cls, **overrides) -> "TTTConfig":
        """The authors' setting (sup): Lion lr 1e-6, betas (0.9, 0.99), weight decay 0.1, 30 steps, DDIM 25,
        f = 5, CFG 9 (on AnimateDiff)."""
        kw = dict(optimizer="lion", lr=1e-6, betas=(0.9, 0.99), weight_decay=0.1, steps=30, teacher_steps=5,
                  teacher_schedule=25, teacher_scheduler="ddim", teacher_cfg=9.0)
        kw.update(overrides)
        return cls(**kw)

    def validate(self, num_train_timesteps: int = 1000) -> None:
        """Raise :class:`DualAdapterError` naming the first invalid field."""
        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        if not is_int(self.steps) or self.steps < 0:
            raise DualAdapterError(f"steps={self.steps!r}: must be an integer >= 0")
        if not is_int(self.teacher_schedule) or self.teacher_schedule < 1:
            raise DualAdapterError(f"teacher_schedule={self.teacher_schedule!r}: must be an integer >= 1")
        if not is_int(self.teacher_steps) or not 1 <= self.teacher_steps <= self.teacher_schedule:
            raise DualAdapterError(f"teacher_steps={self.teacher_steps!r}: must be between 1 and teacher_schedule "
                                   f"({self.teacher_schedule})")
        if self.teacher_scheduler not in ("ddim", "dpm"):
            raise DualAdapterError(f"teacher_scheduler={self.teacher_scheduler!r}: expected ddim or dpm")
        if not (isinstance(self.teacher_cfg, (int, float)) and self.teacher_cfg >= 1.0):
            raise DualAdapterError(f"teacher_cfg={self.teacher_cfg!r}: must be >= 1 (1 = no guidance)")
        self.reference = REFERENCE_ALIASES.get(self.reference, self.reference)
        if self.reference not in REFERENCES:
            raise DualAdapterError(f"reference={self.reference!r}: expected one of {REFERENCES}")
        try:
            lo, hi = (int(v) for v in self.renoise_timesteps)
        except (TypeError, ValueError):
            raise DualAdapterError(f"renoise_timesteps={self.renoise_timesteps!r}: expected (t_lo, t_hi)") from None
        if not 0 <= lo < hi <= num_train_timesteps:
            raise DualAdapterError(f"renoise_timesteps={self.renoise_timesteps!r}: need 0 <= t_lo < t_hi <= "
                                   f"{num_train_timesteps}")
        for k in ("w_appearance", "w_motion"):
            v = getattr(self, k)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise DualAdapterError(f"{k}={v!r}: must be a finite number >= 0")
        if self.w_appearance == 0 and self.w_motion == 0 and self.steps > 0:
            raise DualAdapterError("w_appearance and w_motion are both 0: nothing to train")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise DualAdapterError(f"dropout={self.dropout!r}: must be in [0, 1)")
        if self.appearance_frames is not None and (not is_int(self.appearance_frames) or self.appearance_frames < 1):
            raise DualAdapterError(f"appearance_frames={self.appearance_frames!r}: must be None or 4k+1 frames")
        if not is_int(self.eval_draws) or self.eval_draws < 0:
            raise DualAdapterError(f"eval_draws={self.eval_draws!r}: must be an integer >= 0")
        self.train_config().validate()

    def train_config(self):
        """The shared loop's :class:`~dual_adapter.training.TrainConfig` for these options."""
        from ..training import TrainConfig

        return TrainConfig(steps=int(self.steps), lr=float(self.lr), betas=tuple(self.betas),
                           weight_decay=float(self.weight_decay), optimizer=self.optimizer, lr_schedule="constant",
                           warmup_steps=0, grad_clip=float(self.grad_clip), mixed_precision=self.mixed_precision,
                           gradient_checkpointing=bool(self.gradient_checkpointing), seed=int(self.seed),
                           checkpoint_every=int(self.checkpoint_every))


@dataclass
class TTTResult:
    """What :func:`ttt_merge` returns.

    Attributes:
        lora: the merged LoRA (:class:`~dual_adapter.lora.LoraFile`, diffusers format, scale folded).
        train: the shared loop's :class:`~dual_adapter.training.TrainResult` (per-step ``loss``,
            ``loss_appearance``, ``loss_motion``).
        references: ``{"appearance": z, "motion": z}`` reference latents ``[1, F, C, h, w]`` (CPU; empty when
            ``steps == 0``), with ``reference_timestep`` the timestep ``z_f`` sits at (0 = clean).
        eval: with ``eval_draws > 0``: ``{"before": {...}, "after": {...}}`` combined / per-concept losses on
            fixed draws.
        seconds: ``{"teachers": s, "ttt": s, "total": s}`` wall time.
        student: the trained student transformer (only with ``keep_student=True``).
    """

    lora: object
    train: object
    references: dict = field(default_factory=dict)
    reference_timestep: int | None = None
    eval: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    student: object | None = None
