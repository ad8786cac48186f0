"""Pretraining the ``mini`` CogVideoX on held-in videos of the miniature world.

Each step draws a batch of held-in :class:`~.world.VideoSpec` (seeded by the run seed and the step,
so a resumed run replays the same batches), renders and encodes them with the VAE substitute and
trains the transformer with the shared CogVideoX objective (:func:`dual_adapter.training.diffusion_loss`,
v-prediction) through the shared loop (:func:`dual_adapter.training.train_loop`: AdamW, warm-up +
cosine schedule, grad clipping, checkpoints, resume). A fraction of the steps are batches of
single frames ("photos", 1 latent frame, captioned as still), so that the base has seen the
1-frame videos DualReal's identity phase feeds it; a fraction of captions is dropped to the empty
prompt so that classifier-free guidance works.

Files (``out`` is the model folder, ``run = out + ".run"``): ``run/partial.safetensors`` (the
transformer so far), ``run/state.safetensors`` (optimiser + schedule), ``run/losses.jsonl``;
at the end ``out/`` holds the diffusers-layout model (:func:`.model.save_mini`), ``out/loss.png``
and ``out/info.json`` (command, steps, seconds, threads).
"""
from __future__ import annotations

import json
import logging
import random
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import DualAdapterError
from . import world
from .model import build_mini, save_mini

log = logging.getLogger(__name__)

__all__ = ["PretrainConfig", "pretrain_mini", "make_batch"]


@dataclass
class PretrainConfig:
    """Settings of :func:`pretrain_mini` (defaults: the shipped ``mini``).

    Attributes:
        steps: optimiser steps. batch: videos per step. lr: peak AdamW learning rate
            (linear warm-up over ``warmup_steps`` then cosine decay to 0).
        photo_fraction: share of steps whose batch is single frames (1 latent frame).
        caption_dropout: share of captions replaced by the empty prompt (for CFG).
        seed: seeds the model init and every batch. threads: torch CPU threads (0 = leave as is).
        checkpoint_every: write ``run/partial`` + ``run/state`` every N steps.
        device: where the transformer trains (``"cpu"``, the shipped recipe; ``"cuda"`` for longer runs on a
            GPU). Batches are drawn and the noise and timesteps sampled on the CPU from the same seeds, so a
            run's data do not depend on the device (the arithmetic does, slightly).
        workers: processes that draw the batches ahead of the training step (0 = in the training process, the
            shipped recipe). Each batch depends only on ``(seed, step)``, so the data are the same for any
            number; on a GPU the drawing (about 14 ms per 8 videos on one CPU core) is what limits the speed.
        mixed_precision: ``"fp32"`` (the shipped recipe) or ``"bf16"`` autocast (meant for a GPU; on this 2-core CPU
            a step of batch 8 took 0.14 s instead of 0.154-0.16 s, about 10%).
        init: ``None`` (a fresh model from ``seed``, the shipped recipe), ``"mini"`` (the shipped model) or a
            ``mini`` folder that this command wrote: training continues from its transformer, with its text
            encoder, tokenizer and VAE (which pretraining never changes); ``seed`` then draws only the batches,
            noise and timesteps. The init model's ``info.json`` is kept in the new one's under ``"init"``.
    """

    steps: int = 10000
    batch: int = 8
    lr: float = 1e-3
    warmup_steps: int = 200
    photo_fraction: float = 0.1
    caption_dropout: float = 0.1
    seed: int = 0
    threads: int = 1
    checkpoint_every: int = 250
    device: str = "cpu"
    workers: int = 0
    mixed_precision: str = "fp32"
    init: str | None = None

    def validate(self) -> None:
        from ..backbones.base import check_device

        check_device(self.device, "device")
        if self.steps < 1 or self.batch < 1:
            raise DualAdapterError(f"steps={self.steps}, batch={self.batch}: both must be >= 1")
        if not (0 <= self.photo_fraction < 1 and 0 <= self.caption_dropout < 1):
            raise DualAdapterError("photo_fraction and caption_dropout must be in [0, 1)")
        if self.workers < 0:
            raise DualAdapterError(f"workers={self.workers}: must be >= 0 (0 = draw batches in this process)")
        if self.mixed_precision not in ("fp32", "bf16"):
            raise DualAdapterError(f"mixed_precision={self.mixed_precision!r}: expected fp32 or bf16")
        if self.warmup_steps < 0:
            raise DualAdapterError(f"warmup_steps={self.warmup_steps}: must be >= 0")
        if self.init is not None and self.init != "mini" and not (Path(self.init) / "transformer").is_dir():
            raise DualAdapterError(f"init={self.init!r}: expected 'mini' or a mini model folder that "
                                   f"'miniworld pretrain' wrote (with transformer/, vae/, text_encoder/ ...)")


