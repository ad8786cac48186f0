"""The pack's path rule for names that come from a workflow (a shared file, run by a server).

One function checks a name to *read* (:func:`read_path`), one a name to *write* (:func:`write_path`).
Both work in the same order, so that a workflow cannot learn anything about the machine's files:

1. the string alone (:func:`check_relative`): no NUL or other control character, at most
   :data:`MAX_NAME_BYTES` bytes per name (:data:`MAX_STEM_BYTES` for the file name a counter is added
   to), :data:`MAX_TEXT_BYTES` in all, :data:`MAX_DEPTH` names deep, no drive letter, no ``~``, no ``..``,
   not absolute (an absolute *read* path is first turned into a name relative to an allowed folder, when
   it lies in one);
2. the normalised path must lie inside the allowed folder (:func:`is_inside`, ``os.path.abspath``: pure
   string work, symlinks are not resolved);
3. only then the file system: a read checks that the path exists (any ``OSError`` counts as "not
   there"), a write reserves a new counter-named file (:func:`dual_adapter.io.next_free_path`).

A refused read and a missing file get the *same* message. The rule is documented in docs/security.md.
"""
from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from .errors import DualAdapterError

__all__ = ["MAX_NAME_BYTES", "MAX_STEM_BYTES", "MAX_TEXT_BYTES", "MAX_DEPTH", "PathRefused", "check_relative",
           "looks_absolute", "is_inside", "read_path", "write_path"]

#: Longest single file or folder name, in UTF-8 bytes (the limit of ext4, NTFS, APFS...).
MAX_NAME_BYTES = 255
#: Longest file name a write may start with: the counter ``_NNNNN_``, the extension, a run's side-file
#: suffixes (``.partial.safetensors``, ``.lock``) and the temporary name of an atomic write
#: (``.<name>.pid<PID>.<random>.tmp``) must still fit in :data:`MAX_NAME_BYTES`.
MAX_STEM_BYTES = 160
#: Longest relative name, in UTF-8 bytes.
MAX_TEXT_BYTES = 1024
#: Most names in a relative path (``a/b/c`` is 3).
MAX_DEPTH = 32

_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class PathRefused(DualAdapterError):
    """A name that breaks the path rule; the message says which part and why."""


def looks_absolute(text: str) -> bool:
    """Absolute on any platform: ``/x``, ``\\x``, ``C:\\x``, ``C:/x``, ``C:x``, ``~``."""
    t = text.replace("\\", "/")
    return t.startswith("/") or t.startswith("~") or bool(_DRIVE.match(t))


def is_inside(path: str | os.PathLike, base: str | os.PathLike) -> bool:
    """Whether ``path`` lies in ``base`` once ``.`` and ``..`` are normalised (``os.path.abspath``).

    Pure string work: nothing on disk is read, and symlinks are *not* resolved (a symlink placed inside
    ``base`` is followed when the file is opened, as in ComfyUI)."""
    try:
        p, b = os.path.abspath(path), os.path.abspath(base)
        return os.path.commonpath([p, b]) == b
    except ValueError:  # different drives on Windows, NUL
        return False


