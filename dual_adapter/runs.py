"""One folder per training run, the same for the ComfyUI nodes and the commands (docs/training.md, "Run folders").

A run of method ``M`` (``dualreal``, ``lora``, ``customttt``, ``unet``) named ``N`` lives in
``<root>/M/N_NNNNN_/`` (a new counter per run; ``<root>`` is ``output/runs`` for the nodes, and ``runs/`` beside
``--out`` or ``--run-dir`` for the commands)::

    config.json              the run's settings (front end, inputs, where the final file goes), written at the start
    checkpoint.safetensors   the weights at the last checkpoint (loadable like the final file)
    state.safetensors        optimiser, schedule, step and RNG state: what a resume reads
    spatial.safetensors      MotionDirector's spatial-path LoRA at the last checkpoint (spatial path on)
    losses.jsonl             one JSON record per step
    loss.png                 the loss curve
    previews/                validation previews (preview_NNNNNN.webp, previews.png)
    N.safetensors            the final weights (the commands write them to --out instead)

A finished run keeps ``config.json``, ``losses.jsonl``, ``loss.png``, ``previews/`` and the final file: its
checkpoint, state and spatial files are removed once the final file is written. A stopped run (Cancel, Ctrl-C,
SIGTERM, an error) keeps them all; ``resume`` continues the newest stopped run of a name.

The folder name is reserved atomically (:func:`dual_adapter.io.next_free_dir`: ``mkdir`` succeeds for one process
only), so two runs queued at once never share a folder.
"""
from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import DualAdapterError

__all__ = ["RunFolder", "METHODS", "side_file", "is_run_side_file"]

#: The methods a run folder is made for (the folder under the runs root).
METHODS = ("dualreal", "lora", "customttt", "unet")

_CHECKPOINT = "checkpoint.safetensors"
_SIDE = {"state": "state.safetensors", "spatial": "spatial.safetensors"}


def side_file(checkpoint: str | Path, kind: str) -> Path:
    """The ``kind`` file (``"state"`` or ``"spatial"``) written with the checkpoint ``checkpoint``: in a run folder
    (a checkpoint named ``checkpoint.safetensors``) ``state.safetensors`` / ``spatial.safetensors`` beside it, else
    ``<stem>.<kind>.safetensors`` beside it (the names of runs written outside a run folder)."""
    checkpoint = Path(checkpoint)
    if checkpoint.name == _CHECKPOINT:
        return checkpoint.with_name(_SIDE[kind])
    return checkpoint.with_name(f"{checkpoint.stem}.{kind}.safetensors")


def is_run_side_file(path: str | Path) -> bool:
    """Whether ``path`` is a run's optimiser state or spatial-path file (not weights to load for inference)."""
    name = Path(path).name
    return name in _SIDE.values() or name.endswith((".state.safetensors", ".spatial.safetensors"))


