"""The one place that talks to ComfyUI internals.

Every ComfyUI-only call (progress bar, interrupt check, model folders, output folder)
goes through here and degrades to a no-op / local default when ComfyUI is absent, so
node classes import and run in plain pytest.
"""
from __future__ import annotations

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

from dual_adapter.errors import InterruptedByUser

# model folders this pack registers: name -> sub-folder of ComfyUI's models/
MODEL_FOLDERS = {"CogVideo": "CogVideo", "dualreal": "dualreal", "loras": "loras", "clip_vision": "clip_vision"}
_SAFETENSORS = {".safetensors"}
_DUALREAL_EXT = {".safetensors", ".pth"}


def register_folders() -> None:
    """Register ``models/CogVideo``, ``models/dualreal`` and ``models/metrics`` with folder_paths (no-op outside ComfyUI)."""
    if not IN_COMFY:
        return
    for name, exts in (("CogVideo", set()), ("dualreal", _DUALREAL_EXT), ("metrics", {".safetensors", ".pth"})):
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
    """Folders searched for model kind ``name`` (``CogVideo``, ``dualreal``, ``loras``, ``clip_vision``)."""
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


def list_files(name: str) -> list[str]:
    """Weight files (relative names) under every ``models/<name>`` directory."""
    if IN_COMFY:
        try:
            return list(_fp.get_filename_list(name))
        except Exception:
            pass
    out: list[str] = []
    for d in folder_dirs(name):
        if d.is_dir():
            out += sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file() and p.suffix in _DUALREAL_EXT)
    return out


def resolve(name: str, rel: str) -> Path:
    """Full path of ``rel`` inside the ``models/<name>`` folders (first match), or ``rel`` itself."""
    if IN_COMFY:
        try:
            p = _fp.get_full_path(name, rel)
            if p:
                return Path(p)
        except Exception:
            pass
    for d in folder_dirs(name):
        if (d / rel).exists():
            return d / rel
    return Path(rel)


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


def resolve_input(path: str | os.PathLike) -> Path:
    """Find a user-given input path: as given if absolute or existing, else inside ComfyUI's input
    folder, else inside the pack (so workflows can name the shipped ``examples/...``)."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    for base in (input_dir(), PACK_ROOT):
        if (base / p).exists():
            return base / p
    return p


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
    (about 50 updates per run).
    """

    def __init__(self, total: int, label: str = "step"):
        import time

        from dual_adapter.progress import TextProgress, console_label

        self.total = max(int(total), 1)
        self.label = label
        self.bar = _cu.ProgressBar(self.total) if IN_COMFY else None
        self.t0 = time.time()
        lab = None if IN_COMFY else console_label()
        self.text = TextProgress(lab if label == "step" else f"{lab} {label}") if lab is not None else None

    def __call__(self, step: int, total: int | None = None, info: dict | None = None, preview=None) -> None:
        throw_if_interrupted()
        if self.text is not None:
            self.text(step, total or self.total, info)
        if self.bar is not None:
            self.bar.update_absolute(min(step, self.total), total or self.total, preview)
            if info and "loss" in info and (step % max(1, self.total // 50) == 0 or step >= self.total):
                import time

                from dual_adapter.progress import format_progress

                tot = total or self.total
                el = time.time() - self.t0
                eta = el / step * (tot - step) if step > 0 else None
                progress_text(format_progress(self.label, step, tot, el, eta, info))


def interrupt_exception_types() -> tuple[type, ...]:
    """Exception types that mean "the user stopped the run"."""
    if IN_COMFY:
        return (InterruptedByUser, _mm.InterruptProcessingException)
    return (InterruptedByUser,)