def check_relative(text: str, what: str = "path", *, stem_bytes: int = MAX_NAME_BYTES,
                   max_depth: int = MAX_DEPTH) -> PurePosixPath:
    """Check a relative name from a workflow, looking at the string only (never at the disk).

    ``\\`` counts as ``/``. Empty names between slashes and ``.`` are dropped.

    Args:
        text: the name, e.g. ``"tap/guitar"``.
        what: the input's name, for the message.
        stem_bytes: the most UTF-8 bytes the last name may have (:data:`MAX_STEM_BYTES` for a file name
            that gets a counter).
        max_depth: the most names the path may have (1: a plain file name, no folders).

    Returns:
        the normalised relative path (at least one name).

    Raises:
        PathRefused: empty; a NUL or control character; absolute, a drive letter or ``~``; a ``..``;
            a name over :data:`MAX_NAME_BYTES` bytes (the last over ``stem_bytes``); over
            :data:`MAX_TEXT_BYTES` bytes in all; more than ``max_depth`` names.
    """
    if not isinstance(text, str):
        raise PathRefused(f"{what}: expected a text name, got {type(text).__name__}")
    if _CONTROL.search(text):
        raise PathRefused(f"{what} {text!r}: contains a NUL or control character")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_TEXT_BYTES:
        raise PathRefused(f"{what} {text[:40]!r}...: longer than {MAX_TEXT_BYTES} bytes")
    if looks_absolute(text):
        raise PathRefused(f"{what} {text!r}: an absolute path, a drive letter or '~'; give a name relative to the folder")
    parts = [p for p in text.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts:
        raise PathRefused(f"{what} {text!r}: no file name")
    if ".." in parts:
        raise PathRefused(f"{what} {text!r}: '..' is not allowed")
    if len(parts) > max_depth:
        raise PathRefused(f"{what} {text[:40]!r}...: {len(parts)} names deep; at most "
                          f"{max_depth if max_depth > 1 else '1 (a file name without folders)'}")
    for i, part in enumerate(parts):
        if _DRIVE.match(part):
            raise PathRefused(f"{what} {text!r}: {part!r} looks like a drive letter")
        n = len(part.encode("utf-8", "surrogatepass"))
        limit = stem_bytes if i == len(parts) - 1 else MAX_NAME_BYTES
        if n > limit:
            raise PathRefused(f"{what}: the name {part[:40]!r}... is {n} bytes long; at most {limit}")
    return PurePosixPath(*parts)


def _exists(p: Path) -> bool:
    try:
        return p.exists()
    except (OSError, ValueError):  # name too long for this file system, permissions, NUL...: not there
        return False


def read_path(path: str | os.PathLike, bases, what: str = "path", *, allow_absolute: bool = False,
              hint: str = "") -> Path:
    """The one read rule: ``path`` as an existing file or folder inside one of ``bases``.

    ``path`` is a name relative to each folder of ``bases`` in turn (the first existing match wins). An
    absolute path is accepted only when it lies inside one of ``bases`` (it is then checked as the name
    relative to that folder). ``allow_absolute`` (an explicit opt-in of single-user machines) reads an
    absolute path as given, after the string checks.

    Order: string checks (:func:`check_relative`), the inside check (:func:`is_inside`), and only then
    the disk. Every refusal and every missing file raise the same message (only the echoed path
    differs), so a workflow cannot learn which files or folders exist.

    Args:
        path: the name from the workflow.
        bases: the allowed folders.
        what: the input's name, for the message.
        allow_absolute: read absolute paths anywhere (``..`` in them is normalised).
        hint: appended to the message (how to opt in).

    Returns:
        the existing path (symlinks inside ``bases`` are followed when it is opened).

    Raises:
        DualAdapterError: not allowed, or not there (one message for both).
    """
    bases = [Path(b) for b in bases]
    text = os.fspath(path).strip() if isinstance(path, (str, os.PathLike)) else ""
    where = " or ".join(repr(str(b)) for b in bases) or "(no folder)"
    err = DualAdapterError(
        f"{what} {text!r} was not found or is not allowed: give a name relative to {where} (no absolute path "
        f"outside it, no '..', at most {MAX_NAME_BYTES} bytes per name){hint}")
    if not text:
        raise err
    candidates: list[tuple[Path, str]] = []
    if looks_absolute(text):
        if allow_absolute:
            if _CONTROL.search(text):
                raise err
            try:
                p = Path(text).expanduser()
            except RuntimeError:  # no home folder to expand '~' to
                raise err from None
            if _exists(p):
                return p
            raise err
        if "\x00" in text or text.startswith("~"):
            raise err
        for b in bases:
            if is_inside(text, b):
                candidates.append((b, os.path.relpath(os.path.abspath(text), os.path.abspath(b))))
    else:
        candidates = [(b, text) for b in bases]
    for b, rel in candidates:
        try:
            r = check_relative(rel, what)
        except PathRefused:
            raise err from None
        p = b / r
        if is_inside(p, b) and _exists(p):
            return p
    raise err


def write_path(prefix: str, base: str | os.PathLike, ext: str, what: str = "filename_prefix") -> Path:
    """The one write rule: reserve a new ``<base>/<prefix>_NNNNN_.<ext>`` (ComfyUI's counter).

    ``prefix`` may name sub-folders (``tap/guitar``) but must stay inside ``base``. Order: string checks
    (:func:`check_relative`, the last name at most :data:`MAX_STEM_BYTES` bytes), the inside check, and
    only then the disk: the folders are made and the name is reserved by creating the empty file
    exclusively (:func:`dual_adapter.io.next_free_path`), so two processes never get the same name.
    Write it with :func:`dual_adapter.io.atomic_write` (which replaces the reservation); release an
    unused one with :func:`dual_adapter.io.release_reservation` or :func:`dual_adapter.io.reservation`.

    Raises:
        DualAdapterError: an empty prefix, one that breaks the rule (the message names the input and the
            reason), or a folder that cannot be made.
    """
    from .io import next_free_path

    base = Path(base)
    text = str(prefix if prefix is not None else "").strip()
    if not text:
        raise DualAdapterError(f"{what} is empty; give a file name (sub-folders are fine, e.g. 'tap/guitar')")
    rule = f"files are only written inside {str(base)!r} (sub-folders are fine, e.g. 'tap/guitar')"
    try:
        rel = check_relative(text, what, stem_bytes=MAX_STEM_BYTES)
    except PathRefused as e:
        raise PathRefused(f"{e}; {rule}") from None
    if not is_inside(base / rel, base):
        raise PathRefused(f"{what} {text!r}: {rule}")
    return next_free_path(base, rel.as_posix(), ext, what=what)
