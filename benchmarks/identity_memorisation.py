"""Identity memorisation on the ``mini``: DualReal's identity phase, an appearance LoRA and full fine-tuning,
each trained on the same few photos of one sprite with the same identity prompt, then sampled as single frames.

    python benchmarks/identity_memorisation.py [--subject checkered_circle] [--steps 1000] [--cfg 1 3 6]
        [--seeds 3] [--out-dir DIR] [--probe-every 100]

Everything goes through the public paths, from files to files: the photos are written as PNGs, DualReal is
trained with ``train-dualreal --motion-ratio 0`` (the identity phase only; the demo's other settings), the LoRA
with ``train-lora --subject`` (its appearance defaults: q, k, v, out, rank 32, lr 1e-4, 500 steps), full
fine-tuning with the shared training loop on every transformer weight (AdamW lr 1e-4, ``--steps``, saved as a
mini model folder); every sample is a ``generate --frames 1`` file (DPM, 25 steps), read back and measured.

Printed (markdown):

* the loss on the photos split by timestep quarter (the shared v-prediction objective, fixed noise and
  timesteps, 64 probes) for the base and each method; with ``--probe-every N`` also DualReal's over its run
  (every N steps, from its checkpoints);
* per method and guidance scale: the sprite's main colour (:func:`dual_adapter.miniworld.scorers.track`,
  gray background) of each sample and its RGB distance to the photos' (0..1 units; the four world
  colours are 0.9 to 1.3 apart), and the sprite area in pixels (the photos': about 100 to 190).

About 6 minutes on one CPU thread when the machine is free. docs/results/identity_phase.md quotes it.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PROMPT_TMPL = "a * {shape} on a gray background"


def sprite(frame: torch.Tensor) -> tuple[torch.Tensor | None, int]:
    """Main colour ``[3]`` (None: no sprite) and area in pixels of the sprite in one frame ``[H, W, 3]``."""
    from dual_adapter.miniworld import scorers as S
    from dual_adapter.miniworld import world as W

    tr = S.track(frame[None], background=torch.tensor(W.BACKGROUNDS["gray"]))
    area = int(tr.area[0])
    return (None if area < 3 else tr.main[0]), area


def photo_colour(photos) -> torch.Tensor:
    """Mean main colour of the photos' sprites."""
    return torch.stack([sprite(p)[0] for p in photos]).mean(0)


def write_inputs(folder: Path, subject: str, seed: int = 0) -> tuple[Path, Path, str, list]:
    """Photos (PNG) of ``subject`` and one motion clip (the CLI needs one even for ``--motion-ratio 0``)."""
    from dual_adapter import media
    from dual_adapter.miniworld import world as W

    subj = W.HELD_OUT_SUBJECTS[subject]
    photos = W.subject_photos(subject, n=4, seed=seed)
    pdir = folder / "photos"
    pdir.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(photos):
        media.save_image(p, pdir / f"{i}.png", overwrite=True)
    clip = W.motion_clips("orbit", n=1, seed=seed, exclude=subject)[0][0]
    cpath = media.write_video(clip, folder / "clip.webp", overwrite=True)
    return pdir, cpath, PROMPT_TMPL.format(shape=subj.shape), photos


def cli(*argv) -> None:
    from dual_adapter.cli import main

    rc = main([str(a) for a in argv])
    if rc:
        raise SystemExit(f"{argv[0]} failed ({rc})")


