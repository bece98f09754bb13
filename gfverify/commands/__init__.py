"""Sub-commands of the ``gfverify`` CLI beyond check/measures, one module each.

Each module defines ``add_parser(subparsers) -> None`` that adds its sub-command(s) and sets
``func`` to a handler ``(args) -> int``. :func:`gfverify.cli.build_parser` discovers them, so a
new command is one new module here.
"""
