"""The one place that talks to ComfyUI internals.

Every ComfyUI-only call (progress bar, interrupt check, model folders, output folder)
goes through here and degrades to a no-op / local default when ComfyUI is absent, so
node classes import and run in plain pytest.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

try:  # pragma: no cover - exercised only inside ComfyUI
    import comfy.model_management as _mm  # type: ignore
    import comfy.utils as _cu  # type: ignore
    import folder_paths as _fp  # type: ignore

    IN_COMFY = True
except Exception:  # ComfyUI absent: tests, scripts
    _mm = _cu = _fp = None
    IN_COMFY = False

from dual_adapter.errors import DualAdapterError, InterruptedByUser
from dual_adapter.paths import check_relative, is_inside, looks_absolute, read_path, write_path  # noqa: F401 (is_inside: nodes)
from dual_adapter.runs import is_run_side_file

# model folders this pack registers: name -> sub-folder of ComfyUI's models/
MODEL_FOLDERS = {"CogVideo": "CogVideo", "Wan": "Wan", "dualreal": "dualreal", "loras": "loras", "clip_vision": "clip_vision"}
_SAFETENSORS = {".safetensors"}
_DUALREAL_EXT = {".safetensors", ".pth"}


def register_folders() -> None:
    """Register ``models/CogVideo``, ``models/Wan`` (Wan diffusers folders), ``models/dualreal`` and ``models/metrics``
    with folder_paths (no-op outside ComfyUI)."""
    if not IN_COMFY:
        return
    for name, exts in (("CogVideo", set()), ("Wan", set()), ("dualreal", _DUALREAL_EXT), ("metrics", {".safetensors", ".pth"})):
        path = os.path.join(_fp.models_dir, name)
        if name in _fp.folder_names_and_paths:
            paths, old = _fp.folder_names_and_paths[name]
            if path not in paths:
                paths.append(path)
            _fp.folder_names_and_paths[name] = (paths, set(old) | exts)
        else:
            _fp.folder_names_and_paths[name] = ([path], exts)


def _local_models_dir() -> Path:
    return Path(os.environ.get("DUAL_ADAPTER_MODELS", "models"))


def folder_dirs(name: str) -> list[Path]:
    """Folders searched for model kind ``name`` (``CogVideo``, ``Wan``, ``dualreal``, ``loras``, ``clip_vision``)."""
    if IN_COMFY:
        try:
            return [Path(p) for p in _fp.get_folder_paths(name)]
        except Exception:
            return [Path(_fp.models_dir) / name]
    return [_local_models_dir() / MODEL_FOLDERS.get(name, name)]


def list_model_dirs(name: str) -> list[str]:
    """Sub-folders of every ``models/<name>`` directory (diffusers model folders)."""
    out: list[str] = []
    for d in folder_dirs(name):
        if d.is_dir():
            out += sorted(p.name for p in d.iterdir() if p.is_dir())
    return out


#: Sub-folders of ComfyUI's output folder that the pack's Save and Train nodes write weights to, per model kind: the
#: Save nodes' folders first, then the training run folders (:class:`dual_adapter.runs.RunFolder`, ``output/runs/
#: <method>/<name>_NNNNN_/``), then the folders older versions of the Train nodes wrote (still listed). The Load node
#: of that kind lists their files too, as ``output/<sub>/<name>``, after the ``models/<kind>`` ones, so whatever a
#: Save or Train node wrote can be picked in the next queue (a run's state and spatial-path files are left out).
SAVED_OUTPUTS = {"dualreal": ("dualreal", "runs/dualreal"),
                 "loras": ("loras", "runs/lora", "runs/customttt", "runs/unet", "lora_checkpoints", "unet_lora")}

#: Where the Train nodes' run folders go, inside the output folder (:func:`runs_root`).
RUNS = "runs"


def runs_root() -> Path:
    """The root of the Train nodes' run folders: ``output/runs`` (:class:`dual_adapter.runs.RunFolder`)."""
    return output_dir() / RUNS


def saved_output_dir(name: str) -> Path:
    """Where the Save node of model kind ``name`` writes in the output folder (``output/dualreal``, ...)."""
    return output_dir() / SAVED_OUTPUTS[name][0]


def list_files(name: str) -> list[str]:
    """Weight files (relative names) under every ``models/<name>`` directory, then, for the kinds of
    :data:`SAVED_OUTPUTS`, those under the output folder's sub-folders as ``output/<sub>/<name>``."""
    out: list[str] = []
    got = False
    if IN_COMFY:
        try:
            out, got = list(_fp.get_filename_list(name)), True
        except Exception:
            pass
    if not got:
        for d in folder_dirs(name):
            if d.is_dir():
                out += sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file() and p.suffix in _DUALREAL_EXT)
    for sub in SAVED_OUTPUTS.get(name, ()):
        d = output_dir() / sub
        if d.is_dir():
            out += sorted(f"output/{sub}/{p.relative_to(d).as_posix()}" for p in d.rglob("*")
                          if p.is_file() and p.suffix in _DUALREAL_EXT and not is_run_side_file(p))
    return out