def full_finetune(photo_dir: Path, prompt: str, out: Path, steps: int, lr: float = 1e-4, seed: int = 0) -> Path:
    """Fine-tune every transformer weight of ``mini`` on the photos (1-frame videos) and ``prompt``; save a mini
    folder that ``generate --model`` loads."""
    from dual_adapter import media, sampling
    from dual_adapter.backbones import cogvideox
    from dual_adapter.models import load_model
    from dual_adapter.miniworld.model import save_mini
    from dual_adapter.training import TrainConfig, diffusion_loss, make_noise_scheduler, train_loop

    bundle = load_model("mini")
    lat = torch.cat([sampling.encode_frames(bundle, media.fit_frames(p[None], 32, 32))
                     for p in media.load_images([photo_dir])])
    emb = cogvideox.encode_prompt(bundle, prompt)
    model = copy.deepcopy(bundle.transformer).train().requires_grad_(True)
    ns = make_noise_scheduler(bundle)

    def step_fn(k, g):
        i = torch.randint(0, lat.shape[0], (1,), generator=g)
        return diffusion_loss(model, ns, lat[i], emb, generator=g), {}

    train_loop([{"params": list(model.parameters())}], step_fn,
               TrainConfig(steps=steps, lr=lr, warmup_steps=min(200, steps // 10), seed=seed,
                           gradient_checkpointing=False, checkpoint_every=0))
    bundle.transformer = model.eval().requires_grad_(False)
    return save_mini(bundle, out, info={"full_finetune": {"steps": steps, "lr": lr, "prompt": prompt}})


class Probe:
    """Loss on the photos by timestep quarter, at fixed noise and timesteps (64 probes)."""

    def __init__(self, photo_dir: Path, prompt: str):
        from dual_adapter import media, sampling
        from dual_adapter.backbones import cogvideox
        from dual_adapter.models import load_model
        from dual_adapter.training import make_noise_scheduler

        self.bundle = load_model("mini")
        lat = torch.cat([sampling.encode_frames(self.bundle, media.fit_frames(p[None], 32, 32))
                         for p in media.load_images([photo_dir])])
        self.emb = cogvideox.encode_prompt(self.bundle, prompt)
        self.ns = make_noise_scheduler(self.bundle)
        g = torch.Generator().manual_seed(0)
        n = 64
        self.noise = torch.randn((n,) + lat.shape[1:], generator=g)
        self.ts = torch.arange(n) * 1000 // n
        self.x0 = lat[torch.arange(n) % lat.shape[0]]

    @torch.no_grad()
    def __call__(self, patches=(), denoiser=None) -> list[float]:
        from dual_adapter.patches import patched_copy
        from dual_adapter.training import diffusion_loss

        m = denoiser if denoiser is not None else patched_copy(self.bundle.transformer, list(patches))
        per = diffusion_loss(m, self.ns, self.x0, self.emb, timesteps=self.ts, noise=self.noise, reduce=False)
        return [round(float(per[(self.ts >= a) & (self.ts < a + 250)].mean()), 3) for a in (0, 250, 500, 750)]


def diagnose(probe: Probe, adapters, prompt: str) -> None:
    """What the identity adapters do at training inputs and in the sampled forward: per block, the size of
    ``w_id * (A_id(n) - n)`` (the learned part of the identity adapter, weighted) relative to the sub-layer
    output it is added to (attention | feed-forward), on the photos at four timesteps (training) and at the
    first and middle steps of a cfg-6 sampling run, its negative and positive branches apart; the StageBlender
    weights there; and the base equality with ``identity_scale=0``."""
    import torch.nn.functional as F

    from dual_adapter import sampling
    from dual_adapter.backbones import cogvideox
    from dual_adapter.dualreal import DualRealPatch
    from dual_adapter.dualreal.patch import find_context
    from dual_adapter.patches import patched_copy
    from dual_adapter.backbones.cogvideox import transformer_forward
    from dual_adapter.training import diffusion_loss

    b = probe.bundle
    model = patched_copy(b.transformer, [DualRealPatch(adapters)])
    ctx, got, n1 = find_context(model), [], {}
    for i, blk in enumerate(model.transformer_blocks):
        def on_norm1(m, a, o, i=i):
            n1[i] = torch.cat([o[1], o[0]], 1)

        def on_out(kind, i=i, blk=blk):
            ad = getattr(blk.adapters, f"id_{kind}_adapter")

            def hook(m, a, o):
                n = n1[i] if kind == "attn" else a[0]
                o = torch.cat([o[1], o[0]], 1) if kind == "attn" else o
                d = ctx.alpha[:, blk.group].view(-1, 1, 1) * ad.up_linear(F.gelu(ad.down_linear(n)))
                got.append((i, kind, (d.flatten(1).norm(dim=1) / o.flatten(1).norm(dim=1)).detach()))
            return hook

        blk.norm1.register_forward_hook(on_norm1)
        blk.attn1.register_forward_hook(on_out("attn"))
        blk.ff.register_forward_hook(on_out("ff"))

    def row(which: int | None) -> str:
        cell = {}
        for i, k, r in got:
            cell.setdefault(i, {})[k] = float(r.mean() if which is None else r[which])
        return " | ".join(f"{cell[i]['attn']:.2f} / {cell[i]['ff']:.2f}" for i in sorted(cell))

    nb = len(model.transformer_blocks)
    print("\n| where | StageBlender w_id per group | " + " | ".join(f"block {i}" for i in range(nb)) + " |")
    print("|---|---|" + "---|" * nb)
    for t in (125, 375, 625, 875):
        got.clear()
        with torch.no_grad():
            diffusion_loss(model, probe.ns, probe.x0[:8], probe.emb, timesteps=torch.full((8,), t),
                           noise=probe.noise[:8])
        print(f"| training, photos, t = {t} | {[round(float(a), 3) for a in ctx.alpha.mean(0)]} | {row(None)} |")
    seen = {}

    def cb(step, total, info):
        if step in (1, 13):
            seen[step] = (list(got), ctx.alpha.clone())
        got.clear()

    neg = cogvideox.encode_prompt(b, "")
    sampling.sample(b, probe.emb, neg, num_frames=1, steps=25, cfg=6.0, seed=0, denoiser=model, callback=cb)
    for step, (g, alpha) in seen.items():
        got[:] = g
        for j, name in ((0, "negative"), (1, "positive")):
            print(f"| sampling cfg 6, step {step}/25, {name} branch | {[round(float(a), 3) for a in alpha[j]]} | "
                  f"{row(j)} |")
    off = patched_copy(b.transformer, [DualRealPatch(adapters, identity_scale=0)])
    x = probe.x0[:2] + probe.noise[:2]
    with torch.no_grad():
        diff = (transformer_forward(off, x, probe.emb.expand(2, -1, -1), probe.ts[:2] + 500)
                - transformer_forward(b.transformer, x, probe.emb.expand(2, -1, -1), probe.ts[:2] + 500)).abs().max()
    print(f"\nidentity_scale=0 vs the base model: max |difference| of the prediction {float(diff):.2e}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--subject", default="checkered_circle", help="held-out mini-world subject (checkered_circle)")
    ap.add_argument("--steps", type=int, default=1000, help="DualReal and full fine-tuning steps (1000)")
    ap.add_argument("--cfg", type=float, nargs="+", default=[1.0, 3.0, 6.0], help="guidance scales (1 3 6)")
    ap.add_argument("--seeds", type=int, default=3, help="samples per method and scale (3)")
    ap.add_argument("--probe-every", type=int, default=0, help="probe DualReal's loss every N steps (0: only at the end)")
    ap.add_argument("--out-dir", default="output/identity_memorisation", help="work folder (files are reused)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    from dual_adapter import media
    from dual_adapter.dualreal import DualRealPatch, load_adapters
    from dual_adapter.dualreal.trainer import run_paths
    from dual_adapter.lora import LoraPatch, load_lora

    d = Path(a.out_dir)
    d.mkdir(parents=True, exist_ok=True)
    pdir, clip, prompt, photos = write_inputs(d, a.subject)
    pc = photo_colour(photos)
    print(f"subject {a.subject}, prompt {prompt!r}; photos' sprite colour {[round(float(x), 3) for x in pc]}")
    dr, lo, ff = d / "dualreal.safetensors", d / "lora.safetensors", d / "full_mini"
    probe = Probe(pdir, prompt)
    curve = []
    if not dr.exists():
        files = run_paths(dr)
        every = a.probe_every or a.steps
        import dual_adapter.dualreal.trainer as T

        orig = T.save_adapters

        def spy(adapters, path, **kw):  # probe each checkpoint as it is written
            out = orig(adapters, path, **kw)
            if Path(path) == files["partial"]:
                curve.append((int(adapters.meta["steps"]), probe([DualRealPatch(adapters)])))
            return out

        T.save_adapters = spy
        try:
            cli("train-dualreal", "--model", "mini", "--subject", pdir, "--identity-prompt", prompt, "--motion", clip,
                "--motion-prompt", "a shape orbiting on a gray background", "--motion-ratio", 0, "--motion-batch", 1,
                "--steps", a.steps, "--warmup", min(200, a.steps // 10), "--checkpoint-every", every,
                "--no-gradient-checkpointing", "--out", dr)
        finally:
            T.save_adapters = orig
    if not lo.exists():
        cli("train-lora", "--model", "mini", "--subject", pdir, "--prompt", prompt, "--out", lo, "--quiet")
    if not ff.exists():
        full_finetune(pdir, prompt, ff, a.steps)

    ada = load_adapters(dr)
    from dual_adapter.models import load_model

    rows = [("base", probe()), ("DualReal identity phase", probe([DualRealPatch(ada)])),
            ("appearance LoRA", probe([LoraPatch(load_lora(lo), 1.0)])),
            ("full fine-tuning", probe(denoiser=load_model(str(ff)).transformer))]
    print("\n| loss on the photos, t in | [0, 250) | [250, 500) | [500, 750) | [750, 1000) |\n|---|---|---|---|---|")
    for name, q in rows:
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in q) + " |")
    if curve:
        print("\n| DualReal step | [0, 250) | [250, 500) | [500, 750) | [750, 1000) |\n|---|---|---|---|---|")
        for s, q in [(0, rows[0][1])] + [c for c in curve if c[0] < a.steps] + [(a.steps, rows[1][1])]:
            print(f"| {s} | " + " | ".join(f"{v:.3f}" for v in q) + " |")
        w = [json.loads(l).get("w_id") for l in (d / "dualreal.losses.jsonl").read_text().splitlines()]
        print(f"\nStageBlender identity weight (mean over groups) in training: step 1 {w[0]:.3f}, "
              f"step 100 {w[min(99, len(w) - 1)]:.3f}, last {w[-1]:.3f} (maximum 0.2)")

    diagnose(probe, ada, prompt)
    methods = [("base", []), ("DualReal identity phase", ["--dualreal", dr]), ("appearance LoRA", ["--lora", lo]),
               ("full fine-tuning", ["--model", ff])]
    print("\n| method | cfg | main colour (distance to the photos', area px) per seed | mean distance |\n|---|---|---|---|")
    summary = {}
    for name, extra in methods:
        for cfg in a.cfg:
            cells, dist = [], []
            for seed in range(a.seeds):
                f = d / f"{name.split()[0].lower()}_cfg{cfg:g}_s{seed}.webp"
                if not f.exists():
                    model = [] if "--model" in extra else ["--model", "mini"]
                    cli("generate", *model, *extra, "--prompt", prompt, "--frames", 1, "--steps", 25, "--cfg", cfg,
                        "--seed", seed, "--out", f, "--quiet")
                c, area = sprite(media.load_clip(f)[0][0])
                if c is None:
                    cells.append("no sprite")
                    dist.append(float("nan"))
                    continue
                dist.append(float((c - pc).norm()))
                cells.append(f"({c[0]:.2f}, {c[1]:.2f}, {c[2]:.2f}) {dist[-1]:.2f}, {area}")
            summary[(name, cfg)] = sum(dist) / len(dist)
            print(f"| {name} | {cfg:g} | " + " / ".join(cells) + f" | {summary[(name, cfg)]:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
