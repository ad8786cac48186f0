"""Training and applying per denoiser on models with several (Wan 2.2 A14B: ``high_noise`` and ``low_noise``
experts switched at the boundary timestep; docs/wan.md "Wan 2.2 A14B").

Method-agnostic: a trainer (``train_lora``, ``train_dualreal``...) trains one denoiser; :func:`train_per_denoiser`
calls it once per denoiser on the backbone's :meth:`~dual_adapter.backbones.base.VideoBackbone.expert` (that
denoiser alone, its training timesteps cut to the ones it serves) and writes one file per denoiser
(:func:`denoiser_path`), the layout ComfyUI's Wan 2.2 templates load (one LoRA per expert model). At sampling time,
:class:`~dual_adapter.patches.PerDenoiser` maps each denoiser to its patch.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable

from .backbones import as_backbone
from .errors import DualAdapterError

log = logging.getLogger(__name__)

__all__ = ["PerExpert", "denoiser_path", "expert_names", "expert_of_file", "group_pairs", "pair_files", "per_expert_patch",
           "require_one_denoiser", "reserve_pair", "train_per_denoiser"]

#: ``<base>_<denoiser>`` or ``<base>_<denoiser>_NNNNN_`` (a Save node's counter): the stem of one file of a pair
_PAIR_STEM = re.compile(r"^(?P<base>.+)_(?P<name>high_noise|low_noise)(?P<counter>_\d{5,}_)?$")


def denoiser_path(out: str | Path, name: str) -> Path:
    """``X.safetensors`` -> ``X_<name>.safetensors`` (``X_high_noise.safetensors``, ``X_low_noise.safetensors``)."""
    p = Path(out)
    return p.with_name(f"{p.stem}_{name}{p.suffix or '.safetensors'}")


def require_one_denoiser(model, what: str) -> None:
    """Refuse a model with several denoisers where ``what`` trains one.

    Raises:
        DualAdapterError: the model has several (names them and how to train each).
    """
    names = as_backbone(model).denoiser_names()
    if len(names) > 1:
        raise DualAdapterError(f"{what}: this model has {len(names)} denoisers ({', '.join(names)}: Wan 2.2 A14B's "
                               f"experts), each trained on the timesteps it serves; train them one at a time with "
                               f"dual_adapter.experts.train_per_denoiser (one file per expert)")


def train_per_denoiser(model, train_fn: Callable, *, paths: dict | None = None, names=None, **kw) -> dict:
    """Run ``train_fn(expert_backbone, **paths_for_it, **kw)`` once per denoiser of ``model``.

    Args:
        model: a backbone (e.g. ``tiny-wan-a14b`` or a Wan 2.2 A14B folder, loaded); a one-denoiser model trains
            once, as ``train_fn(model, **paths, **kw)``.
        train_fn: a trainer taking the model first (``dual_adapter.lora.train_lora``,
            ``dual_adapter.dualreal.train_dualreal``...).
        paths: keyword -> ``X.safetensors`` (e.g. ``{"out": ...}``, ``{"checkpoint_path": ...}``); each denoiser
            gets :func:`denoiser_path` ``(X, name)``.
        names: the denoisers to train (default all, in the order they serve the steps).

    Returns:
        ``{name: train_fn's result}``.

    Raises:
        DualAdapterError: a name that is not one of the model's denoisers; what ``train_fn`` raises.
    """
    bb = as_backbone(model)
    all_names = bb.denoiser_names()
    names = tuple(all_names if names is None else names)
    unknown = [n for n in names if n not in all_names]
    if unknown:
        raise DualAdapterError(f"denoiser {', '.join(map(repr, unknown))} is not one of {', '.join(all_names)}")
    several = len(all_names) > 1
    res = {}
    for name in names:
        where = {k: (denoiser_path(v, name) if several else v) for k, v in (paths or {}).items() if v is not None}
        res[name] = train_fn(bb.expert(name), **where, **kw)
    return res


# ---------------------------------------------------------------------------------------------------------------
# pairs of files and of weights (the command line's and the nodes' A14B support)


def expert_names(name_or_path: str) -> tuple[str, ...]:
    """The denoisers of the model ``name_or_path`` (a built-in name or a folder), read from its configs before it
    loads: ``("high_noise", "low_noise")`` for Wan 2.2 A14B, ``()`` for a one-denoiser model."""
    from .backbones import kind_of
    from .backbones._wan_experts import EXPERTS

    try:
        return EXPERTS if kind_of(str(name_or_path)) == "wan_a14b" else ()
    except DualAdapterError:
        return ()


def expert_of_file(path: str | Path) -> str | None:
    """The denoiser a file is for, read from its name (``X_high_noise.safetensors``, or a Save node's
    ``X_high_noise_00001_.safetensors``): ``"high_noise"`` / ``"low_noise"``, or None for any other name."""
    m = _PAIR_STEM.match(Path(path).stem)
    return m.group("name") if m else None


def _twin_candidates(path: Path, other: str) -> list[Path]:
    m = _PAIR_STEM.match(path.stem)
    stem = f"{m.group('base')}_{other}{m.group('counter') or ''}"
    out = [path.with_name(stem + path.suffix)]
    # a training run's final file: runs/<method>/<stem>_NNNNN_/<stem>.safetensors; the twin's run is a sibling folder
    run = re.match(re.escape(path.stem) + r"_(\d{5,})_$", path.parent.name)
    if run and not m.group("counter"):
        pat = re.compile(re.escape(stem) + r"_(\d{5,})_$")
        found = sorted((int(q.group(1)), d) for d in path.parent.parent.iterdir() if (q := pat.match(d.name)))
        out += [d / (stem + path.suffix) for _, d in reversed(found)]
    return out


def pair_files(path: str | Path, names=None) -> dict[str, Path]:
    """The files of the pair ``path`` belongs to: ``{denoiser: file}`` with ``path`` itself and its twin where the
    twin exists (beside it, with the other denoiser's name: ``X_high_noise`` <-> ``X_low_noise``, counters kept;
    for a training run's final file, the newest finished run of the twin's name beside its run folder). A file
    whose name names no denoiser gives ``{}``.

    Args:
        names: the model's denoisers (default ``("high_noise", "low_noise")``).
    """
    from .backbones._wan_experts import EXPERTS

    path = Path(path)
    mine = expert_of_file(path)
    if mine is None:
        return {}
    out = {mine: path}
    for other in (n for n in (names or EXPERTS) if n != mine):
        twin = next((p for p in _twin_candidates(path, other) if p.is_file()), None)
        if twin is not None:
            out[other] = twin
    return out


def group_pairs(items, names) -> list:
    """Group ``(path, value)`` items (e.g. ``--lora FILE:STRENGTH``) for a model with the denoisers ``names``: on
    a model with several, a file named for an expert and its twin (:func:`pair_files`; given or found) make one
    :class:`PerExpert` of ``(path, value)`` (a twin found, not given, takes the given file's value); any other item
    stays ``(path, value)``. Order kept; a pair given twice counts once."""
    out, seen = [], {}
    for path, value in items:
        pair = pair_files(path, names) if len(names) > 1 else {}
        if not pair:
            out.append((path, value))
            continue
        key = frozenset(str(Path(p).resolve()) for p in pair.values())
        if key in seen:  # the twin was given too: its own value for its own half
            seen[key].by_name[expert_of_file(path)] = (path, value)
            continue
        seen[key] = PerExpert({n: (p, value) for n, p in pair.items()}, name=Path(path).stem)
        out.append(seen[key])
    return out


class PerExpert:
    """One item per denoiser of a model with several (Wan 2.2 A14B): LoRA files or DualReal adapter sets, one per
    expert (the ``VIDEO_LORA`` / ``DUALREAL_ADAPTERS`` payload for such a model). ``by_name`` maps a denoiser name
    (``high_noise``, ``low_noise``) to its item; a name left out leaves that expert unpatched.

    Raises:
        DualAdapterError: ``by_name`` empty, or a name that is not an expert's.
    """

    def __init__(self, by_name: dict, name: str = ""):
        from .backbones._wan_experts import EXPERTS

        if not by_name:
            raise DualAdapterError("PerExpert needs at least one expert name -> item")
        bad = [k for k in by_name if k not in EXPERTS]
        if bad:
            raise DualAdapterError(f"expert {', '.join(map(repr, bad))} is not one of {', '.join(EXPERTS)}")
        self.by_name = {k: by_name[k] for k in EXPERTS if k in by_name}
        self.name = name

    def items(self):
        return self.by_name.items()

    def __repr__(self) -> str:
        return f"PerExpert({self.name!r}, {', '.join(self.by_name)})"


def per_expert_patch(items, model, make_patch: Callable, what: str):
    """The model patch of ``items`` on ``model``: for a :class:`PerExpert`, a
    :class:`~dual_adapter.patches.PerDenoiser` with ``make_patch(item, expert_denoiser)`` for each of its experts
    (an expert it holds nothing for runs unpatched, logged);
    for one item, ``make_patch(item, denoiser)`` (on Wan 2.2 A14B that one patch applies to both experts, logged).

    Raises:
        DualAdapterError: a :class:`PerExpert` on a model with one denoiser (names ``what``); what ``make_patch``
            raises (a half that does not fit its expert).
    """
    from .patches import PerDenoiser

    bb = as_backbone(getattr(model, "bundle", model))
    names = bb.denoiser_names()
    if isinstance(items, PerExpert):
        if len(names) < 2:
            raise DualAdapterError(f"{what}: {items.name or 'these weights'!r} hold one set per Wan 2.2 A14B expert "
                                   f"({', '.join(items.by_name)}); the model {bb.name!r} has one transformer: load "
                                   f"one file (e.g. the {next(iter(items.by_name))} file through a one-file loader) "
                                   f"or use an A14B model")
        missing = [n for n in names if n not in items.by_name]
        if missing:
            log.info("%s: %r holds no weights for the %s expert, which runs unpatched", what, items.name,
                     ", ".join(missing))
        return PerDenoiser({n: make_patch(items.by_name[n], bb.get_denoiser(n)) if n in items.by_name else None
                            for n in names})
    if len(names) > 1:
        log.info("%s: one set of weights on %s: applied to every expert (%s)", what, bb.name, ", ".join(names))
    return make_patch(items, bb.denoiser)


def reserve_pair(write_path: Callable[[str], Path], prefix: str, names=None) -> dict[str, Path]:
    """Reserve one file name per denoiser with one counter: ``<prefix>_high_noise_NNNNN_.safetensors`` and
    ``<prefix>_low_noise_NNNNN_.safetensors``, the same NNNNN (the first counter free for both).

    Args:
        write_path: ``prefix -> reserved <prefix>_NNNNN_.<ext>`` (the nodes' write rule,
            :func:`dual_adapter.paths.write_path` bound to a folder), which also checks the prefix.
        names: the denoisers (default ``("high_noise", "low_noise")``).

    Raises:
        DualAdapterError: what ``write_path`` raises (a prefix that leaves the folder, ...).
    """
    from .backbones._wan_experts import EXPERTS
    from .io import release_reservation, reserve_path

    first, *rest = tuple(names or EXPERTS)
    skipped = []
    try:
        while True:
            p = write_path(f"{prefix}_{first}")
            m = re.search(r"_(\d{5,})_$", p.stem)
            got = {first: p}
            for n in rest:
                q = p.with_name(f"{p.stem[:m.start()][: -len(first)]}{n}_{m.group(1)}_{p.suffix}")
                if not reserve_path(q):
                    break
                got[n] = q
            if len(got) == 1 + len(rest):
                return got
            skipped += list(got.values())  # held until a free counter is found, so the next try moves on
    finally:
        for p in skipped:
            release_reservation(p)
