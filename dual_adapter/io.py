"""Safe file I/O: safetensors with metadata, atomic writes, counter-named outputs, run locks.

Names are reserved atomically: :func:`reserve_path` creates the empty file with ``O_CREAT | O_EXCL``,
which succeeds for exactly one process; :func:`next_free_path` picks counter names that way, and
:func:`atomic_write` then replaces this process's own reservation (and claims a name the same way when it
is not reserved yet), so two processes saving under one name never overwrite each other.

Rules (DEVELOPERS.md): weights are written atomically (temporary file in the same
folder, then ``os.replace``), an existing file is never overwritten unless the caller
asks for it, and weights are only ever *loaded* with safetensors.

Temporary files are named ``.<stem>.pid<PID>.<random>.tmp<suffix>``: a write killed before its
rename (SIGKILL, power loss) leaves one behind, and the next atomic write of the same file
removes those whose process is gone (:func:`clean_stale_temps`). :func:`run_lock` keeps two
processes from writing the same run's files at once.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import tempfile
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import DiskFull, DualAdapterError

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "save_safetensors",
    "load_safetensors",
    "read_safetensors_metadata",
    "next_free_path",
    "next_free_dir",
    "reserve_path",
    "is_own_reservation",
    "release_reservation",
    "reservation",
    "clean_stale_temps",
    "run_lock",
    "lock_path",
]


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (unknown counts as alive: never delete what may be in use)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True


def _temp_pattern(path: Path) -> re.Pattern:
    return re.compile("^" + re.escape(f".{path.stem}.pid") + r"(\d+)\.[A-Za-z0-9_]+" + re.escape(f".tmp{path.suffix}") + "$")


def clean_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove temporary files that atomic writes of ``path`` left behind when their process was killed.

    Only files named like :func:`atomic_write`'s temporaries of this very ``path`` whose writer process
    no longer runs are removed (a write in progress in another live process is never touched).
    Returns the files removed.
    """
    path = Path(path)
    removed: list[Path] = []
    if not path.parent.is_dir():
        return removed
    pat = _temp_pattern(path)
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for f in entries:
        m = pat.match(f.name)
        if m and not _pid_alive(int(m.group(1))):
            try:
                f.unlink()
                removed.append(f)
            except OSError:
                pass
    return removed


