"""Sub-commands of the ``gfverify`` CLI beyond check/measures, one module each.

Each module defines ``add_parser(subparsers) -> None`` that adds its sub-command(s) and sets
``func`` to a handler ``(args) -> int``. :func:`gfverify.cli.build_parser` discovers them, so a
new command is one new module here.
"""

import argparse


def add_override_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--set KEY=VALUE [KEY=VALUE ...]``, repeatable, collected in ``args.overrides``."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help=help_text,
    )
