"""CLI commands: each module defines `register(subparsers)` (see bench.cli)."""
