"""``python -m dual_adapter <command> ...``

Each module in ``dual_adapter/commands/`` defines ``register(subparsers)`` which adds one or
more sub-commands whose handler is stored as ``func`` (``args -> int``). Modules are found
automatically, so a new command needs no edit here.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from .errors import DualAdapterError, InterruptedByUser


class _Once(logging.Filter):
    """Show each distinct warning once per command (the same model or prompt is often checked several times)."""

    def __init__(self):
        super().__init__()
        self.seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def build_parser() -> argparse.ArgumentParser:
    from . import commands

    p = argparse.ArgumentParser(
        prog="python -m dual_adapter",
        description="Customized video generation on CogVideoX: DualReal, TAP motion LoRA, CustomTTT.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for m in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if m.name.startswith("_"):
            continue
        importlib.import_module(f"{commands.__name__}.{m.name}").register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # one fresh filter per handler and command, removed when the command ends (a host's handlers, e.g.
    # pytest's log capture, outlive it)
    added = [(h, _Once()) for h in logging.getLogger().handlers]
    for h, f in added:
        h.addFilter(f)
    try:
        return _run(parser, args)
    finally:
        for h, f in added:
            h.removeFilter(f)


def _run(parser, args) -> int:
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .threads import threads_for_command
    from .training import sigterm_as_interrupt

    try:
        # --threads N (where a command has it) is the user's count: small models keep it (dual_adapter.threads)
        with sigterm_as_interrupt(), threads_for_command(getattr(args, "threads", None)):
            return int(args.func(args) or 0)
    except DualAdapterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except InterruptedByUser as e:
        print(f"interrupted: {e}", file=sys.stderr)
        return 143 if "SIGTERM" in str(e) else 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
