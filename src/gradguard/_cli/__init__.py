"""Subcommands of the `gradguard` CLI, one module each, each with ``register(subparsers)``."""
