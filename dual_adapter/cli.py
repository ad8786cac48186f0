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
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except DualAdapterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except InterruptedByUser as e:
        print(f"interrupted: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
