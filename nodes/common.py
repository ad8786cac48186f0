"""Small helpers shared by the node modules (conversions, validation, training mode)."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from dual_adapter.errors import DualAdapterError
from dual_adapter.media import check_frame_values
from dual_adapter.patches import PatchedModel


#: the pack's own ComfyUI types, declared once: a loaded video model of any backbone (a PatchedModel of a CogVideoX
#: bundle or a backbone), a LoRA of any backbone (LoraFile), a text encoding of the model's encoder
VIDEO_MODEL = "VIDEO_MODEL"
VIDEO_LORA = "VIDEO_LORA"
VIDEO_EMBEDS = "VIDEO_EMBEDS"


def as_model(model, name: str = "model", method: str | None = None) -> PatchedModel:
    """Check a VIDEO_MODEL input (any backbone, from Load Video Model); with ``method`` also that the backbone has it
    (:func:`dual_adapter.dispatch.check_method`)."""
    if not isinstance(model, PatchedModel):
        raise DualAdapterError(f"{name}: expected a VIDEO_MODEL (from Load Video Model), got {type(model).__name__}")
    if method is not None:
        from dual_adapter.dispatch import check_method

        check_method(model, method, name)
    return model


_NOTICED: set[str] = set()


def old_name_notice(old: str, new: str, title: str) -> None:
    """Log one line per process the first time a workflow uses the old node name ``old``, naming the node it now
    runs as (``new``, shown as ``title``)."""
    if old not in _NOTICED:
        _NOTICED.add(old)
        import logging

        logging.getLogger("dual_adapter.nodes").warning(
            "%s is an old node name: it runs as '%s' (%s); re-save the workflow to use the new node", old, title, new)


def image_batch(image, name: str = "image", allow_empty: bool = False) -> torch.Tensor:
    """Check an IMAGE input ``[N, H, W, 3]`` 0..1 and return a float32 clone (inputs are never mutated).
    NaN / inf values and other ranges (0..255, -1..1) are refused (:func:`dual_adapter.media.check_frame_values`)."""
    if not torch.is_tensor(image) or image.ndim != 4 or image.shape[-1] not in (3, 4):
        shape = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
        raise DualAdapterError(f"{name}: expected an IMAGE [N, H, W, 3] with values 0..1, got {shape}")
    if image.shape[0] == 0 and not allow_empty:
        raise DualAdapterError(f"{name}: the image batch is empty (0 images); connect at least one image")
    return check_frame_values(image[..., :3].detach().clone().float(), name)


@contextlib.contextmanager
def training_mode():
    """ComfyUI runs nodes under ``torch.inference_mode()``; training needs autograd back."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def unique_output(prefix: str, ext: str, what: str = "filename_prefix") -> Path:
    """A new, reserved ``output/<prefix>_NNNNN_.<ext>`` path inside the output folder (the bridge's write
    policy, docs/security.md: absolute prefixes and ``..`` are refused; write it with ``atomic_write``)."""
    from . import bridge

    return bridge.output_path(prefix, ext, what=what)