def resolve(name: str, rel: str) -> Path:
    """Full path of ``rel`` inside the ``models/<name>`` folders (first match).

    Reads follow :func:`allowed_read_path`: ``rel`` must name a file or folder inside one of the
    ``models/<name>`` folders (no absolute path, no ``..`` escape, unless the documented opt-in
    ``$DUAL_ADAPTER_ALLOW_ABSOLUTE_PATHS=1`` is set).

    Raises:
        DualAdapterError: ``rel`` is not inside those folders or does not exist (one message for both).
    """
    text = str(rel).replace("\\", "/")
    for sub in SAVED_OUTPUTS.get(name, ()):  # a file a Save node wrote, as list_files names it
        if text.startswith(f"output/{sub}/"):
            return allowed_read_path(text[len(f"output/{sub}/"):], [output_dir() / sub], what=f"{name} file")
    if IN_COMFY and isinstance(rel, str) and not looks_absolute(rel):
        try:
            check_relative(rel)  # the string first: ComfyUI's lookup touches the disk
            p = _fp.get_full_path(name, rel)
        except Exception:  # refused by the string check, or ComfyUI's lookup failed: the one message below
            p = None
        if p:
            return allowed_read_path(p, list(folder_dirs(name)), what=f"{name} file")
    return allowed_read_path(rel, folder_dirs(name), what=f"{name} file")


def output_dir() -> Path:
    """ComfyUI's output folder, or ``$DUAL_ADAPTER_OUTPUT`` / ``./output`` outside ComfyUI."""
    if IN_COMFY:
        return Path(_fp.get_output_directory())
    return Path(os.environ.get("DUAL_ADAPTER_OUTPUT", "output"))


def input_dir() -> Path:
    """ComfyUI's input folder, or ``$DUAL_ADAPTER_INPUT`` / ``./input`` outside ComfyUI."""
    if IN_COMFY:
        return Path(_fp.get_input_directory())
    return Path(os.environ.get("DUAL_ADAPTER_INPUT", "input"))


PACK_ROOT = Path(__file__).resolve().parents[1]
#: The pack's shipped inputs (example photos and clip); workflows may name them as ``examples/...``.
EXAMPLES_DIR = PACK_ROOT / "examples"

# ------------------------------------------------------------------------------------------------
# Path policy (ComfyUI is a server and workflows are shared files: a workflow must not read or write
# arbitrary files on the machine). Every node reads and writes through these two functions.

#: Set to 1 to let nodes read absolute paths (and ``..``) outside ComfyUI's input / models folders.
ALLOW_ABSOLUTE_ENV = "DUAL_ADAPTER_ALLOW_ABSOLUTE_PATHS"