def make_batch(step: int, cfg: PretrainConfig) -> tuple[torch.Tensor, list[str], list[world.VideoSpec]]:
    """The batch of step ``step``: frames ``[B, T, H, W, 3]`` (T = :data:`world.FRAMES`, or 1 on photo
    steps), captions (some dropped to ``""``) and the specs. Deterministic in ``(cfg.seed, step)``."""
    rng = random.Random(int(cfg.seed) * 1_000_003 + int(step) * 7919 + 17)
    photos = rng.random() < cfg.photo_fraction
    sampler = world.pretrain_sampler(rng.randrange(2 ** 31))
    specs, vids, caps = [], [], []
    for _ in range(cfg.batch):
        spec = next(sampler)
        if photos:
            spec = world.with_motion(spec, "still")
        v = world.render(spec, seed=rng.randrange(2 ** 31))
        vids.append(v[:1] if photos else v)
        specs.append(spec)
        caps.append("" if rng.random() < cfg.caption_dropout else world.caption(spec))
    return torch.stack(vids), caps, specs


class _StepBatches(torch.utils.data.Dataset):
    """Item ``i`` = the batch of step ``start + i`` (frames and captions; :func:`make_batch`)."""

    def __init__(self, cfg: PretrainConfig, start: int):
        self.cfg, self.start = cfg, int(start)

    def __len__(self) -> int:
        return max(0, self.cfg.steps - self.start)

    def __getitem__(self, i: int):
        frames, caps, _ = make_batch(self.start + int(i), self.cfg)
        return frames, caps


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)


class _Batches:
    """The batch of each step, drawn in the training process (``workers`` 0) or ahead of it by a DataLoader's
    worker processes, in step order. Asking for a step out of order (e.g. after a resume) restarts the loader there."""

    def __init__(self, cfg: PretrainConfig):
        self.cfg, self.it, self.next = cfg, None, None

    def __call__(self, step: int):
        if not self.cfg.workers:
            frames, caps, _ = make_batch(step, self.cfg)
            return frames, caps
        if self.it is None or step != self.next:
            loader = torch.utils.data.DataLoader(_StepBatches(self.cfg, step), batch_size=None, shuffle=False,
                                                 num_workers=self.cfg.workers, prefetch_factor=4,
                                                 worker_init_fn=_one_thread)
            self.it, self.next = iter(loader), step
        self.next += 1
        return next(self.it)