def conditioning_embeds(cond, name: str = "conditioning", bundle=None) -> torch.Tensor:
    """Core CONDITIONING (``[[cond [B, L, D], {...}], ...]``) -> text embeddings ``[B, L, D]`` (the first entry).

    Raises:
        DualAdapterError: not a CONDITIONING, or a width other than the model's text width (e.g. a CLIP-L
            conditioning on CogVideoX, which needs T5-XXL: CLIPLoader type ``cogvideox``).
    """
    import logging

    ok = isinstance(cond, (list, tuple)) and len(cond) > 0 and isinstance(cond[0], (list, tuple)) and \
        len(cond[0]) >= 1 and torch.is_tensor(cond[0][0]) and cond[0][0].ndim == 3
    if not ok:
        raise DualAdapterError(f"{name}: expected a CONDITIONING from core CLIPTextEncode, got {type(cond).__name__}")
    e = cond[0][0]
    if len(cond) > 1:
        logging.getLogger(__name__).warning("%s: %d conditioning entries; only the first is used", name, len(cond))
    if bundle is not None:
        from dual_adapter.backbones import as_backbone

        bb = as_backbone(bundle)
        cfg = bb.denoiser.config
        want = int(cfg.text_dim if bb.kind == "wan" else getattr(cfg, "text_embed_dim", None) or
                   cfg.cross_attention_dim)
        clip_type = {"wan": "wan", "cogvideox": "cogvideox"}.get(bb.kind, "stable_diffusion")
        if e.shape[-1] != want:
            raise DualAdapterError(f"{name}: text embeddings are {e.shape[-1]}-wide, this {bb.name} takes {want} "
                                   f"(load the text encoder with CLIPLoader type {clip_type!r})")
        if e.shape[1] != getattr(bb, "text_length", e.shape[1]):
            logging.getLogger(__name__).warning("%s: %d text tokens; the model was trained with %d", name,
                                                e.shape[1], bb.text_length)
    return e.detach().clone()


PREVIEW_TOOLTIP = ("Validation preview every N steps (and after the last): one short video (up to 13 frames, 10 "
                   "sampler steps, guidance 6, seed 0, so previews are comparable) sampled with the weights as they "
                   "are, shown on this node above the live loss curve and written as an animated WebP per preview "
                   "plus a contact sheet (previews.png) in a .previews folder beside the checkpoint. Each preview "
                   "costs about 20 forward passes of that short video and one VAE decode; the log reports the share "
                   "of the training time (docs/training.md has measured figures). 0 = off; -1 = auto: every 100 "
                   "steps on a real model, off on the built-in tiny / mini test models. The trained weights are the "
                   "same with or without previews.")


def preview_inputs() -> dict:
    """The optional ``preview_every`` / ``preview_prompt`` inputs every training node has."""
    return {
        "preview_every": ("INT", {"default": -1, "min": -1, "max": 100000, "tooltip": PREVIEW_TOOLTIP}),
        "preview_prompt": ("STRING", {"default": "", "multiline": False, "tooltip": "Prompt of the validation "
                           "previews. Empty = the run's prompt (Train DualReal: identity prompt, motion prompt; TTT "
                           "merge: the combined prompt)."}),
    }


def preview_options(bar, every: int, prompt: str, backbone, folder=None):
    """:class:`~dual_adapter.previews.PreviewOptions` for a node run (files in ``folder``, the run folder's
    ``previews/``; shown through ``bar.show_preview``), or None when previews are off."""
    from dual_adapter.previews import PreviewOptions, auto_every

    n = auto_every(int(every), backbone)
    if not n:
        return None
    return PreviewOptions(every=n, prompt=(prompt or "").strip() or None, folder=folder, on_preview=bar.show_preview)


NAME_TOOLTIP = ("Run name: each run gets its own folder output/runs/{method}/<name>_NNNNN_/ (a new counter per run) "
                "with config.json, the checkpoint and its state file while it trains, losses.jsonl, loss.png, "
                "previews/ and, when it finishes, the final <name>.safetensors (the checkpoint and state file are then "
                "removed). {load} lists the final file and a stopped run's checkpoint. One file name, no folders.")
RESUME_TOOLTIP = ("Continue the newest stopped run of this name (output/runs/{method}/<name>_NNNNN_/ with a "
                  "state.safetensors: weights, optimiser, schedule, step and RNG), so the result equals an "
                  "uninterrupted run's. 'steps' counts the whole run; the other settings must be the same. Off: a new "
                  "run with the next counter.")


