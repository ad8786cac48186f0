"""Sub-commands of ``python -m dual_adapter``: one module each, each with ``register(subparsers)``."""