def pretrain_mini(out: str | Path, cfg: PretrainConfig | None = None, *, resume: bool = False,
                  callback: Callable[[int, int, dict], None] | None = None, command: str | None = None):
    """Pretrain ``mini`` and write it to ``out`` (a new folder; see the module docstring for files).

    Args:
        out: the model folder to write (must not exist, except with ``resume``, when only its
            ``.run`` sibling does).
        resume: continue from ``out.run/partial.safetensors`` + ``state.safetensors``.
        callback: ``callback(step, total, {"loss", "lr", ...})`` after every step.
        command: the command line recorded in ``info.json`` (default: ``sys.argv``).

    Returns:
        the trained :class:`~dual_adapter.backbones.cogvideox.CogVideoXBundle`.

    Raises:
        DualAdapterError: ``out`` exists; ``resume`` without run files; invalid settings.
    """
    from ..backbones.cogvideox import encode_prompt
    from ..io import load_safetensors, save_safetensors
    from ..plots import plot_loss_curve
    from ..sampling import encode_frames
    from ..training import TrainConfig, diffusion_loss, make_noise_scheduler, train_loop, write_loss_log
    from ..media import save_image

    cfg = cfg or PretrainConfig()
    cfg.validate()
    out = Path(out)
    run = out.with_name(out.name + ".run")
    if out.exists():
        raise DualAdapterError(f"--out {str(out)!r} exists; choose a new folder (the shipped model is replaced "
                               f"only by writing a new one and moving it)")
    state_path, partial_path, losses_path = run / "state.safetensors", run / "partial.safetensors", run / "losses.jsonl"
    if resume and not (state_path.exists() and partial_path.exists()):
        raise DualAdapterError(f"--resume: no run files in {str(run)!r} (expected partial.safetensors and "
                               f"state.safetensors)")
    if not resume and run.exists() and any(run.iterdir()):
        raise DualAdapterError(f"{str(run)!r} holds files of an earlier run; pass --resume or remove it")
    run.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))

    from ..backbones.base import check_device

    device = check_device(cfg.device, "device") or "cpu"  # "auto" / "": cpu, as load_model does for mini
    init_info = None
    if cfg.init is None:
        bundle = build_mini(seed=cfg.seed, device=device)
    else:  # continue from a trained mini: its transformer, text encoder, tokenizer and VAE
        from .model import MINI_DIR, load_mini

        init_dir = MINI_DIR if cfg.init == "mini" else Path(cfg.init)
        bundle = load_mini(init_dir, device=device)
        info_file = init_dir / "info.json"
        init_info = json.loads(info_file.read_text()) if info_file.exists() else {}
    tr = bundle.transformer
    start_losses: list = []
    prev_seconds = 0.0
    if resume:
        sd, meta = load_safetensors(partial_path)
        tr.load_state_dict(sd)
        prev_seconds = float(meta.get("seconds", 0.0))
        if losses_path.exists():
            start_losses = [json.loads(line) for line in losses_path.read_text().splitlines() if line.strip()]
    tr.train()
    tr.requires_grad_(True)
    sched = make_noise_scheduler(bundle)
    text_cache: dict[str, torch.Tensor] = {}

    def embed(caps):
        new = [c for c in dict.fromkeys(caps) if c not in text_cache]
        if new:
            e = encode_prompt(bundle, new)
            for c, x in zip(new, e):
                text_cache[c] = x
        return torch.stack([text_cache[c] for c in caps])

    batches = _Batches(cfg)

    def step_fn(step, gen):
        frames, caps = batches(step)
        z = encode_frames(bundle, frames)
        return diffusion_loss(tr, sched, z, embed(caps), generator=gen), {"frames": int(frames.shape[1])}

    t_start = time.time()

    def on_checkpoint(step, optimizer, lr_sched, losses):
        from ..training import save_train_state

        secs = prev_seconds + time.time() - t_start
        save_safetensors({k: v.detach().contiguous() for k, v in tr.state_dict().items()}, partial_path,
                         {"step": step, "seconds": secs}, overwrite=True)
        save_train_state(state_path, optimizer, lr_sched, step)
        write_loss_log(losses, losses_path)

    tcfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, warmup_steps=cfg.warmup_steps, lr_schedule="cosine",
                       optimizer="adamw", mixed_precision=cfg.mixed_precision, gradient_checkpointing=False,
                       seed=cfg.seed, checkpoint_every=cfg.checkpoint_every)
    res = train_loop([p for p in tr.parameters()], step_fn, tcfg, callback=callback,
                     device_type=torch.device(device).type,
                     on_checkpoint=on_checkpoint, resume_state=state_path if resume else None,
                     start_losses=start_losses)
    seconds = prev_seconds + res.seconds
    tr.eval()
    tr.requires_grad_(False)
    info = {
        "command": command or " ".join(shlex.quote(a) for a in ["python", "-m", "dual_adapter"] + sys.argv[1:]),
        "config": asdict(cfg),
        "steps_done": res.steps_done,
        "train_seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "final_loss_mean_last_100": sum(r["loss"] for r in res.losses[-100:]) / max(1, len(res.losses[-100:])),
        "parameters_transformer": sum(p.numel() for p in tr.parameters()),
        "torch": torch.__version__,
    }
    if init_info is not None:
        info["init"] = {"model": cfg.init, **{k: init_info[k] for k in ("command", "steps_done", "train_seconds",
                                                                         "config", "init") if k in init_info}}
    save_mini(bundle, out, info=info)
    save_image(plot_loss_curve(res.losses, title="mini pretraining loss", smooth=50)[0], out / "loss.png")
    write_loss_log(res.losses, run / "losses.jsonl")
    return bundle