@dataclass(frozen=True)
class RunFolder:
    """A run's folder (see the module docstring).

    Attributes:
        path: the folder, ``<root>/<method>/<name>_NNNNN_``.
        name: the run name (the folder's name without its counter).
        final: where the finished weights go (default ``path/<name>.safetensors``; the commands' ``--out``).
    """

    path: Path
    name: str
    final: Path

    # ---------------------------------------------------------------- files

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def checkpoint(self) -> Path:
        return self.path / _CHECKPOINT

    @property
    def state(self) -> Path:
        return side_file(self.checkpoint, "state")

    @property
    def spatial(self) -> Path:
        return side_file(self.checkpoint, "spatial")

    @property
    def losses(self) -> Path:
        return self.path / "losses.jsonl"

    @property
    def plot(self) -> Path:
        return self.path / "loss.png"

    @property
    def previews(self) -> Path:
        return self.path / "previews"

    def files(self) -> dict[str, Path]:
        """The files a stopped run keeps and a new run must not find (for
        :func:`dual_adapter.training.check_run_files`): ``checkpoint``, ``state``, ``spatial``, ``losses``."""
        return {"checkpoint": self.checkpoint, "state": self.state, "spatial": self.spatial, "losses": self.losses}

    @property
    def stopped(self) -> bool:
        """The run stopped before its end and can be resumed (its state file is there)."""
        return self.state.is_file()

    # ---------------------------------------------------------------- finding and starting runs

    @staticmethod
    def _runs_of(base: Path, name: str) -> list[tuple[int, Path]]:
        pat = re.compile(re.escape(name) + r"_(\d{5,})_$")
        if not base.is_dir():
            return []
        return sorted((int(m.group(1)), p) for p in base.iterdir() if p.is_dir() and (m := pat.match(p.name)))

    @classmethod
    def runs(cls, root: str | Path, method: str, name: str, final: str | Path | None = None) -> list["RunFolder"]:
        """The existing runs of ``name`` under ``root/method``, oldest (lowest counter) first."""
        return [cls(p, name, Path(final) if final is not None else p / f"{name}.safetensors")
                for _, p in cls._runs_of(Path(root) / method, name)]

    @classmethod
    def start(cls, root: str | Path, method: str, name: str, *, resume: bool, final: str | Path | None = None,
              what: str = "name", resume_hint: str = "resume = true") -> "RunFolder":
        """The folder of a new run of ``name`` (reserved: created with the next counter), or with ``resume`` the
        newest stopped run of ``name`` (highest counter with a state file).

        Args:
            root: the runs root (``output/runs`` for the nodes). method: one of :data:`METHODS`.
            name: the run name: one file name, no folders, at most :data:`dual_adapter.paths.MAX_STEM_BYTES`
                bytes (checked before the disk is touched).
            final: where the finished weights go (default inside the folder, ``<name>.safetensors``).
            what / resume_hint: how the front end names the name input and the resume switch (for messages).

        Raises:
            DualAdapterError: an unknown method; ``name`` breaks the path rule
                (:func:`dual_adapter.paths.check_relative`); ``resume`` and no stopped run of that name; the folder
                cannot be made.
        """
        from .io import next_free_dir
        from .paths import MAX_STEM_BYTES, check_relative

        if method not in METHODS:
            raise DualAdapterError(f"run folder: unknown method {method!r}; expected one of {METHODS}")
        name = check_relative(name, what, stem_bytes=MAX_STEM_BYTES, max_depth=1).as_posix()
        if resume:
            for run in reversed(cls.runs(root, method, name, final)):
                if run.stopped:
                    return run
            raise DualAdapterError(f"nothing to resume: no stopped run named {name!r} to continue in "
                                   f"{str(Path(root) / method)!r} (no {name}_NNNNN_/state.safetensors); start without "
                                   f"{resume_hint}")
        try:
            path = next_free_dir(Path(root) / method, name)
        except OSError as e:
            raise DualAdapterError(f"cannot make the run folder for {what} {name!r} in {str(Path(root) / method)!r}: "
                                   f"{e.strerror or e}") from None
        return cls(path, name, Path(final) if final is not None else path / f"{name}.safetensors")

    # ---------------------------------------------------------------- writing

    def write_config(self, settings: Mapping[str, Any], *, front_end: str, method: str) -> Path:
        """Write ``config.json``: ``settings`` (JSON-able values only; tensors and other objects are left out), the
        front end (``"node"`` / the command), the method, where the final file goes and when the run started. A
        resumed run keeps its first config and adds the time and settings of each resume under ``"resumed"``."""
        from .io import atomic_write_text

        clean = {str(k): v for k, v in settings.items() if _jsonable(v)}
        now = time.strftime("%Y-%m-%d %H:%M:%S")
        old = self.read_config()
        if old:
            old.setdefault("resumed", []).append({"at": now, "settings": clean})
            data = old
        else:
            data = {"method": method, "name": self.name, "front_end": front_end, "started": now,
                    "final": str(self.final), "settings": clean}
        return atomic_write_text(self.config, json.dumps(data, indent=1, default=str) + "\n", overwrite=True)

    def read_config(self) -> dict:
        """The run's ``config.json`` (empty when there is none or it cannot be read)."""
        try:
            return json.loads(self.config.read_text())
        except (OSError, ValueError):
            return {}

    def write_losses(self, losses: Sequence[dict], title: str = "training loss") -> None:
        """Write ``losses.jsonl`` and ``loss.png`` (one series per phase / term when the records have one)."""
        from .media import save_image
        from .plots import plot_loss_curve
        from .training import write_loss_log

        records = [r for r in losses if "loss" in r]
        write_loss_log(records, self.losses)
        if records:
            group = next((k for k in ("phase", "term") if any(k in r for r in records)), None)
            img = plot_loss_curve(records, title=title, group_by=group, smooth=max(1, min(25, len(records) // 10)))
            save_image(img[0], self.plot, overwrite=True)

    def records(self) -> list[dict]:
        """The run's per-step records so far: from its state file (the LoRA trainers keep them there), else from
        ``losses.jsonl``; empty when there are none."""
        from .io import read_safetensors_metadata

        if self.state.is_file():
            with contextlib.suppress(Exception):
                got = (read_safetensors_metadata(self.state).get("extra") or {}).get("losses")
                if got:
                    return [r for r in got if "loss" in r]
        try:
            lines = self.losses.read_text().splitlines()
        except OSError:
            return []
        return [r for r in (json.loads(line) for line in lines if line.strip()) if "loss" in r]

    def finish(self, losses: Sequence[dict] | None = None, title: str = "training loss") -> None:
        """After the final file is written: write the losses and their plot (when given), then remove the
        checkpoint, state and spatial files (in that order, so a failure keeps the checkpoint)."""
        if not self.final.is_file() or self.final.stat().st_size == 0:
            raise DualAdapterError(f"run {str(self.path)!r}: the final file {str(self.final)!r} is not written yet; "
                                   f"its checkpoint is kept")
        if losses is not None:
            self.write_losses(losses, title)
        for p in (self.checkpoint, self.spatial, self.state):
            p.unlink(missing_ok=True)

    def kept_note(self, load_node: str, name_input: str = "name") -> str:
        """What a stopped run keeps and how to continue it (the node's Cancel notice); writes the losses so far and
        their plot into the folder first."""
        with contextlib.suppress(Exception):  # the notice never fails for want of a plot
            self.write_losses(self.records())
        what = self.checkpoint.name if self.checkpoint.is_file() else self.state.name
        return (f"{what} in {self.path} ({load_node} lists it); continue with resume = true, {name_input} "
                f"{self.name!r} and steps above the step reached")

    @contextlib.contextmanager
    def held(self):
        """Hold a run's folder while the run goes: if it ends (refused, failed) before writing a checkpoint, a
        state file, its losses or a final file inside the folder, the folder is removed again, so a run that never
        trained leaves nothing behind."""
        try:
            yield self
        finally:
            inside = self.final if self.final.parent == self.path else self.checkpoint
            if self.path.is_dir() and not any(p.exists() for p in (self.checkpoint, self.state, self.losses, inside)):
                shutil.rmtree(self.path, ignore_errors=True)


def _jsonable(v) -> bool:
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_jsonable(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _jsonable(x) for k, x in v.items())
    return False
