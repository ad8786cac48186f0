"""``--preview-every`` / ``--preview-prompt`` of the training commands (docs/training.md)."""
from __future__ import annotations

import sys


def add_preview_options(p) -> None:
    """Add the preview flags to a training command's parser."""
    p.add_argument("--preview-every", type=int, default=-1, metavar="N",
                   help="a validation video every N steps and after the last (up to 13 frames, 10 sampler steps, "
                        "guidance 6, seed 0), written to the run folder's previews/ (preview_NNNNNN.webp + "
                        "previews.png); "
                        "each costs about 20 forward passes of that short video and a VAE decode, reported as a share "
                        "of the training time. 0 = off; -1 (default) = every 100 on a real model, off on the built-in "
                        "tiny / mini models. The trained weights are the same with or without")
    p.add_argument("--preview-prompt", default=None, help="prompt of the previews (default: the run's prompt)")


def preview_options(args, backbone, folder):
    """The run's :class:`~dual_adapter.previews.PreviewOptions` (files in ``folder``, the run folder's
    ``previews/``), or None when previews are off."""
    from ..previews import PreviewOptions, auto_every

    n = auto_every(int(args.preview_every), backbone)
    if not n:
        return None
    return PreviewOptions(every=n, prompt=args.preview_prompt or None, folder=folder)


def report(args, seconds: float, train_seconds: float, folder) -> None:
    """Print what the previews cost (a share of the training time) and where they are."""
    if seconds and not getattr(args, "quiet", False):
        share = 100.0 * seconds / train_seconds if train_seconds > 0 else 0.0
        print(f"previews: {seconds:.1f} s, {share:.1f}% of the training time ({train_seconds:.1f} s); in {folder}",
              file=sys.stderr)