def run_inputs(default_name: str, checkpoint_every: int = 100, method: str = "lora",
               load: str = "Load LoRA") -> dict:
    """The optional ``name`` / ``resume`` / ``checkpoint_every`` inputs of the training nodes (run folders under
    ``output/runs/<method>/``)."""
    return {
        "name": ("STRING", {"default": default_name, "tooltip": NAME_TOOLTIP.format(method=method, load=load)}),
        "resume": ("BOOLEAN", {"default": False, "tooltip": RESUME_TOOLTIP.format(method=method)}),
        "checkpoint_every": ("INT", {"default": checkpoint_every, "min": 0, "max": 100000, "tooltip": "Rewrite the "
                             "checkpoint and its state file every N steps (0 = only at the end and when the run "
                             "stops)."}),
    }


def node_settings(args: dict) -> dict:
    """A node's inputs for its run's config.json: the node's call arguments without ``self`` and the model (tensors
    and other objects are left out by :meth:`dual_adapter.runs.RunFolder.write_config`)."""
    return {k: v for k, v in args.items() if k not in ("self", "model")}


def start_run(method: str, name: str, default: str, resume: bool, settings: dict):
    """The node run's folder (:class:`dual_adapter.runs.RunFolder` under ``output/runs/<method>/``): a new one with
    the next counter, or with ``resume`` the newest stopped run of ``name``; its ``config.json`` is written
    (``settings``: the node's inputs; tensors and models are left out).

    Raises:
        DualAdapterError: a name with folders or too long; ``resume`` and no stopped run of that name.
    """
    from dual_adapter.runs import RunFolder

    from . import bridge

    run = RunFolder.start(bridge.runs_root(), method, (name or "").strip() or default, resume=bool(resume))
    run.write_config(settings, front_end="node", method=method)
    return run


@contextlib.contextmanager
def node_run(run, bar, load_node: str):
    """Hold a node's run while it trains: a run that never trained leaves no folder (:meth:`RunFolder.held`), and a
    Cancel shows where it stopped, the loss so far and how to resume (:meth:`bridge.Progress.on_cancel`; the
    stopped run keeps its checkpoint, state file, losses and plot)."""
    with run.held(), bar.on_cancel(lambda: run.kept_note(load_node), exact=run.records):
        yield run


def finish_lora_run(run, lf, losses, title: str, completed: bool = True) -> None:
    """A finished LoRA run: the LoRA saved as the run's final file (``<name>.safetensors``, fp32, the format Save
    LoRA writes), then the checkpoint and state go and the losses and plot are written
    (:meth:`dual_adapter.runs.RunFolder.finish`). A run that did not complete keeps everything, to resume."""
    if completed:
        from dual_adapter.dispatch import save_lora

        save_lora(lf, run.final)
        run.finish(losses, title)


def expert_runs(bundle, method: str, name: str, resume: bool):
    """How a training node trains ``bundle``: ``[(expert, model, run_name, resume, done)]``, one entry for a
    one-denoiser model (``expert`` None, the model itself, ``name``), one per expert on Wan 2.2 A14B (the expert's
    one-transformer model, each trained on the timesteps it serves, run name ``<name>_<expert>``: its own run folder
    and final file). With ``resume`` an expert resumes its stopped run when there is one, is ``done`` (the final file
    of its newest finished run) when there is none, else starts afresh; without, every expert starts a new run."""
    from dual_adapter.backbones import as_backbone
    from dual_adapter.runs import RunFolder

    from . import bridge

    bb = as_backbone(bundle)
    names = bb.denoiser_names()
    if len(names) < 2:
        return [(None, bundle, name, bool(resume), None)]
    out = []
    for n in names:
        run_name = f"{name}_{n}"
        runs = RunFolder.runs(bridge.runs_root(), method, run_name)
        stopped = any(r.stopped for r in runs)
        done = next((r.final for r in reversed(runs) if r.final.is_file()), None) if resume and not stopped else None
        out.append((n, bb.expert(n), run_name, bool(resume) and stopped, done))
    return out


def expert_result(halves: dict, name: str):
    """The trained weights of :func:`expert_runs`' entries: the one item, or a
    :class:`dual_adapter.experts.PerExpert` of the experts' items."""
    from dual_adapter.experts import PerExpert

    return halves[None] if None in halves else PerExpert(halves, name=name)
