"""Write the shipped mini-world example inputs (and, with ``--adapters``, the mini DualReal example adapters).

The example workflows run on the built-in pretrained ``mini`` model (9 frames x 32 x 32, docs/miniworld.md),
so their inputs are files of the mini world, loaded with the ordinary Load Photos / Load Clip
Frames nodes, exactly where a user's own photos and clips go:

* ``examples/mini/striped_star/00.png .. 03.png``: 4 photos (32 x 32 PNG) of the held-out subject
  ``striped_star`` (a yellow striped star the base never saw), drawn by
  :func:`dual_adapter.miniworld.world.subject_photos` (n 4, seed 0: the demo's photos);
* ``examples/mini/orbit/00.gif .. 02.gif``: 3 clips (9 frames, 32 x 32, 8 fps GIF) of the held-out motion
  ``orbit`` done by *other* sprites, drawn by :func:`dual_adapter.miniworld.world.motion_clips` (n 3, seed 0,
  excluding the subject's shape and colour: the demo's clips). GIF, not MP4: the sprites have few colours,
  so the 256-colour palette keeps every 8-bit pixel exactly (H.264's 4:2:0 chroma smears 32 px sprites);

``--adapters`` (run it only on the final ``mini`` weights: adapters fit one architecture) trains DualReal
on those files with the command printed below (the demo's settings: 1000 steps, lr 1e-3, 100 warm-up steps,
one clip per motion step, the ``mini`` reference encoder, train-dualreal's default on ``mini``, named explicitly)
and copies the result to
``examples/dualreal_mini_star_orbit.safetensors``, the adapters of the "load adapters + sample" workflow.

Run from the pack root::

    python examples/make_mini_examples.py            # the photos and clips (seconds)
    python examples/make_mini_examples.py --adapters # + the adapters (minutes on 2 CPU cores)

Existing files are never replaced (remove them first to remake them).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SUBJECT, MOTION, SEED = "striped_star", "orbit", 0
PHOTOS = ROOT / "examples" / "mini" / SUBJECT
CLIPS = ROOT / "examples" / "mini" / MOTION
ADAPTERS = ROOT / "examples" / "dualreal_mini_star_orbit.safetensors"


def write_inputs() -> None:
    from dual_adapter import media
    from dual_adapter.miniworld import world as W

    photos = W.subject_photos(SUBJECT, n=4, seed=SEED)
    clips, specs = W.motion_clips(MOTION, n=3, seed=SEED, exclude=SUBJECT)
    PHOTOS.mkdir(parents=True, exist_ok=True)
    CLIPS.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(photos):
        print("wrote", media.save_image(p, PHOTOS / f"{i:02d}.png").relative_to(ROOT))
    for i, (c, s) in enumerate(zip(clips, specs)):
        path = media.write_video(c, CLIPS / f"{i:02d}.gif", fps=8)
        print("wrote", path.relative_to(ROOT), f"({s.size} {s.colour} {s.texture} {s.shape})")


def adapters_command(out: Path) -> list[str]:
    """The train-dualreal command line (without ``python -m dual_adapter``) that makes the example adapters."""
    from dual_adapter.miniworld import world as W

    rel = lambda p: str(p.relative_to(ROOT))  # noqa: E731
    return ["train-dualreal", "--model", "mini", "--subject", rel(PHOTOS),
            "--identity-prompt", W.identity_prompt(SUBJECT),
            "--motion", *[rel(p) for p in sorted(CLIPS.glob("*.gif"))],
            "--motion-prompt", W.motion_prompt(MOTION), "--steps", "1000", "--lr", "1e-3", "--warmup", "100",
            "--motion-batch", "1", "--no-gradient-checkpointing", "--reference-encoder", "mini", "--seed", str(SEED),
            "--out", str(out)]


def write_adapters() -> None:
    import os

    from dual_adapter.cli import main

    if ADAPTERS.exists():
        raise SystemExit(f"{ADAPTERS.relative_to(ROOT)} exists; remove it first to remake it")
    os.chdir(ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / ADAPTERS.name
        argv = adapters_command(out)
        print("python -m dual_adapter " + " ".join(f"'{a}'" if " " in a else a for a in argv), flush=True)
        if main(argv) != 0:
            raise SystemExit("train-dualreal failed")
        shutil.copyfile(out, ADAPTERS)
    print("wrote", ADAPTERS.relative_to(ROOT))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--adapters", action="store_true", help="also train examples/dualreal_mini_star_orbit.safetensors "
                    "(on the final mini weights only)")
    args = ap.parse_args()
    if not (PHOTOS.is_dir() and CLIPS.is_dir()):
        write_inputs()
    if args.adapters:
        write_adapters()