def atomic_write(path: str | os.PathLike, write_fn, overwrite: bool = False) -> Path:
    """Write a file through ``write_fn(tmp_path)`` into a temporary file beside ``path``, then rename.

    The temporary name (``.<stem>.pid<PID>.<random>.tmp<suffix>``) ends with ``path``'s suffix (so
    writers that pick a format by extension work), gets the usual permissions (``0o666 & ~umask``),
    and is removed if ``write_fn`` fails. A reader never sees a half-written file. Temporaries of the
    same ``path`` left by killed processes are removed first (:func:`clean_stale_temps`).

    Without ``overwrite`` the name is claimed before writing: this process's own reservation
    (:func:`reserve_path`, :func:`next_free_path`) is replaced; otherwise the empty file is created
    exclusively first (so another process cannot take the name meanwhile). If the write fails, the
    reservation is removed again.

    Raises:
        DualAdapterError: ``path`` exists (and is not this process's reservation) and ``overwrite`` is
            False, or its folder cannot be made.
        DiskFull: the disk or quota is full (``ENOSPC`` / ``EDQUOT``, also as safetensors reports it); the
            previous file at ``path``, if any, is left as it was.
    """
    path = Path(path)
    _mkdir(path.parent, str(path))
    if not overwrite and not is_own_reservation(path) and not reserve_path(path):
        raise DualAdapterError(
            f"output file {str(path)!r} already exists; choose another name (existing files are never replaced)"
        )
    clean_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.pid{os.getpid()}.", suffix=f".tmp{path.suffix}",
                               dir=str(path.parent))
    os.close(fd)
    try:
        write_fn(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; writers may recreate the file
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        release_reservation(path)
        if _is_disk_full(e):
            raise DiskFull(f"disk full while writing {str(path)!r} (no space left on the device, or over the quota); "
                           f"the previous version of the file, if any, is kept", str(path)) from None
        raise
    _forget_reservation(path)
    return path


def _is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` says the disk or quota is full: an ``OSError`` with ``ENOSPC`` / ``EDQUOT``, or
    safetensors' ``SafetensorError`` wrapping one (it reports the OS error in its message only)."""
    import errno

    codes = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
    if isinstance(e, OSError):
        return e.errno in codes
    if isinstance(e, SafetensorError):
        return any(f"os error {c})" in str(e) for c in codes) or "No space left" in str(e)
    return False


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


# --------------------------------------------------------------------------------------------
# name reservation

_RESERVED: set[str] = set()
_RESERVED_GUARD = threading.Lock()


def _key(path: str | os.PathLike) -> str:
    return os.path.abspath(path)


def _mkdir(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as e:
        raise DualAdapterError(f"cannot make the folder {str(folder)!r} for {what}: "
                               f"{getattr(e, 'strerror', None) or e}") from None


def reserve_path(path: str | os.PathLike) -> bool:
    """Reserve the name ``path`` by creating it empty with ``O_CREAT | O_EXCL`` (atomic: exactly one process
    succeeds, on local file systems and NFSv3+).

    Returns:
        True if this process now owns the name (write it with :func:`atomic_write`, which replaces the
        empty file), False if the name is taken.
    """
    try:
        fd = os.open(str(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        return False
    os.close(fd)
    with _RESERVED_GUARD:
        _RESERVED.add(_key(path))
    return True


def is_own_reservation(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an empty file this process reserved (:func:`reserve_path`) and has not written yet."""
    with _RESERVED_GUARD:
        if _key(path) not in _RESERVED:
            return False
    try:
        return os.stat(path).st_size == 0
    except OSError:
        return False


def _forget_reservation(path: str | os.PathLike) -> None:
    with _RESERVED_GUARD:
        _RESERVED.discard(_key(path))


def release_reservation(path: str | os.PathLike) -> None:
    """Give back a name this process reserved and never wrote (its empty file is removed). No-op otherwise."""
    if is_own_reservation(path):
        with contextlib.suppress(OSError):
            os.unlink(path)
    _forget_reservation(path)


@contextlib.contextmanager
def reservation(path: str | os.PathLike | None):
    """Hold a reserved name while work that may write it runs; on the way out (finished, failed or stopped)
    a reservation that was never written is released, so no empty file stays behind. ``None``: no-op."""
    try:
        yield path
    finally:
        if path is not None:
            release_reservation(path)


def next_free_path(folder: str | os.PathLike, prefix: str, ext: str, what: str = "output") -> Path:
    """Reserve and return ``folder/prefix_NNNNN_.ext``, the first counter after every file named
    ``prefix_NNNNN_.<anything>`` (ComfyUI style: one counter per name whatever the extension).

    ``prefix`` may contain sub-folders (``"dualreal/dog"``); they are made. The name is reserved by
    creating the empty file exclusively (:func:`reserve_path`), so two processes never get the same one;
    write it with :func:`atomic_write` (any ``overwrite``), or give it back with
    :func:`release_reservation`. This function trusts ``prefix``: names from a workflow go through
    :func:`dual_adapter.paths.write_path` first.

    Raises:
        DualAdapterError: the folder cannot be made or read (names ``what``).
    """
    folder = Path(folder)
    sub = PurePosixPath(prefix)
    target_dir = folder / sub.parent
    _mkdir(target_dir, what)
    stem = sub.name
    ext = ext.lstrip(".")
    pat = re.compile(re.escape(stem) + r"_(\d{5,})_\.")
    try:
        used = [int(m.group(1)) for f in os.listdir(target_dir) if (m := pat.match(f))]
    except OSError as e:
        raise DualAdapterError(f"cannot read the folder {str(target_dir)!r} for {what}: {e.strerror}") from None
    n = max(used, default=0) + 1
    while True:
        p = target_dir / f"{stem}_{n:05d}_.{ext}"
        try:
            if reserve_path(p):
                return p
        except OSError as e:
            raise DualAdapterError(f"cannot create {str(p)!r} for {what}: {e.strerror}") from None
        n += 1


def next_free_dir(folder: str | os.PathLike, prefix: str) -> Path:
    """Create and return a new folder ``folder/prefix_NNNNN_`` (the first counter after every existing one).

    The folder is reserved by creating it (``mkdir`` fails on an existing name), so two processes never
    get the same one.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pat = re.compile(re.escape(prefix) + r"_(\d{5})_$")
    n = 1
    for f in folder.iterdir():
        m = pat.match(f.name)
        if m:
            n = max(n, int(m.group(1)) + 1)
    while True:
        d = folder / f"{prefix}_{n:05d}_"
        try:
            d.mkdir()
            return d
        except FileExistsError:
            n += 1


# --------------------------------------------------------------------------------------------
# run locks

_HELD: dict[str, int] = {}
_HELD_GUARD = threading.Lock()


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of a run whose output is ``path``: ``<path>.lock``."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


def _read_lock(lp: Path) -> dict:
    try:
        return json.loads(lp.read_text())
    except (OSError, ValueError):
        return {}


def _lock_is_stale(info: dict, lp: Path) -> bool:
    if not info:  # unreadable / empty: a writer killed between create and write, or a stranger's file
        try:
            return time.time() - lp.stat().st_mtime > 60
        except OSError:
            return True
    if info.get("host") != socket.gethostname():
        return False  # another machine (shared folder): cannot tell, never steal it
    try:
        return not _pid_alive(int(info.get("pid", -1)))
    except (TypeError, ValueError):
        return True


@contextlib.contextmanager
def run_lock(path: str | os.PathLike, what: str = "run"):
    """Hold ``<path>.lock`` while a run writes ``path`` and its side files (checkpoints, losses).

    The lock file is created exclusively and holds the owner's pid and host; it is removed on exit.
    A lock left by a process that no longer runs on this machine is taken over. Re-entrant within one
    process (a command and the library it calls may both take it).

    Raises:
        DualAdapterError: another live process holds the lock (names it and the lock file).
        DiskFull: the lock file cannot be written for lack of space (nothing is left behind).
    """
    lp = lock_path(path)
    lp.parent.mkdir(parents=True, exist_ok=True)
    key = str(lp.resolve())
    with _HELD_GUARD:
        if _HELD.get(key):
            _HELD[key] += 1
            reentrant = True
        else:
            reentrant = False
    if reentrant:
        try:
            yield lp
        finally:
            with _HELD_GUARD:
                _HELD[key] -= 1
        return
    for attempt in range(3):
        try:
            fd = os.open(str(lp), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            info = _read_lock(lp)
            if _lock_is_stale(info, lp) and attempt < 2:
                with contextlib.suppress(OSError):
                    lp.unlink()
                continue
            who = (f"pid {info.get('pid')} on {info.get('host')}, since {info.get('started', '?')}" if info
                   else "unknown process")
            raise DualAdapterError(
                f"another {what} is writing {str(Path(path))!r} ({who}; lock file {str(lp)!r}). Wait for it to "
                f"finish or choose another output name; if no such process runs, delete the lock file") from None
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
        except OSError as e:
            with contextlib.suppress(OSError):
                lp.unlink()
            if _is_disk_full(e):
                raise DiskFull(f"disk full: the {what}'s lock file {str(lp)!r} cannot be written; free some space "
                               f"before starting", str(lp)) from None
            raise
        break
    with _HELD_GUARD:
        _HELD[key] = 1
    try:
        yield lp
    finally:
        with _HELD_GUARD:
            _HELD.pop(key, None)
        if _read_lock(lp).get("pid") == os.getpid():
            with contextlib.suppress(OSError):
                lp.unlink()
