"""`bench data ...`: synth, import, check, show, split. Each submodule defines `register(subparsers)`."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from bench.cli import discover

    parser = subparsers.add_parser("data", help="generate, import, check, split and show datasets")
    data_sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    discover(__name__, data_sub)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
