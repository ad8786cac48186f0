"""Safe file I/O: safetensors with metadata, atomic writes, counter-named outputs.

Rules (DEVELOPERS.md): weights are written atomically (temporary file in the same
folder, then ``os.replace``), an existing file is never overwritten unless the caller
asks for it, and weights are only ever *loaded* with safetensors.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import DualAdapterError

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "save_safetensors",
    "load_safetensors",
    "read_safetensors_metadata",
    "next_free_path",
]


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def atomic_write(path: str | os.PathLike, write_fn, overwrite: bool = False) -> Path:
    """Write a file through ``write_fn(tmp_path)`` into a temporary file beside ``path``, then rename.

    The temporary name ends with ``path``'s suffix (so writers that pick a format by extension work),
    gets the usual permissions (``0o666 & ~umask``), and is removed if ``write_fn`` fails. A reader
    never sees a half-written file.

    Raises:
        DualAdapterError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise DualAdapterError(
            f"output file {str(path)!r} already exists; choose another name or pass overwrite=True"
        )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=str(path.parent))
    os.close(fd)
    try:
        write_fn(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; writers may recreate the file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


_atomic_replace = atomic_write


def atomic_write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` via a temporary file and a rename. Returns the path."""

    def _w(tmp):
        with open(tmp, "wb") as f:
            f.write(data)

    return _atomic_replace(Path(path), _w, overwrite)


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = False) -> Path:
    """Write ``text`` (UTF-8) atomically. Returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite)


def _meta_to_str(metadata: Mapping[str, Any] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in (metadata or {}).items():
        out[str(k)] = v if isinstance(v, str) else json.dumps(v)
    return out


def save_safetensors(
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Save ``tensors`` as a safetensors file, atomically.

    Args:
        tensors: name -> tensor; tensors are made contiguous and moved to CPU.
        path: destination ``.safetensors`` file.
        metadata: str -> JSON-serialisable value; non-strings are stored JSON-encoded
            (read them back with :func:`read_safetensors_metadata`).
        overwrite: replace an existing file (default: refuse).

    Raises:
        DualAdapterError: if ``path`` exists and ``overwrite`` is False.
    """
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return _atomic_replace(Path(path), lambda tmp: save_file(cpu, tmp, metadata=_meta_to_str(metadata)), overwrite)


def _decode_meta(raw: Mapping[str, str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (raw or {}).items():
        try:
            out[k] = json.loads(v)
        except (TypeError, ValueError):
            out[k] = v
    return out


def load_safetensors(path: str | os.PathLike, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a safetensors file and its metadata.

    Returns:
        (tensors, metadata) where metadata values are JSON-decoded where possible.

    Raises:
        DualAdapterError: the file is missing, empty or not a valid safetensors file
            (the message names the file).
    """
    p = Path(path)
    if not p.is_file():
        raise DualAdapterError(f"weights file {str(p)!r} does not exist")
    if p.stat().st_size == 0:
        raise DualAdapterError(f"weights file {str(p)!r} is empty (0 bytes)")
    try:
        tensors = load_file(str(p), device=device)
        meta = read_safetensors_metadata(p)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise DualAdapterError(f"weights file {str(p)!r} is not a readable safetensors file: {e}") from None
    return tensors, meta


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Read only the header metadata of a safetensors file (JSON-decoded values)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return _decode_meta(f.metadata())
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise DualAdapterError(f"weights file {str(path)!r} is not a readable safetensors file: {e}") from None


_COUNTER = re.compile(r"^(?P<stem>.*)_(?P<n>\d{5})_$")


def next_free_path(folder: str | os.PathLike, prefix: str, ext: str) -> Path:
    """Return ``folder/prefix_NNNNN_.ext`` with the first counter not yet used (ComfyUI style).

    ``prefix`` may contain sub-folders (``"dualreal/dog"``). Never returns an existing file.
    """
    folder = Path(folder)
    sub = Path(prefix)
    target_dir = folder / sub.parent
    target_dir.mkdir(parents=True, exist_ok=True)
    stem = sub.name
    ext = ext.lstrip(".")
    n = 1
    pat = re.compile(re.escape(stem) + r"_(\d{5})_\." + re.escape(ext) + "$")
    for f in target_dir.iterdir():
        m = pat.match(f.name)
        if m:
            n = max(n, int(m.group(1)) + 1)
    while True:
        p = target_dir / f"{stem}_{n:05d}_.{ext}"
        if not p.exists():
            return p
        n += 1