def _absolute_allowed() -> bool:
    return os.environ.get(ALLOW_ABSOLUTE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def allowed_read_path(path: str | os.PathLike, bases, what: str = "path") -> Path:
    """The one read policy of the pack's nodes (:func:`dual_adapter.paths.read_path`): ``path`` as a file or
    folder inside one of ``bases`` (first existing match wins). An absolute path is accepted only when it lies
    inside one of ``bases``; ``..`` is refused. With ``$DUAL_ADAPTER_ALLOW_ABSOLUTE_PATHS=1`` (an explicit
    opt-in for single-user machines) any absolute path is read as given. The string is checked before the
    disk is touched, and a path that is not allowed, too long, or missing gets the *same* error, so a
    workflow cannot probe which files exist on the server. Symlinks inside ``bases`` are followed.

    Returns:
        the existing ``Path``.

    Raises:
        DualAdapterError: not allowed, or does not exist (one message for both).
    """
    return read_path(path, bases, what, allow_absolute=_absolute_allowed(),
                     hint=f" (absolute paths elsewhere need {ALLOW_ABSOLUTE_ENV}=1)")


def output_path(prefix: str, ext: str, base: str | os.PathLike | None = None, what: str = "filename_prefix") -> Path:
    """The one write policy of the pack's nodes (:func:`dual_adapter.paths.write_path`): a new, *reserved*
    ``<base>/<prefix>_NNNNN_.<ext>`` (ComfyUI's counter; the empty file is created exclusively, so two
    processes never get the same name: write it with :func:`dual_adapter.io.atomic_write`).

    ``base`` defaults to ComfyUI's output folder. ``prefix`` may name sub-folders (``tap/guitar``) but
    must stay inside ``base``: an absolute prefix, a drive letter, ``..``, a NUL, a name over 160 bytes or
    more than 32 folders deep is refused before anything is made on disk, the way ComfyUI's
    ``folder_paths.get_save_image_path`` refuses to save outside the output folder.

    Raises:
        DualAdapterError: an empty prefix or one that breaks the rule (the message names the input).
    """
    return write_path(prefix, Path(base) if base is not None else output_dir(), ext, what)


def saved_output_path(sub: str, prefix: str, ext: str = "safetensors", what: str = "filename_prefix") -> Path:
    """A new ``output/<sub>/<prefix>_NNNNN_.<ext>`` for a Save node (``sub`` one of :data:`SAVED_OUTPUTS`' folders,
    which the matching Load node lists). A prefix that starts with ``<sub>/`` names that folder itself
    (``dualreal/x`` -> ``output/dualreal/x_NNNNN_``), as workflows wrote it when the prefix was relative to
    ``output/``.

    Raises:
        DualAdapterError: an empty prefix or one that leaves the folder (see :func:`output_path`).
    """
    text = str(prefix or "").strip().replace("\\", "/")
    if text.startswith(sub + "/"):
        text = text[len(sub) + 1:]
    return output_path(text, ext, base=output_dir() / sub, what=what)


def resolve_input(path: str | os.PathLike, what: str = "path") -> Path:
    """A user-given input path (Load Photos, Load Clip Frames, LoadImage) under the read policy:
    relative to ComfyUI's input folder; ``examples/...`` may also name the pack's shipped examples.

    Raises:
        DualAdapterError: outside those folders or missing (one message for both; see
            :func:`allowed_read_path`).
    """
    text = os.fspath(path).strip() if isinstance(path, (str, os.PathLike)) else ""
    try:
        return allowed_read_path(text, [input_dir()], what=what)
    except DualAdapterError as e:
        err = e
    rel = text.replace("\\", "/")
    if rel.startswith("examples/"):
        try:
            return allowed_read_path(rel[len("examples/"):], [EXAMPLES_DIR], what=what)
        except DualAdapterError:
            pass
    raise err


def temp_dir() -> Path:
    if IN_COMFY:
        return Path(_fp.get_temp_directory())
    return output_dir() / "temp"


def throw_if_interrupted() -> None:
    """Stop if the ComfyUI queue asked to (no-op outside ComfyUI).

    Inside ComfyUI this lets ComfyUI's own ``InterruptProcessingException`` propagate, so the run is
    reported as *interrupted* (not as an error); the library's loops catch any exception, write
    their checkpoint and re-raise it.
    """
    if IN_COMFY:
        _mm.throw_exception_if_processing_interrupted()


def progress_text(text: str) -> None:
    """Show ``text`` under the running node in ComfyUI's UI (no-op outside ComfyUI or on older versions)."""
    if not IN_COMFY:
        return
    try:
        from comfy_execution.utils import get_executing_context  # type: ignore
        from server import PromptServer  # type: ignore

        ctx = get_executing_context()
        if ctx is not None and PromptServer.instance is not None:
            PromptServer.instance.send_progress_text(text, ctx.node_id)
    except Exception:  # an older ComfyUI without progress text: the bar alone still works
        pass


class Progress:
    """A progress bar: ComfyUI's ``ProgressBar`` inside ComfyUI; outside it, the library's progress line on
    stderr while the headless runner runs (``dual_adapter.progress.console``), else nothing.

    Use as the library's ``callback``: ``cb(step, total, info)`` updates the bar, checks for interrupt, and
    when ``info`` has a ``loss`` shows the progress line (step, %, elapsed, ETA, loss) under the node
    (about 50 updates per run). While a run trains, the node's preview image is the live training view
    (:func:`dual_adapter.plots.training_view`: the latest validation preview above the loss curve, one series
    per phase), redrawn every :attr:`plot_every_s` seconds and after each preview (:meth:`show_preview`, the
    ``on_preview`` of :class:`dual_adapter.previews.PreviewOptions`).
    """

    #: seconds between redraws of the live loss curve (drawing takes about 0.1 s)
    plot_every_s = 3.0

    def __init__(self, total: int, label: str = "step"):
        import time

        from dual_adapter.progress import TextProgress, console_label

        self.total = max(int(total), 1)
        self.label = label
        self.bar = _cu.ProgressBar(self.total) if IN_COMFY else None
        self.t0 = time.time()
        lab = None if IN_COMFY else console_label()
        self.text = TextProgress(lab if label == "step" else f"{lab} {label}") if lab is not None else None
        self.losses: list[dict] = []  # the records with a loss seen so far (this queue's run)
        self.preview: tuple[int, object] | None = None  # (step, frames [F, H, W, 3]) of the latest preview
        self._drawn = 0.0

    @contextlib.contextmanager
    def on_cancel(self, kept, exact=None):
        """Context for a training call: when the queue's Cancel stops it, show under the node where it stopped,
        the loss so far and what was kept (:func:`cancel_notice`), then let the interrupt propagate.

        ``kept``: a string, or a callable returning one after the stop (e.g. the checkpoint's path and how to
        resume). ``exact``: optional callable returning the run's records (``{"step", "loss", ...}``) as written
        to disk, when they are more complete than what this bar saw (a GPU reports every few steps)."""
        try:
            yield
        except interrupt_exception_types():
            try:
                records = (exact() if exact is not None else None) or self.losses
                cancel_notice(self.label, records, self.total, kept() if callable(kept) else kept, self.bar)
            except Exception as e:  # the notice never hides the interrupt
                logging.getLogger(__name__).error("could not show the cancel notice: %s", e)
            raise

    def show_preview(self, step: int, frames) -> None:
        """A validation preview was made at ``step`` (frames ``[F, H, W, 3]``): show it with the loss curve now."""
        self.preview = (int(step), frames)
        self.draw(step)

    def draw(self, step: int) -> None:
        """Send the live training view as the node's preview image (no-op outside ComfyUI)."""
        import time

        self._drawn = time.time()
        if self.bar is None:
            return
        try:
            import numpy as np
            from PIL import Image

            from dual_adapter.plots import training_view

            st, frames = self.preview if self.preview is not None else (None, None)
            img = training_view(self.losses, frames, st, title=f"{self.label} loss")
            pil = Image.fromarray((img.clamp(0, 1).numpy() * 255).astype(np.uint8))
            self.bar.update_absolute(min(int(step), self.total), self.total, ("JPEG", pil, 768))
        except Exception as e:  # a view that cannot be drawn never stops training
            logging.getLogger(__name__).debug("no live training view: %s", e)

    def __call__(self, step: int, total: int | None = None, info: dict | None = None, preview=None) -> None:
        import time

        if info and "loss" in info:  # recorded first: a Cancel raised just below still knows this step
            self.losses.append({**info, "step": int(step)})
        throw_if_interrupted()
        if self.text is not None:
            self.text(step, total or self.total, info)
        if self.bar is not None:
            self.bar.update_absolute(min(step, self.total), total or self.total, preview)
            if info and "loss" in info and time.time() - self._drawn >= self.plot_every_s:
                self.draw(step)
            if info and "loss" in info and (step % max(1, self.total // 50) == 0 or step >= self.total):
                from dual_adapter.progress import format_progress

                tot = total or self.total
                el = time.time() - self.t0
                eta = el / step * (tot - step) if step > 0 else None
                progress_text(format_progress(self.label, step, tot, el, eta, info))


def cancel_notice(label: str, records: list[dict], total: int, kept: str, bar=None) -> str:
    """After a Cancel: ``"cancelled at step N/T (loss x); checkpoint kept: <kept>"`` under the running node (and in
    the console), with the loss curve of ``records`` (``{"step", "loss", ...}``) as the node's preview image.
    Returns the text. Outside ComfyUI only the console line is written."""
    step = int(records[-1]["step"]) if records else 0
    if records:
        text = f"cancelled at {label} {step}/{int(total)} (loss {float(records[-1]['loss']):.4f}); checkpoint kept: {kept}"
    else:
        text = f"cancelled at {label} 0/{int(total)}, before the first step: nothing was trained, no checkpoint"
    logging.getLogger(__name__).warning(text)
    progress_text(text)
    if records and bar is not None:
        try:
            import numpy as np
            from PIL import Image

            from dual_adapter.plots import plot_loss_curve

            img = plot_loss_curve(records, title=f"loss until the cancel at {label} {step}",
                                  group_by="phase" if any("phase" in r for r in records) else None,
                                  smooth=max(1, min(25, len(records) // 10)))
            pil = Image.fromarray((img[0].clamp(0, 1).numpy() * 255).astype(np.uint8))
            bar.update_absolute(min(step, int(total)), int(total), ("PNG", pil, 768))
        except Exception as e:  # ComfyUI re-checks the interrupt in its progress hook; the text is what counts
            logging.getLogger(__name__).debug("no loss-curve preview after the cancel: %s", e)
    return text


def interrupt_exception_types() -> tuple[type, ...]:
    """Exception types that mean "the user stopped the run"."""
    if IN_COMFY:
        return (InterruptedByUser, _mm.InterruptProcessingException)
    return (InterruptedByUser,)
